//! The canonical spelling of an [`XSpec`]: `N*` when above 1, the gateway, then the other keys
//! in a fixed order, `ssh=` arguments quoted shell-style.

use std::fmt;

use super::{Gateway, XSpec};

impl fmt::Display for XSpec {
    /// Writes text that parses back to an equal spec, for every spec parsed from text.
    ///
    /// A value ending in `/` is moved to the last item, because `chdir=a///id=x` reads as
    /// `chdir=a` then `/id=x`. That reorders `env:` items only when such a value is not the last
    /// `env:` value; two values ending in `/` have no spelling at all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count.get() > 1 {
            write!(f, "{}*", self.count)?;
        }
        let nice = self.nice.map(|nice| nice.to_string());
        let mut items = vec![gateway(&self.gateway)];
        items.extend(keyed(&[
            ("ssh_config", &self.ssh_config),
            ("python", &self.python),
            ("chdir", &self.chdir),
            ("nice", &nice),
        ]));
        let env = self.env.iter();
        items.extend(env.map(|(name, value)| format!("env:{name}={value}")));
        items.extend(keyed(&[("id", &self.id), ("via", &self.via)]));
        if self.dont_write_bytecode {
            items.push("dont_write_bytecode".to_owned());
        }
        items.extend(keyed(&[
            ("execmodel", &self.execmodel),
            ("installvia", &self.installvia),
        ]));
        // Stable, so everything else keeps the canonical order.
        items.sort_by_key(|item| item.ends_with('/'));
        f.write_str(&items.join("//"))
    }
}

fn gateway(gateway: &Gateway) -> String {
    match gateway {
        Gateway::Popen => "popen".to_owned(),
        Gateway::Ssh { args, host } => {
            format!("ssh={}", shell_words::join(args.iter().chain([host])))
        }
        Gateway::Socket { host, port } if host.contains(':') => format!("socket=[{host}]:{port}"),
        Gateway::Socket { host, port } => format!("socket={host}:{port}"),
        Gateway::VagrantSsh { host } => format!("vagrant_ssh={host}"),
    }
}

/// `key=value` for each pair that has a value.
fn keyed(pairs: &[(&str, &Option<String>)]) -> Vec<String> {
    let given = pairs
        .iter()
        .filter_map(|(key, value)| Some((key, value.as_ref()?)));
    given.map(|(key, value)| format!("{key}={value}")).collect()
}
