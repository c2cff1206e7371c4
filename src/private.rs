//! Files and directories the daemon makes are private to its user: the outbox holds live link
//! tokens, the store personal data and reply references, the key directory the signing keys.
//! A umask of 077 at start covers what libraries create (sled's files); the functions here set
//! the modes explicitly as well, so nothing depends on the umask alone.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Sets the process umask to 077 (called once when `serve` starts).
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Creates `dir` and its missing parents with mode 0700. A `dir` that exists already and that
/// group or others can read is tightened to 0700 too: it is ours, and what it holds is secret
/// (a store or outbox made by an older version was 0755).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), was = format!("{mode:o}"), "made the directory private (0700)")
            }
            // not ours (e.g. a directory root made for us): say so, but it is not fatal
            Err(e) => {
                tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), error = %e, "the directory is readable by others and cannot be made private")
            }
        }
    }
    Ok(())
}

/// Opens `path` for writing with mode 0600: truncated if it exists, or only if new with
/// `create_new`.
pub fn create_file(path: &Path, create_new: bool) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(FILE_MODE);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_and_files_are_private() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("a/b");
        create_dir(&dir)?;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&dir)?, 0o700);
        assert_eq!(mode(&tmp.path().join("a"))?, 0o700);
        let open = tmp.path().join("open");
        std::fs::create_dir(&open)?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755))?;
        create_dir(&open)?;
        assert_eq!(
            mode(&open)?,
            0o700,
            "an existing 0755 directory is tightened"
        );
        let f = dir.join("x.eml");
        create_file(&f, false)?;
        assert_eq!(mode(&f)?, 0o600);
        assert!(
            create_file(&f, true).is_err(),
            "create_new refuses an existing file"
        );
        Ok(())
    }
}
