//! Data at rest belongs to the node's own user: the store holds API key
//! hashes and the whole policy, the certificate directory holds private keys,
//! a backup holds both. Directories are 0700 and files 0600; the `pce`
//! binary also sets its umask to 0077, so what sled and the snapshot code
//! create later is private from the start.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Creates `dir` if needed and makes it and everything under it private
/// (directories 0700, files 0600): data directories written by an older
/// version, or by a process with a looser umask, are tightened on start.
pub fn make_private(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    tighten(dir)
}

fn tighten(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        // Not followed: a link may point anywhere.
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(path)? {
            tighten(&entry?.path())?;
        }
    } else if meta.permissions().mode() & 0o077 != 0 {
        let mode = meta.permissions().mode() & 0o700;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loose_tree_becomes_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        std::fs::create_dir_all(dir.join("store/snapshots")).unwrap();
        std::fs::write(dir.join("store/db"), b"x").unwrap();
        std::fs::set_permissions(dir.join("store/db"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(dir.join("store"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        make_private(&dir).unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("store"), 0o700);
        assert_eq!(mode("store/snapshots"), 0o700);
        assert_eq!(mode("store/db"), 0o600);
    }
}
