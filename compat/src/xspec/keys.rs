//! The table of xspec keys: names, which take a value, which name a gateway, and the
//! did-you-mean lookup for unknown keys.

/// A known key other than `env:NAME`, which is handled apart because its name is open-ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Popen,
    Ssh,
    Socket,
    VagrantSsh,
    SshConfig,
    Python,
    Chdir,
    Nice,
    Id,
    Via,
    DontWriteBytecode,
    Execmodel,
    Installvia,
}

const ALL: [Key; 13] = [
    Key::Popen,
    Key::Ssh,
    Key::Socket,
    Key::VagrantSsh,
    Key::SshConfig,
    Key::Python,
    Key::Chdir,
    Key::Nice,
    Key::Id,
    Key::Via,
    Key::DontWriteBytecode,
    Key::Execmodel,
    Key::Installvia,
];

/// How close (Jaro-Winkler) an unknown key must be to a known one to be suggested.
const SUGGEST_THRESHOLD: f64 = 0.8;

impl Key {
    pub(super) fn lookup(name: &str) -> Option<Key> {
        ALL.into_iter().find(|key| key.name() == name)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Key::Popen => "popen",
            Key::Ssh => "ssh",
            Key::Socket => "socket",
            Key::VagrantSsh => "vagrant_ssh",
            Key::SshConfig => "ssh_config",
            Key::Python => "python",
            Key::Chdir => "chdir",
            Key::Nice => "nice",
            Key::Id => "id",
            Key::Via => "via",
            Key::DontWriteBytecode => "dont_write_bytecode",
            Key::Execmodel => "execmodel",
            Key::Installvia => "installvia",
        }
    }

    /// How the key is written with its value, for "needs a value" messages; `None` for flags.
    pub(super) fn usage(self) -> Option<&'static str> {
        Some(match self {
            Key::Popen | Key::DontWriteBytecode => return None,
            Key::Ssh => "ssh=[OPTIONS] HOST",
            Key::Socket => "socket=HOST:PORT",
            Key::VagrantSsh => "vagrant_ssh=HOST",
            Key::SshConfig => "ssh_config=PATH",
            Key::Python => "python=EXE",
            Key::Chdir => "chdir=DIR",
            Key::Nice => "nice=INT",
            Key::Id => "id=NAME",
            Key::Via => "via=NAME",
            Key::Execmodel => "execmodel=MODEL",
            Key::Installvia => "installvia=ID",
        })
    }

    pub(super) fn is_gateway(self) -> bool {
        matches!(self, Key::Popen | Key::Ssh | Key::Socket | Key::VagrantSsh)
    }
}

/// The known key an unknown `key` was probably meant to be, spelled as it should be written.
pub(super) fn suggest(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    if let Some(name) = lower.strip_prefix("env:").and(key.get(4..)) {
        return Some(format!("env:{name}"));
    }
    let names = ALL.iter().map(|key| key.name()).chain(["env"]);
    let name = closest(&lower, names)?;
    Some(if name == "env" { "env:NAME" } else { name }.to_owned())
}

/// The candidate most like `word`, if any is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(word, candidate);
        // Jaro-Winkler undervalues short words (`bx` for `box`); one edit is a typo too.
        let close = score >= SUGGEST_THRESHOLD
            || (word.len() > 1 && strsim::osa_distance(word, candidate) <= 1);
        if close && best.is_none_or(|(top, _)| score > top) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// All key names, for the hint under an unknown key nothing resembles.
pub(super) fn known_list() -> String {
    let mut names: Vec<String> = ALL.iter().map(|key| format!("`{}`", key.name())).collect();
    names.push("`env:NAME`".to_owned());
    names.join(", ")
}
