//! Local files (and, through the same code, any `ObjectStore`): paths, directories, globs.
//!
//! Paths in a job are local paths, absolute or relative to the working directory, or
//! relative to the `root` of a `file` connection.

mod sink;
mod source;

use std::path::PathBuf;
use std::sync::Arc;

use ferry_engine::config::{Access, JobSettings, LocalFiles};
use ferry_engine::{Error, Result};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

pub(crate) use sink::PartUploader;
pub use sink::{FileSink, MANIFEST, Manifest, ManifestFile, Publish, RollOver, WriteMode};
pub use source::{FileSource, InputFile};

use crate::format::FormatSpec;
use crate::format::io::store_error;

/// A `file` connection: a root directory that jobs' paths are relative to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnection {
    /// Directory that relative paths start from.
    pub root: PathBuf,
}

impl FileConnection {
    /// The health check: the root is a readable directory.
    pub fn check(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("cannot read {}", self.root.display()), e))?
            .count();
        Ok(vec![format!(
            "directory {} readable: ok ({entries} entries)",
            self.root.display()
        )])
    }
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
    pub fn local_path(&self, root: Option<&FileConnection>, local: &LocalFiles) -> Result<PathBuf> {
        resolve(&self.path, root, local, Access::Read, "file source")
    }
}

impl FileSinkSpec {
    /// The local path to write: resolved against the connection's root and checked against
    /// the job's allowed paths.
    pub fn local_path(&self, root: Option<&FileConnection>, local: &LocalFiles) -> Result<PathBuf> {
        resolve(&self.path, root, local, Access::Write, "file sink")
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

impl FileSourceSpec {
    /// Builds the source: resolves and checks the path, lists the files, reads their schema.
    pub async fn build(
        &self,
        root: Option<&FileConnection>,
        settings: &JobSettings,
    ) -> Result<FileSource> {
        let path = self.local_path(root, &settings.local)?;
        open_files(
            local_store(),
            &path,
            &self.path,
            &self.format,
            settings,
            true,
        )
        .await
    }
}

impl FileSinkSpec {
    /// Builds the sink: resolves and checks the path (nothing is written yet).
    pub fn build(&self, root: Option<&FileConnection>, settings: &JobSettings) -> Result<FileSink> {
        let path = self.local_path(root, &settings.local)?;
        let (dir, name) = if is_directory_path(&self.path) {
            // Without the trailing `/`: with it, a link to a directory reads as the directory
            // itself, and a rename would act on what it points to.
            (path.components().collect::<PathBuf>(), None)
        } else {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    Error::config(format!("sink path `{}` has no file name", self.path))
                })?
                .to_string();
            (
                path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
                Some(name),
            )
        };
        let format = match &name {
            Some(name) => self.format.for_output_name(name),
            None => self.format.clone(),
        };
        // A directory's hidden sibling, where the whole set is built and swapped in, when
        // the paths policy allows writing there (it may not, when the directory is a root).
        let sibling = match (&name, dir.parent(), dir.file_name()) {
            (None, Some(parent), Some(base)) => {
                let sibling = parent.join(format!(
                    ".{}._ferry_tmp_{}",
                    base.to_string_lossy(),
                    settings.name
                ));
                settings
                    .local
                    .check(&sibling, Access::Write, "file sink")
                    .ok()
            }
            _ => None,
        };
        let sink = FileSink::new(
            local_store(),
            object_path(&dir)?,
            Some(dir),
            name,
            format,
            self.mode,
            &settings.name,
            &self.path,
        )
        .with_file_mode(settings.local.output_mode())
        .with_write_buffer(sink::write_buffer_for(settings));
        Ok(match sibling {
            Some(sibling) => sink.with_exchange_dir(sibling),
            None => sink,
        })
    }
}

/// Whether a sink path names a directory (or blob prefix) that gets one `part-NNNNN` output
/// per partition: it ends with `/`. Otherwise it names one output. The one place that
/// decides what a sink path means.
pub fn is_directory_path(path: &str) -> bool {
    path.ends_with('/')
}

/// A sink path in an object store, split into its directory and, for a single output, its
/// name (`a/b/out.csv` -> `a/b`, `out.csv`; `a/b/` -> `a/b`, none).
pub fn split_sink_path(path: &str) -> (&str, Option<&str>) {
    let trimmed = path.trim_start_matches('/');
    if is_directory_path(trimmed) {
        return (trimmed.trim_end_matches('/'), None);
    }
    match trimmed.rsplit_once('/') {
        Some((dir, name)) => (dir, Some(name)),
        None => ("", Some(trimmed)),
    }
}

/// A file source over the files that `path` names in `store` (`shown` in messages); local
/// files are checked against the job's allowed paths once listed.
pub async fn open_files(
    store: Arc<dyn ObjectStore>,
    path: &std::path::Path,
    shown: &str,
    format: &FormatSpec,
    settings: &JobSettings,
    local: bool,
) -> Result<FileSource> {
    let files = list_inputs(&store, path, shown).await?;
    if local {
        check_inputs(&files, &settings.local)?;
    }
    FileSource::new(
        store,
        files,
        format.clone(),
        settings.batch_rows.get(),
        settings.fault_tolerance.skip_incompatible_rows,
    )
    .await
    .map(|source| source.with_sizes_for(settings).with_local_files(local))
}

/// Resolves a job path against a `file` connection's root (or, under a node policy, its
/// first allowed root; else the working directory), then checks it against `local` for
/// `access`. Returns the path to open: under a policy, with links and `..` resolved. `what`
/// names the path's use in messages (`file source`, `staging directory`).
pub fn resolve(
    path: &str,
    root: Option<&FileConnection>,
    local: &LocalFiles,
    access: Access,
    what: &str,
) -> Result<PathBuf> {
    let base = match root {
        Some(connection) => connection.root.clone(),
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
