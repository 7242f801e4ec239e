//! Local files (and, through the same code, any `ObjectStore`): paths, directories, globs.
//!
//! Paths in a job are local paths, absolute or relative to the working directory, or
//! relative to the `root` of a `file` connection.

mod sink;
mod source;

use std::path::PathBuf;
use std::sync::Arc;

use ferry_engine::config::{Access, Connections, LocalFiles};
use ferry_engine::{Error, Result};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

pub(crate) use sink::PartUploader;
pub use sink::{FileSink, Publish, RollOver, WriteMode};
pub use source::{FileSource, InputFile};

use crate::format::FormatSpec;
use crate::format::io::store_error;

/// A `file` connection: a root directory that jobs' paths are relative to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnection {
    /// Always `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Directory that relative paths start from.
    pub root: PathBuf,
}

/// The `file` source of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// Optional `file` connection whose root the path is relative to.
    #[serde(default)]
    pub connection: Option<String>,
    /// A file, a directory (every file below it, hidden ones and names starting with `_`
    /// excepted) or a glob (`data/*.csv`, `logs/**/*.jsonl.gz`).
    pub path: String,
    /// The files' format.
    pub format: FormatSpec,
}

/// The `file` sink of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSpec {
    /// Optional `file` connection whose root the path is relative to.
    #[serde(default)]
    pub connection: Option<String>,
    /// A file (`out/orders.parquet`: one file) or a directory ending with `/`
    /// (`out/orders/`: one `part-NNNNN` file per partition).
    pub path: String,
    /// The output format.
    pub format: FormatSpec,
    /// What to do when the output exists: `overwrite` (default) or `error_if_exists`.
    #[serde(default)]
    pub mode: WriteMode,
}

impl FileSourceSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(Error::config("file source: `path` is empty"));
        }
        if !self.path.contains(['*', '?', '[']) {
            // A plain path.
        } else {
            glob::Pattern::new(&self.path).map_err(|e| {
                Error::config(format!("file source: `path` is not a valid glob: {e}"))
            })?;
        }
        self.format.validate()
    }
}

impl FileSourceSpec {
    /// The local path to read: resolved against the connection's root and checked against
    /// the job's allowed paths.
    pub fn local_path(&self, connections: &Connections, local: &LocalFiles) -> Result<PathBuf> {
        resolve(
            &self.path,
            self.connection.as_deref(),
            connections,
            local,
            Access::Read,
            "file source",
        )
    }
}

impl FileSinkSpec {
    /// The local path to write: resolved against the connection's root and checked against
    /// the job's allowed paths.
    pub fn local_path(&self, connections: &Connections, local: &LocalFiles) -> Result<PathBuf> {
        resolve(
            &self.path,
            self.connection.as_deref(),
            connections,
            local,
            Access::Write,
            "file sink",
        )
    }

    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() || self.path.trim() == "/" {
            return Err(Error::config(
                "file sink: `path` must name a file or a directory ending with `/`",
            ));
        }
        if self.path.contains(['*', '?', '[']) {
            return Err(Error::config("file sink: `path` cannot be a glob"));
        }
        self.format.validate()
    }
}

/// Resolves a job path against a connection's root (or, under a node policy, its first
/// allowed root; else the working directory), then checks it against `local` for `access`.
/// Returns the path to open: under a policy, with links and `..` resolved. `what` names the
/// path's use in messages (`file source`, `staging directory`).
pub fn resolve(
    path: &str,
    connection: Option<&str>,
    connections: &Connections,
    local: &LocalFiles,
    access: Access,
    what: &str,
) -> Result<PathBuf> {
    let base = match connection {
        Some(name) => {
            let (kind, value) = connections.get(name)?;
            if kind != "file" {
                return Err(Error::config(format!(
                    "connection `{name}` is a `{kind}` connection, not `file`"
                )));
            }
            let conn: FileConnection = serde_json::from_value(value.clone())
                .map_err(|e| Error::config(format!("connection `{name}`: {e}")))?;
            conn.root
        }
        None => match local.base() {
            Some(base) => base.to_path_buf(),
            None => {
                std::env::current_dir().map_err(|e| Error::io("find the working directory", e))?
            }
        },
    };
    let p = PathBuf::from(path);
    let joined = if p.is_absolute() { p } else { base.join(p) };
    local.check(&joined, access, what)
}

/// Checks every listed local input against `local`: a link inside an allowed directory that
/// points out of it is refused.
pub fn check_inputs(files: &[InputFile], local: &LocalFiles) -> Result<()> {
    if !local.is_restricted() {
        return Ok(());
    }
    for file in files {
        local.check(
            std::path::Path::new(&format!("/{}", file.path)),
            Access::Read,
            "file source",
        )?;
    }
    Ok(())
}

/// The local file system as an object store rooted at `/`.
pub fn local_store() -> Arc<dyn ObjectStore> {
    Arc::new(LocalFileSystem::new())
}

/// The object path of an absolute local path.
pub fn object_path(path: &std::path::Path) -> Result<Path> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::config(format!("path {} is not UTF-8", path.display())))?;
    Path::parse(text.trim_start_matches('/').trim_end_matches('/'))
        .map_err(|e| Error::config(format!("path {}: {e}", path.display())))
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_') || name.contains('#')
}

/// Lists the files a source path names: the file itself, every file under a directory, or
/// every file matching a glob. Sorted by path; an empty match is an error.
pub async fn list_inputs(
    store: &Arc<dyn ObjectStore>,
    path: &std::path::Path,
    shown: &str,
) -> Result<Vec<InputFile>> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::config(format!("path {} is not UTF-8", path.display())))?;
    let glob_at = text.find(['*', '?', '[']);
    let (prefix_dir, pattern) = match glob_at {
        Some(i) => {
            let dir_end = text[..i].rfind('/').unwrap_or(0);
            let pattern = glob::Pattern::new(text.trim_start_matches('/'))
                .map_err(|e| Error::config(format!("`{shown}` is not a valid glob: {e}")))?;
            (PathBuf::from(&text[..dir_end.max(1)]), Some(pattern))
        }
        None => (path.to_path_buf(), None),
    };
    let location = object_path(&prefix_dir)?;
    if pattern.is_none() {
        match store.head(&location).await {
            Ok(meta) => {
                return Ok(vec![InputFile {
                    path: meta.location.to_string(),
                    label: shown.to_string(),
                    size: meta.size,
                }]);
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("read", &location, e)),
        }
    }
    let listed: Vec<_> = store
        .list(Some(&location))
        .try_collect()
        .await
        .map_err(|e| store_error("list", &location, e))?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut files: Vec<InputFile> = listed
        .into_iter()
        .filter(|meta| {
            let rel = meta
                .location
                .prefix_match(&location)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>());
            let hidden = rel
                .as_ref()
                .is_some_and(|parts| parts.iter().any(|p| is_hidden(p)));
            let matches = pattern
                .as_ref()
                .is_none_or(|p| p.matches_with(meta.location.as_ref(), options));
            !hidden && matches
        })
        .map(|meta| {
            let full = format!("/{}", meta.location);
            InputFile {
                path: meta.location.to_string(),
                label: full,
                size: meta.size,
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if files.is_empty() {
        return Err(Error::invalid_input(format!(
            "no input files match `{shown}`; check the path (directories are read recursively, hidden files skipped)"
        )));
    }
    Ok(files)
}
