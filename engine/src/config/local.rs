//! Which local paths a job may read and write, and the mode of the files it creates.
//!
//! A job that arrives through a worker node's channel comes from someone who may be hostile:
//! without a guard, a `file` source could read `/etc/shadow` or the node's own keys, and a
//! sink or a fault log could overwrite any file the service account can write. A node
//! therefore gives every job a [`LocalFiles`] that admits only paths under its allowed roots
//! (and never under its own state), checked on the *resolved* path: symbolic links and `..`
//! are followed first, so a link inside an allowed root that points out of it is refused.
//! `ferry copy` on one machine runs [`LocalFiles::unrestricted`] unless given a policy.
//!
//! The checks are made right before I/O and return the path to use, so the path that was
//! checked is the path that is opened. (A local user who can swap a checked directory for a
//! link between the check and the open can still race it; such a user can already write the
//! allowed roots.)

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Default mode of the files a job creates (outputs, fault logs): owner read/write, group read.
pub const DEFAULT_OUTPUT_MODE: u32 = 0o640;

/// The local paths a job may touch.
#[derive(Debug, Clone)]
pub struct LocalFiles {
    /// `None`: any path. `Some`: only below one of these (canonical) roots.
    roots: Option<Vec<PathBuf>>,
    /// Never, even below a root (canonical where they exist): the node's own state.
    denied: Vec<PathBuf>,
    /// Mode of the files a job creates.
    output_mode: u32,
    /// The setting that widens the roots, named in refusals.
    setting: String,
}

impl Default for LocalFiles {
    fn default() -> Self {
        Self::unrestricted()
    }
}

/// Whether a path is read (must exist) or written (may not exist yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read: the path exists; links are followed.
    Read,
    /// Write: the deepest existing ancestor is resolved, the rest is appended as written.
    Write,
}

impl LocalFiles {
    /// Any path the process can reach (a single-machine `ferry copy`).
    pub fn unrestricted() -> Self {
        Self {
            roots: None,
            denied: Vec::new(),
            output_mode: DEFAULT_OUTPUT_MODE,
            setting: String::new(),
        }
    }

    /// Only paths below `roots` (absolute) and never below `denied`; `setting` names the
    /// configuration key that lists the roots (for messages). Roots and denied paths are
    /// resolved when a path is checked, so they may be created later.
    pub fn restricted(roots: &[PathBuf], denied: &[PathBuf], setting: &str) -> Result<Self> {
        for root in roots {
            if !root.is_absolute() {
                return Err(Error::config(format!(
                    "{setting}: `{}` is not an absolute path",
                    root.display()
                )));
            }
        }
        Ok(Self {
            roots: Some(roots.to_vec()),
            denied: denied.to_vec(),
            output_mode: DEFAULT_OUTPUT_MODE,
            setting: setting.to_string(),
        })
    }

    /// The same access with another mode for created files.
    pub fn with_output_mode(mut self, mode: u32) -> Self {
        self.output_mode = mode & 0o777;
        self
    }

    /// Mode of the files a job creates.
    pub fn output_mode(&self) -> u32 {
        self.output_mode
    }

    /// Whether only some paths are allowed.
    pub fn is_restricted(&self) -> bool {
        self.roots.is_some()
    }

    /// The roots, when restricted.
    pub fn roots(&self) -> Option<&[PathBuf]> {
        self.roots.as_deref()
    }

    /// The directory relative job paths start from: the first root when restricted.
    pub fn base(&self) -> Option<&Path> {
        self.roots
            .as_ref()
            .and_then(|r| r.first())
            .map(PathBuf::as_path)
    }

    /// Checks `path` (absolute) for `access`; returns the path to use: as given when
    /// unrestricted, resolved (links and `..` followed) when restricted. `what` says what the
    /// path is for (`file source`, `fault log`), for messages.
    ///
    /// A path may hold glob characters after its directory part (`/data/in/*.csv`): the
    /// directory before the first of them is what is resolved and checked.
    pub fn check(&self, path: &Path, access: Access, what: &str) -> Result<PathBuf> {
        let Some(roots) = &self.roots else {
            return Ok(path.to_path_buf());
        };
        let text = path.to_string_lossy();
        let (head, tail) = match text.find(['*', '?', '[']) {
            Some(i) => {
                let cut = text[..i].rfind('/').map_or(0, |c| c + 1);
                (PathBuf::from(&text[..cut]), Some(text[cut..].to_string()))
            }
            None => (path.to_path_buf(), None),
        };
        if let Some(tail) = &tail
            && tail.split('/').any(|part| part == "..")
        {
            return Err(self.refused(what, path, "a glob may not climb out with `..`"));
        }
        let resolved = match (access, &tail) {
            (Access::Read, _) => head
                .canonicalize()
                .map_err(|e| Error::io(format!("{what}: cannot resolve {}", head.display()), e))?,
            (Access::Write, _) => {
                resolve_for_write(&head).map_err(|reason| self.refused(what, path, &reason))?
            }
        };
        let real = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone());
        if !roots.iter().any(|r| resolved.starts_with(real(r))) {
            let why = if resolved.as_path() != head.as_path() {
                format!(
                    "it resolves to {}, outside the allowed roots",
                    resolved.display()
                )
            } else {
                "it is outside the allowed roots".to_string()
            };
            return Err(self.refused(what, path, &why));
        }
        if let Some(d) = self.denied.iter().find(|d| resolved.starts_with(real(d))) {
            return Err(self.refused(
                what,
                path,
                &format!("{} holds the node's own state", d.display()),
            ));
        }
        Ok(match tail {
            Some(tail) => resolved.join(tail),
            None => resolved,
        })
    }

    fn refused(&self, what: &str, path: &Path, why: &str) -> Error {
        let roots = self.roots.as_deref().unwrap_or_default();
        let listed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Error::new(
            ErrorKind::Forbidden,
            format!(
                "node policy: {what} {} is not allowed: {why} (allowed roots: {}); an operator can add a directory to `{}`",
                path.display(),
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                },
                self.setting
            ),
        )
    }
}

