//! `rdist migrate --write`: every file is written to a temporary file beside it (same mode as
//! the file it replaces), and only when all of them are written are they renamed into place. A
//! failure before the renames leaves every file as it was; a rename that fails puts the files
//! already renamed back. A file that changed since it was read is not overwritten.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::exit::Failure;

/// One file to write.
pub struct Change {
    pub path: PathBuf,
    /// Its content now; `None` when it must not exist yet.
    pub before: Option<String>,
    pub after: String,
}

struct Staged {
    target: PathBuf,
    temp: PathBuf,
    before: Option<String>,
}

/// Writes all `changes` or none; `show` turns a path into its displayed form.
///
/// # Errors
/// A file that cannot be read, written or renamed, or that changed since it was read (exit 1;
/// nothing changed).
pub fn apply(changes: &[Change], show: &dyn Fn(&Path) -> String) -> Result<(), Failure> {
    let mut staged: Vec<Staged> = Vec::new();
    let fail = |staged: &[Staged], e: anyhow::Error| {
        for s in staged {
            let _ = fs::remove_file(&s.temp);
        }
        Failure::failed(e).with_hint("nothing was changed")
    };
    for change in changes {
        match stage(change, show) {
            Ok(s) => staged.push(s),
            Err(e) => return Err(fail(&staged, e)),
        }
    }
    for (done, s) in staged.iter().enumerate() {
        if let Err(e) = fs::rename(&s.temp, &s.target) {
            let e = anyhow!(e).context(format!("cannot replace `{}`", show(&s.target)));
            let rolled_back = staged[..done].iter().all(|s| restore(s).is_ok());
            for rest in &staged[done..] {
                let _ = fs::remove_file(&rest.temp);
            }
            let hint = if rolled_back {
                "nothing was changed".to_owned()
            } else {
                "some files could not be put back: compare them with the preview".to_owned()
            };
            return Err(Failure::failed(e).with_hint(hint));
        }
    }
    Ok(())
}

fn stage(change: &Change, show: &dyn Fn(&Path) -> String) -> anyhow::Result<Staged> {
    let shown = show(&change.path);
    // Through a symlink to the file it names, so the link stays a link.
    let target = match fs::symlink_metadata(&change.path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(&change.path)
            .map_err(|e| anyhow!(e).context(format!("cannot resolve `{shown}`")))?,
        _ => change.path.clone(),
    };
    let now = match fs::read_to_string(&target) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!(e).context(format!("cannot read `{shown}`"))),
    };
    if now != change.before {
        return Err(anyhow!("`{shown}` changed while `rdist migrate` ran"));
    }
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let temp = target.with_file_name(format!(".{name}.rdist-migrate-{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(change.after.as_bytes())?;
        if now.is_some() {
            file.set_permissions(fs::metadata(&target)?.permissions())?;
        }
        Ok::<_, std::io::Error>(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(anyhow!(e).context(format!("cannot write `{shown}`")));
    }
    Ok(Staged {
        target,
        temp,
        before: change.before.clone(),
    })
}

/// Puts a renamed file back as it was.
fn restore(s: &Staged) -> std::io::Result<()> {
    match &s.before {
        None => fs::remove_file(&s.target),
        Some(text) => {
            let mode = fs::metadata(&s.target)?.permissions();
            fs::write(&s.temp, text)?;
            fs::set_permissions(&s.temp, mode)?;
            fs::rename(&s.temp, &s.target)
        }
    }
}
