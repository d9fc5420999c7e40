//! The data directory is private: it holds every policy's keys (iothubowner included), every
//! device's keys and the TLS private keys, so the directory and everything under it belong to
//! the hub's user alone — directories 0700, files 0600 — on creation and on every start.
//!
//! A directory made by an older hub (sled's `db` was 0644 in a 0755 directory) is fixed at
//! start with a warning naming what was readable, so the operator knows the keys may have been
//! seen and can rotate them. Files the hub creates afterwards (sled's snapshots) sit inside the
//! 0700 directory, which no other user can enter. Symbolic links are left alone (their targets
//! are not the hub's to change). On other platforms than Unix this does nothing.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::HubError;

/// The mode of the data directory and of every directory under it.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of every file under the data directory.
pub(crate) const FILE_MODE: u32 = 0o600;

/// Creates `dir` (0700) if missing, or makes an existing one private, warning about every path
/// whose mode had to be narrowed. Call before anything is written into it.
pub(crate) fn prepare(dir: &Path) -> Result<(), HubError> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| HubError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let fixed = restrict(dir)?;
    if existed && !fixed.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            fixed = fixed.len(),
            paths = ?fixed,
            "the hub data directory was readable by other users; made it private (directories 0700, \
             files 0600). Its keys may have been read: rotate them if others use this machine"
        );
    }
    Ok(())
}

/// Makes `dir` and everything under it private without a warning (for files the hub has just
/// written itself). Returns the paths whose modes changed.
pub(crate) fn restrict(dir: &Path) -> Result<Vec<PathBuf>, HubError> {
    let mut fixed = Vec::new();
    walk(dir, &mut fixed).map_err(|source| HubError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(fixed)
}

#[cfg(unix)]
fn walk(path: &Path, fixed: &mut Vec<PathBuf>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return Ok(());
    }
    let want = if file_type.is_dir() {
        DIR_MODE
    } else {
        FILE_MODE
    };
    if meta.permissions().mode() & 0o777 != want {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
        fixed.push(path.to_path_buf());
    }
    if file_type.is_dir() {
        for entry in std::fs::read_dir(path)? {
            walk(&entry?.path(), fixed)?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn walk(_path: &Path, _fixed: &mut Vec<PathBuf>) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn an_existing_open_directory_is_made_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("hub");
        std::fs::create_dir_all(dir.join("db")).expect("mkdir");
        std::fs::write(dir.join("db/db"), b"keys").expect("write");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.join("db"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(dir.join("db/db"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        prepare(&dir).expect("prepare");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("db")), 0o700);
        assert_eq!(mode(&dir.join("db/db")), 0o600);
        // Nothing left to fix.
        assert!(restrict(&dir).expect("restrict").is_empty());
    }

    #[test]
    fn a_new_directory_is_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("a/b/hub");
        prepare(&dir).expect("prepare");
        assert_eq!(mode(&dir), 0o700);
    }
}