/// The deepest existing ancestor of `path` resolved, with the rest appended; `..` in the
/// part that does not exist yet is refused (it cannot be resolved).
fn resolve_for_write(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(resolved) => {
                let mut out = resolved;
                for part in rest.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(format!("{} cannot be resolved", path.display()));
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(format!("{} cannot be resolved", path.display()));
                }
            }
        }
        if existing
            .components()
            .next_back()
            .is_some_and(|c| c == Component::ParentDir)
        {
            return Err("`..` after a directory that does not exist".to_string());
        }
    }
}

/// Writes `text` to a new file at `path` that only its owner can read (mode 0600); an
/// existing file is never overwritten.
pub fn write_private_file(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Reads `path`, a key file (`what` in messages) that must be private to its owner: one
/// that others can read is refused with the `chmod` that mends it. The text is wiped from
/// memory when dropped.
pub fn read_private_file(path: &Path, what: &str) -> Result<zeroize::Zeroizing<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("cannot read the {what} {}", path.display()), e))?;
    if meta.mode() & 0o077 != 0 {
        return Err(Error::config(format!(
            "the {what} {} can be read by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        )));
    }
    std::fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|e| Error::io(format!("cannot read the {what} {}", path.display()), e))
}

/// Creates `dir` (and its parents) with mode 0700 if it is missing.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create directory {}", dir.display()), e))
}

/// Refuses a directory that users other than its owner may write (group or world write
/// bit), saying which `chmod` fixes it.
pub fn check_private_dir(dir: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o022 != 0 {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!(
                "{what} {} is writable by other users (mode {mode:04o}): anyone who can write it can run jobs or alter their records; run `chmod go-w {}` (0700 is best)",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses a directory that holds keys and that users other than its owner may read or
/// enter (any group or world bit), saying which `chmod` fixes it.
pub fn check_closed_dir(dir: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Forbidden,
            format!(
                "{what} {} can be read by other users (mode {mode:04o}), and it holds the node's keys; run `chmod 700 {}`",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrestricted_returns_the_path_as_given() {
        let local = LocalFiles::unrestricted();
        let p = Path::new("/etc/hostname");
        assert_eq!(local.check(p, Access::Read, "file source").unwrap(), p);
    }

    #[test]
    fn restricted_admits_only_paths_below_a_root_after_resolving() {
        let dir = tempfile_dir();
        let root = dir.join("data");
        std::fs::create_dir_all(&root).unwrap();
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        let local = LocalFiles::restricted(
            std::slice::from_ref(&root),
            &[root.join("keys")],
            "policy.local_roots",
        )
        .unwrap();
        std::fs::write(root.join("in.csv"), "a\n1\n").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.csv")).unwrap();
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::write(root.join("keys/node.key"), "k").unwrap();
        let ok = local
            .check(&root.join("in.csv"), Access::Read, "file source")
            .unwrap();
        assert!(ok.starts_with(root.canonicalize().unwrap()));
        for (path, access, needle) in [
            (
                outside.join("secret.txt"),
                Access::Read,
                "outside the allowed roots",
            ),
            (
                root.join("../outside/secret.txt"),
                Access::Read,
                "resolves to",
            ),
            (root.join("link.csv"), Access::Read, "resolves to"),
            (root.join("keys/node.key"), Access::Read, "node's own state"),
            (
                outside.join("new/out.parquet"),
                Access::Write,
                "outside the allowed roots",
            ),
            (root.join("new/../../outside/x"), Access::Write, "`..`"),
            (root.join("*/../../outside/*"), Access::Read, "`..`"),
        ] {
            let err = local.check(&path, access, "file source").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Forbidden, "{path:?}");
            assert!(err.to_string().contains(needle), "{path:?}: {err}");
            assert!(err.to_string().contains("policy.local_roots"), "{err}");
        }
        let new = local
            .check(
                &root.join("out/new/part.parquet"),
                Access::Write,
                "file sink",
            )
            .unwrap();
        assert_eq!(
            new,
            root.canonicalize().unwrap().join("out/new/part.parquet")
        );
        let glob = local.check(&root.join("sub/*.csv"), Access::Read, "file source");
        assert!(glob.is_err(), "a missing glob directory cannot be resolved");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        assert!(
            local
                .check(&root.join("sub/*.csv"), Access::Read, "file source")
                .unwrap()
                .ends_with("sub/*.csv")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_or_world_writable_directories_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private_dir(&dir, "spool").unwrap_err().to_string();
        assert!(err.contains("chmod go-w") && err.contains("0777"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&dir, "spool").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferry-local-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
