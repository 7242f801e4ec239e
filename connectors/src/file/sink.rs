//! Writing files atomically, two ways:
//!
//! - [`Publish::Rename`] (local files): every output is written under a temporary name and
//!   renamed into place only when the whole job succeeded. Until then each file's name ends
//!   in `.partial`, so a reader's pattern for the format (`dest/**/*.parquet`) never reaches
//!   uncommitted data, even that of a killed run. A directory of part files is built in a
//!   hidden sibling (`.<dir>._ferry_tmp_<job>/`) and replaces the destination in one atomic
//!   rename (an exchange, when the destination exists), so a reader sees the old set or the
//!   new one, never a mix. Where that cannot be (the destination holds files that are not
//!   ferry's, is a mount point or a link, or the sibling would leave the allowed paths), the
//!   outputs wait in `_ferry_tmp_<job>/` inside the destination and are published under the
//!   manifest protocol below. A single file is one rename. What a killed run leaves is
//!   removed by the next run of the job before it writes anything.
//! - [`Publish::CompleteUpload`] (blob stores): every output is a multipart (block) upload to
//!   its final name whose parts go up as the output streams; the uploads are completed (the
//!   block list committed) only when the whole job succeeded. Until then no object exists,
//!   and the parts of a failed or killed run are discarded by the store.
//!
//! The manifest protocol, for a directory of part files: the commit first removes
//! [`MANIFEST`], then publishes the files one by one and removes the earlier run's stale
//! parts, and writes a new [`MANIFEST`] listing every file of the set (name and size) last.
//! A reader that must never see part of a set reads only what a manifest lists (and nothing
//! while there is none). Exchanged directories carry the same manifest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use ferry_engine::{
    Committed, Encoder, Error, OpenOutput, OutputLayout, OutputWriter, PreparedSink, Result, Sink,
    StagedOutput,
};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::format::FormatSpec;
use crate::format::io::store_error;
use ferry_engine::sink::crash_point;

/// The file naming a directory output's complete set, written last by its commit.
pub const MANIFEST: &str = "_ferry_manifest.json";

/// The most bytes buffered per local output before they go to the store in one part (a job
/// gets less under a small budget: [`write_buffer_for`]).
pub const WRITE_BUFFER_BYTES: usize = 8 << 20;

/// The write buffer of each local output for a job: an eighth of the memory budget over
/// `parallel_copies` (the outputs written at once), between 1 MiB and [`WRITE_BUFFER_BYTES`].
/// Not charged to the budget, so a small budget gets a small buffer.
pub(crate) fn write_buffer_for(settings: &ferry_engine::config::JobSettings) -> usize {
    let outputs = settings.parallel_copies.get() as u64;
    (settings.max_buffer_bytes / 8 / outputs.max(1)).clamp(1 << 20, WRITE_BUFFER_BYTES as u64)
        as usize
}

/// What to do when the output already exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace it (a directory's earlier `part-*` files are removed).
    #[default]
    Overwrite,
    /// Fail before writing anything.
    ErrorIfExists,
}

/// How outputs are published.
#[derive(Debug, Clone, Copy)]
pub enum Publish {
    /// Write under a temporary name, rename on commit.
    Rename,
    /// Upload parts of `part_size` bytes, `concurrency` at once, to the final name; complete
    /// the uploads on commit.
    CompleteUpload {
        /// Bytes per part (block).
        part_size: usize,
        /// Parts in flight per output.
        concurrency: usize,
    },
}

/// One file's upload, with its name.
type FileUpload = (Path, Box<dyn MultipartUpload>);

/// Byte offsets in an output's stream where one file ends and the next begins.
type Boundaries = Arc<Mutex<std::collections::VecDeque<u64>>>;

/// When an output rolls over into a new file (checked between batches, so files end at the
/// first batch boundary past a limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct RollOver {
    /// Rows per file.
    pub max_rows: Option<u64>,
    /// Encoded bytes per file.
    pub max_bytes: Option<u64>,
}

/// A sink of files in one format.
#[derive(Clone)]
pub struct FileSink {
    store: Arc<dyn ObjectStore>,
    /// The destination directory (the file's parent, or the directory itself).
    dir: Path,
    /// The local directory, when the store is the local file system.
    local_dir: Option<PathBuf>,
    /// The file name, for a single-file destination.
    file_name: Option<String>,
    format: FormatSpec,
    mode: WriteMode,
    job: String,
    run: String,
    shown: String,
    publish: Publish,
    connector: &'static str,
    roll: Option<RollOver>,
    /// Mode given to local outputs before they are published.
    file_mode: Option<u32>,
    /// A directory destination's hidden sibling, where a whole set can be built and swapped
    /// in by one rename (local files, when the paths policy allows writing it).
    exchange_dir: Option<PathBuf>,
    /// Bytes buffered per local output before they are written out.
    write_buffer: usize,
}

/// What a directory output's [`MANIFEST`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Manifest {
    /// `ferry-manifest/1`.
    pub format: String,
    /// The job that wrote the set.
    pub job: String,
    /// When the set was committed (RFC 3339, UTC).
    pub committed_at: String,
    /// Every file of the set, by name within the directory, in output order.
    pub files: Vec<ManifestFile>,
}

/// One file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ManifestFile {
    /// The file's name within the directory.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
}

impl FileSink {
    /// A sink writing into directory `dir` of `store`: the file `file_name`, or one
    /// `part-NNNNN` file per partition when `file_name` is `None`. `local_dir` is `dir` on
    /// the local file system when the store is it (outputs are then renamed into place);
    /// `job` names the temporary directory and `shown` is the destination in messages.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ObjectStore>,
        dir: Path,
        local_dir: Option<PathBuf>,
        file_name: Option<String>,
        format: FormatSpec,
        mode: WriteMode,
        job: &str,
        shown: &str,
    ) -> Self {
        let run = format!("{:x}{:04x}", std::process::id(), fastrand_u16());
        Self {
            store,
            dir,
            local_dir,
            file_name,
            format,
            mode,
            job: job.to_string(),
            run,
            shown: shown.to_string(),
            publish: Publish::Rename,
            connector: "file",
            roll: None,
            file_mode: None,
            exchange_dir: None,
            write_buffer: WRITE_BUFFER_BYTES,
        }
    }

    /// Buffers `bytes` per local output before writing them out (at least 1 MiB).
    pub fn with_write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes.max(1 << 20);
        self
    }

    /// Builds a directory destination's outputs in `sibling` (a hidden directory beside it)
    /// and swaps the whole set in by one rename when the destination allows it.
    pub fn with_exchange_dir(mut self, sibling: PathBuf) -> Self {
        if self.file_name.is_none() && self.local_dir.is_some() {
            self.exchange_dir = Some(sibling);
        }
        self
    }

    /// Gives local outputs this mode (such as 0o640) before they are published.
    pub fn with_file_mode(mut self, mode: u32) -> Self {
        self.file_mode = Some(mode);
        self
    }

    /// Publishes by completing multipart uploads instead of renaming (for blob stores), and
    /// names the store `connector` in reports and metrics.
    pub fn with_publish(mut self, publish: Publish, connector: &'static str) -> Self {
        self.publish = publish;
        self.connector = connector;
        self
    }

    /// Rolls each output over into a new file past these limits (uploads only).
    pub fn with_roll_over(mut self, roll: RollOver) -> Self {
        if roll.max_rows.is_some() || roll.max_bytes.is_some() {
            self.roll = Some(roll);
        }
        self
    }

    fn temp_dir(&self) -> Path {
        self.dir.clone().join(format!("_ferry_tmp_{}", self.job))
    }

    fn target_name(&self, output: usize) -> String {
        match &self.file_name {
            Some(name) => name.clone(),
            None => format!("part-{output:05}.{}", self.format.extension()),
        }
    }

    /// Removes this job's temporary directories (inside the destination and the sibling).
    async fn remove_temp_dir(&self) -> Result<()> {
        if let Some(local) = &self.local_dir {
            let inside = local.join(format!("_ferry_tmp_{}", self.job));
            for dir in std::iter::once(&inside).chain(self.exchange_dir.as_ref()) {
                remove_local_dir(dir).await?;
            }
            return Ok(());
        }
        crate::format::io::delete_under(self.store.as_ref(), &self.temp_dir()).await
    }

    /// Whether `name` is one of the `part-NNNNN[-RRRR].<ext>` files this sink writes.
    fn is_part_name(&self, name: &str) -> bool {
        let suffix = format!(".{}", self.format.extension());
        name.strip_prefix("part-")
            .and_then(|rest| rest.strip_suffix(suffix.as_str()))
            .is_some_and(|n| {
                let (part, roll) = n.split_once('-').unwrap_or((n, "0000"));
                part.len() == 5
                    && part.bytes().all(|b| b.is_ascii_digit())
                    && roll.len() == 4
                    && roll.bytes().all(|b| b.is_ascii_digit())
            })
    }

    /// Whether the local destination directory `dest` can be replaced as a whole: it does
    /// not exist, or it is a real directory on its parent's file system holding only this
    /// sink's part files, a manifest and this job's temporary directory.
    async fn exchangeable(&self, dest: &std::path::Path) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let sink = self.clone();
        let dest = dest.to_path_buf();
        let checked = ferry_engine::task::spawn_blocking(move || -> std::io::Result<bool> {
            let meta = match std::fs::symlink_metadata(&dest) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(e),
            };
            let parent = dest.parent().unwrap_or(std::path::Path::new("/"));
            if !meta.is_dir() || meta.dev() != std::fs::metadata(parent)?.dev() {
                return Ok(false);
            }
            let own_temp = format!("_ferry_tmp_{}", sink.job);
            for entry in std::fs::read_dir(&dest)? {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if !(sink.is_part_name(&name) || name == MANIFEST || name == own_temp) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| Error::internal(format!("directory check failed: {e}")))?;
        checked.map_err(|e| Error::io(format!("cannot read {}", self.shown), e))
    }

    /// Writes the manifest of `files` (all in `dir`) as `dir/_ferry_manifest.json`, in one
    /// put (atomic on every store).
    async fn write_manifest(&self, dir: &Path, files: &[Path]) -> Result<()> {
        let mut listed = Vec::with_capacity(files.len());
        for file in files {
            let meta = self
                .store
                .head(file)
                .await
                .map_err(|e| store_error("read the size of", file, e))?;
            listed.push(ManifestFile {
                name: file.filename().unwrap_or_default().to_string(),
                bytes: meta.size,
            });
        }
        let manifest = Manifest {
            format: "ferry-manifest/1".into(),
            job: self.job.clone(),
            committed_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            files: listed,
        };
        let body = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::internal(format!("manifest: {e}")))?;
        let path = dir.clone().join(MANIFEST);
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| store_error("write", &path, e))?;
        // A local manifest gets the mode of the files it lists.
        if let (Some(mode), Some(_)) = (self.file_mode, &self.local_dir) {
            use std::os::unix::fs::PermissionsExt;
            let local = format!("/{path}");
            tokio::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| Error::io(format!("cannot set the mode of {local}"), e))?;
        }
        Ok(())
    }

    /// Removes `dir/_ferry_manifest.json`: from here until a new one is written, a reader
    /// following the manifest protocol reads nothing.
    async fn remove_manifest(&self, dir: &Path) -> Result<()> {
        let path = dir.clone().join(MANIFEST);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("remove", &path, e)),
        }
    }

    /// Removes the stale parts that `published` did not replace, then lists `published` in
    /// a new manifest; returns what was removed.
    async fn finish_listed(&self, published: &[Path], stale: Vec<Path>) -> Result<Vec<String>> {
        let names: std::collections::HashSet<&str> = published.iter().map(|p| p.as_ref()).collect();
        let mut removed = Vec::new();
        for old in stale.into_iter().filter(|p| !names.contains(p.as_ref())) {
            self.store
                .delete(&old)
                .await
                .map_err(|e| store_error("remove earlier output", &old, e))?;
            removed.push(format!("/{old}"));
        }
        crash_point("publish:stale-removed");
        self.write_manifest(&self.dir, published).await?;
        crash_point("publish:listed");
        Ok(removed)
    }

    /// Earlier `part-NNNNN.<ext>` files of a directory destination.
    async fn existing_parts(&self) -> Result<Vec<Path>> {
        let listed: Vec<_> = self
            .store
            .list_with_delimiter(Some(&self.dir))
            .await
            .map(|l| l.objects)
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(vec![]),
                e => Err(store_error("list", &self.dir, e)),
            })?;
        Ok(listed
            .into_iter()
            .map(|m| m.location)
            .filter(|p| p.filename().is_some_and(|f| self.is_part_name(f)))
            .collect())
    }
}

/// Removes a local directory and everything in it; a missing one is fine.
async fn remove_local_dir(dir: &std::path::Path) -> Result<()> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(
            format!("remove leftovers in {}", dir.display()),
            e,
        )),
    }
}

/// Puts directory `staged` in the place of `dest` in one rename: an exchange when `dest`
/// exists (its mode carried over; the old contents end up in `staged`), a plain rename when
/// it does not.
fn swap_in(staged: &std::path::Path, dest: &std::path::Path) -> std::io::Result<()> {
    match std::fs::metadata(dest) {
        Ok(meta) => {
            std::fs::set_permissions(staged, meta.permissions())?;
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                staged,
                rustix::fs::CWD,
                dest,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(std::io::Error::from)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::rename(staged, dest),
        Err(e) => Err(e),
    }
}

fn fastrand_u16() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u16
}

struct FileOutputWriter {
    store: Arc<dyn ObjectStore>,
    writer: BufWriter,
    output: usize,
    temporary: Path,
    target: Path,
    bytes: u64,
    /// Mode given to the local file before it is published.
    file_mode: Option<u32>,
}

#[async_trait::async_trait]
impl OutputWriter for FileOutputWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.bytes += chunk.len() as u64;
        self.writer
            .put(chunk)
            .await
            .map_err(|e| store_error("write", &self.temporary, e))
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn StagedOutput>> {
        self.writer.shutdown().await.map_err(|e| {
            let retryable = !ferry_engine::error::is_disk_full(&e);
            Error::io(format!("complete /{}", self.temporary), e).with_retryable(retryable)
        })?;
        Ok(Box::new(TemporaryFile {
            store: self.store,
            output: self.output,
            temporary: self.temporary,
            target: self.target,
            bytes: self.bytes,
            file_mode: self.file_mode,
        }))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.writer
            .abort()
            .await
            .map_err(|e| store_error("discard", &self.temporary, e))
    }
}

/// An output complete under its temporary name, published by renaming it.
struct TemporaryFile {
    store: Arc<dyn ObjectStore>,
    output: usize,
    temporary: Path,
    target: Path,
    bytes: u64,
    file_mode: Option<u32>,
}

impl std::fmt::Debug for TemporaryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/{} (for /{})", self.temporary, self.target)
    }
}

#[async_trait::async_trait]
impl StagedOutput for TemporaryFile {
    fn output(&self) -> usize {
        self.output
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    async fn publish(self: Box<Self>) -> Result<Vec<String>> {
        if let Some(mode) = self.file_mode {
            use std::os::unix::fs::PermissionsExt;
            let local = format!("/{}", self.temporary);
            tokio::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| Error::io(format!("cannot set the mode of {local}"), e))?;
        }
        self.store
            .rename(&self.temporary, &self.target)
            .await
            .map_err(|e| store_error("publish", &self.target, e))?;
        Ok(vec![format!("/{}", self.target)])
    }

    async fn discard(self: Box<Self>) -> Result<()> {
        match self.store.delete(&self.temporary).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("remove staged output", &self.temporary, e)),
        }
    }
}

/// An output's uploads with every part stored, published by completing them: each file it
/// rolled over into, in order.
#[derive(Debug)]
struct StoredUploads {
    output: usize,
    files: Vec<FileUpload>,
    bytes: u64,
}

#[async_trait::async_trait]
impl StagedOutput for StoredUploads {
    fn output(&self) -> usize {
        self.output
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    async fn publish(mut self: Box<Self>) -> Result<Vec<String>> {
        let mut published = Vec::with_capacity(self.files.len());
        let mut files = std::mem::take(&mut self.files).into_iter();
        while let Some((path, mut upload)) = files.next() {
            if let Err(e) = upload.complete().await {
                for (_, mut rest) in files {
                    let _ = rest.abort().await;
                }
                return Err(store_error("publish", &path, e));
            }
            published.push(format!("/{path}"));
        }
        Ok(published)
    }

    async fn discard(mut self: Box<Self>) -> Result<()> {
        // Uncommitted blocks are never visible; the store discards them.
        for (_, mut upload) in self.files.drain(..) {
            let _ = upload.abort().await;
        }
        Ok(())
    }
}

/// Streams bytes into one multipart upload: parts of `part_size` bytes, at most
/// `concurrency` in flight. Completes nothing: [`PartUploader::finish`] hands the upload back
/// with every part stored, for the caller to complete when it may publish.
pub(crate) struct PartUploader {
    upload: Box<dyn MultipartUpload>,
    parts: JoinSet<object_store::Result<()>>,
    buffer: Vec<Bytes>,
    buffered: usize,
    part_size: usize,
    concurrency: usize,
    target: Path,
}

impl PartUploader {
    /// Uploads to `target` through `upload`.
    pub(crate) fn new(
        upload: Box<dyn MultipartUpload>,
        target: Path,
        part_size: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            upload,
            parts: JoinSet::new(),
            buffer: Vec::new(),
            buffered: 0,
            part_size,
            concurrency: concurrency.max(1),
            target,
        }
    }

    /// Adds bytes; a full part goes up (after waiting while `concurrency` are in flight).
    pub(crate) async fn push(&mut self, chunk: Bytes) -> Result<()> {
        self.buffered += chunk.len();
        self.buffer.push(chunk);
        if self.buffered >= self.part_size {
            self.send_part().await?;
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<()> {
        while self.parts.len() >= self.concurrency {
            self.join_one().await?;
        }
        let payload: PutPayload = std::mem::take(&mut self.buffer).into_iter().collect();
        self.buffered = 0;
        self.parts.spawn(self.upload.put_part(payload));
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        match self.parts.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(store_error("upload", &self.target, e)),
            Some(Err(e)) => Err(Error::internal(format!("upload task failed: {e}"))),
        }
    }

    /// Sends what is buffered, waits for every part, and returns the upload to complete; on
    /// failure the upload is discarded.
    pub(crate) async fn finish(mut self) -> Result<Box<dyn MultipartUpload>> {
        match self.store_all().await {
            Ok(()) => Ok(self.upload),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn store_all(&mut self) -> Result<()> {
        if self.buffered > 0 {
            self.send_part().await?;
        }
        while !self.parts.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    /// Stops the parts in flight and discards the upload.
    pub(crate) async fn abort(mut self) {
        self.parts.abort_all();
        let _ = self.upload.abort().await;
    }
}

/// Streams one output as a multipart upload (several, when it rolls over); completes
/// nothing (the sink's commit does).
struct UploadWriter {
    store: Arc<dyn ObjectStore>,
    /// The file being written.
    current: Option<PartUploader>,
    part_size: usize,
    concurrency: usize,
    output: usize,
    target: Path,
    bytes: u64,
    /// Where files end in this output's stream (rolling over), and the files done so far.
    boundaries: Option<Boundaries>,
    written: u64,
    done: Vec<FileUpload>,
    /// `(directory, base name, extension)` of rolled-over file names.
    naming: (Path, String, String),
}

impl UploadWriter {
    async fn feed(&mut self, chunk: Bytes) -> Result<()> {
        self.written += chunk.len() as u64;
        self.current
            .as_mut()
            .ok_or_else(|| Error::internal("upload used after finish"))?
            .push(chunk)
            .await
    }

    /// Stores every part of the current file and keeps its upload for the commit.
    async fn close_file(&mut self) -> Result<()> {
        let current = self
            .current
            .take()
            .ok_or_else(|| Error::internal("upload finished twice"))?;
        self.done
            .push((self.target.clone(), current.finish().await?));
        Ok(())
    }

    /// Ends the current file and starts the next one.
    async fn roll_over(&mut self) -> Result<()> {
        self.close_file().await?;
        let (dir, base, ext) = &self.naming;
        let next = dir
            .clone()
            .join(format!("{base}-{:04}.{ext}", self.done.len()).as_str());
        let upload = self
            .store
            .put_multipart(&next)
            .await
            .map_err(|e| store_error("start uploading", &next, e))?;
        self.current = Some(PartUploader::new(
            upload,
            next.clone(),
            self.part_size,
            self.concurrency,
        ));
        self.target = next;
        Ok(())
    }

    fn next_boundary(&self) -> Option<u64> {
        self.boundaries
            .as_ref()
            .and_then(|b| b.lock().ok().and_then(|q| q.front().copied()))
    }

    fn pop_boundary(&self) {
        if let Some(b) = &self.boundaries
            && let Ok(mut q) = b.lock()
        {
            q.pop_front();
        }
    }
}

#[async_trait::async_trait]
impl OutputWriter for UploadWriter {
    async fn write(&mut self, mut chunk: Bytes) -> Result<()> {
        self.bytes += chunk.len() as u64;
        while let Some(boundary) = self.next_boundary() {
            let end = self.written + chunk.len() as u64;
            if boundary > end || (boundary == end && chunk.is_empty()) {
                break;
            }
            let head = chunk.split_to((boundary - self.written) as usize);
            if !head.is_empty() {
                self.feed(head).await?;
            }
            self.pop_boundary();
            self.roll_over().await?;
        }
        if !chunk.is_empty() {
            self.feed(chunk).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Box<dyn StagedOutput>> {
        self.close_file().await?;
        Ok(Box::new(StoredUploads {
            output: self.output,
            files: std::mem::take(&mut self.done),
            bytes: self.bytes,
        }))
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        if let Some(current) = self.current.take() {
            current.abort().await;
        }
        for (_, mut upload) in self.done.drain(..) {
            let _ = upload.abort().await;
        }
        Ok(())
    }
}

/// Ends the inner encoder's file and starts a new one past the roll-over limits, recording
/// where in the byte stream each file ends.
struct RollingEncoder {
    inner: Box<dyn Encoder>,
    format: FormatSpec,
    schema: SchemaRef,
    roll: RollOver,
    boundaries: Boundaries,
    emitted: u64,
    file_rows: u64,
    file_bytes: u64,
}

impl RollingEncoder {
    fn emit(&mut self, bytes: Option<Bytes>) -> Option<Bytes> {
        let b = bytes?;
        self.emitted += b.len() as u64;
        self.file_bytes += b.len() as u64;
        Some(b)
    }
}

impl Encoder for RollingEncoder {
    fn encode(&mut self, batch: &arrow::record_batch::RecordBatch) -> Result<Option<Bytes>> {
        let full = self.roll.max_rows.is_some_and(|m| self.file_rows >= m)
            || self.roll.max_bytes.is_some_and(|m| {
                // Encoders that buffer (a Parquet row group) count what they hold too.
                self.file_bytes + self.inner.buffered_bytes() as u64 >= m
            });
        let mut head: Option<Bytes> = None;
        if full && self.file_rows > 0 {
            let tail = self.inner.finish()?;
            head = self.emit(tail);
            self.boundaries
                .lock()
                .map_err(|_| Error::internal("roll-over lock poisoned"))?
                .push_back(self.emitted);
            self.inner = self.format.encoder(&self.schema)?;
            self.file_rows = 0;
            self.file_bytes = 0;
        }
        self.file_rows += batch.num_rows() as u64;
        let body = self.inner.encode(batch)?;
        let body = self.emit(body);
        Ok(match (head, body) {
            (None, b) | (b, None) => b,
            (Some(h), Some(b)) => {
                let mut joined = Vec::with_capacity(h.len() + b.len());
                joined.extend_from_slice(&h);
                joined.extend_from_slice(&b);
                Some(Bytes::from(joined))
            }
        })
    }

    fn flush(&mut self) -> Result<Option<Bytes>> {
        let b = self.inner.flush()?;
        Ok(self.emit(b))
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        let b = self.inner.finish()?;
        Ok(self.emit(b))
    }

    fn buffered_bytes(&self) -> usize {
        self.inner.buffered_bytes()
    }

    fn buffered_rows(&self) -> u64 {
        self.inner.buffered_rows()
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn prepare(&self, _schema: &SchemaRef) -> Result<Box<dyn PreparedSink>> {
        if self.mode == WriteMode::ErrorIfExists {
            let exists = match &self.file_name {
                Some(name) => self
                    .store
                    .head(&self.dir.clone().join(name.as_str()))
                    .await
                    .is_ok(),
                None => !self.existing_parts().await?.is_empty(),
            };
            if exists {
                return Err(Error::invalid_input(format!(
                    "{} already exists and the sink's mode is error_if_exists; remove it or set mode to overwrite",
                    self.shown
                )));
            }
        }
        let mut sibling = None;
        let created = match self.publish {
            Publish::CompleteUpload { .. } => {
                self.check_container().await?;
                Vec::new()
            }
            Publish::Rename => {
                self.remove_temp_dir().await?;
                sibling = match (&self.exchange_dir, &self.local_dir) {
                    (Some(dir), Some(local)) if self.exchangeable(local).await? => {
                        Some(dir.clone())
                    }
                    _ => None,
                };
                self.create_temp_dir(sibling.as_deref()).await?
            }
        };
        Ok(Box::new(PreparedFiles {
            sink: self.clone(),
            created,
            sibling,
        }))
    }

    fn connector(&self) -> &'static str {
        self.connector
    }
}

impl FileSink {
    /// Reaches the store and the container before any data moves.
    async fn check_container(&self) -> Result<()> {
        match self.store.list_with_delimiter(Some(&self.dir)).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e, object_store::Error::NotFound { .. })
                    || e.to_string().contains("ContainerNotFound") =>
            {
                Err(Error::invalid_input(format!(
                    "{}: the container does not exist; create it first",
                    self.shown
                )))
            }
            Err(e) => Err(store_error("list", &self.dir, e)),
        }
    }

    /// Creates the local temporary directory (`sibling`, or `_ferry_tmp_<job>/` in the
    /// destination); returns the destination directories it had to create, deepest first (a
    /// failed job removes them again when they are empty, leaving no trace).
    async fn create_temp_dir(&self, sibling: Option<&std::path::Path>) -> Result<Vec<PathBuf>> {
        let Some(local) = &self.local_dir else {
            return Ok(Vec::new());
        };
        let temp = match sibling {
            Some(dir) => dir.to_path_buf(),
            None => local.join(format!("_ferry_tmp_{}", self.job)),
        };
        let missing: Vec<PathBuf> = local
            .ancestors()
            .take_while(|d| !d.exists())
            .map(PathBuf::from)
            .collect();
        tokio::fs::create_dir_all(&temp).await.map_err(|e| {
            Error::io(
                format!(
                    "cannot write to {}; check that the directory is writable",
                    local.display()
                ),
                e,
            )
        })?;
        if self.file_name.is_some() && local.join(self.file_name.as_deref().unwrap_or("")).is_dir()
        {
            return Err(Error::invalid_input(format!(
                "{} is a directory; end the sink path with `/` to write part files into it",
                self.shown
            )));
        }
        Ok(missing)
    }

    fn encoder(
        &self,
        schema: &SchemaRef,
        boundaries: Option<&Boundaries>,
    ) -> Result<Box<dyn Encoder>> {
        let inner = self.format.encoder(schema)?;
        Ok(match (self.roll, boundaries) {
            (Some(roll), Some(boundaries)) => Box::new(RollingEncoder {
                inner,
                format: self.format.clone(),
                schema: schema.clone(),
                roll,
                boundaries: boundaries.clone(),
                emitted: 0,
                file_rows: 0,
                file_bytes: 0,
            }),
            _ => inner,
        })
    }

    /// A writer that uploads output `output` to its final name, in parts.
    async fn upload_writer(
        &self,
        output: usize,
        part_size: usize,
        concurrency: usize,
        boundaries: Option<Boundaries>,
    ) -> Result<Box<dyn OutputWriter>> {
        let name = self.target_name(output);
        let target = self.dir.clone().join(name.as_str());
        let upload = self
            .store
            .put_multipart(&target)
            .await
            .map_err(|e| store_error("start uploading", &target, e))?;
        let ext = self.format.extension();
        let base = name
            .strip_suffix(&format!(".{ext}"))
            .unwrap_or(&name)
            .to_string();
        Ok(Box::new(UploadWriter {
            store: self.store.clone(),
            current: Some(PartUploader::new(
                upload,
                target.clone(),
                part_size,
                concurrency,
            )),
            part_size,
            concurrency,
            output,
            target,
            bytes: 0,
            boundaries,
            written: 0,
            done: Vec::new(),
            naming: (self.dir.clone(), base, ext),
        }))
    }

    /// A writer of output `output` under a temporary name, renamed on commit into place, or
    /// to its final name in `sibling` when the set is swapped in as a whole.
    fn temporary_writer(
        &self,
        output: usize,
        sibling: Option<&std::path::Path>,
    ) -> Result<Box<dyn OutputWriter>> {
        let name = self.target_name(output);
        let (temp_dir, target_dir) = match sibling {
            Some(dir) => {
                let dir = super::object_path(dir)?;
                (dir.clone(), dir)
            }
            None => (self.temp_dir(), self.dir.clone()),
        };
        // Not the output's own extension: globbing the destination must not find it.
        let temporary = temp_dir.join(format!("{}-{name}.partial", self.run));
        let writer =
            BufWriter::with_capacity(self.store.clone(), temporary.clone(), self.write_buffer)
                .with_max_concurrency(2);
        Ok(Box::new(FileOutputWriter {
            store: self.store.clone(),
            writer,
            output,
            temporary,
            target: target_dir.join(name.as_str()),
            bytes: 0,
            file_mode: self.local_dir.as_ref().and(self.file_mode),
        }))
    }
}

/// One run of a [`FileSink`]: what `prepare` created, and the outputs' writers.
struct PreparedFiles {
    sink: FileSink,
    /// The destination directories `prepare` created, deepest first.
    created: Vec<PathBuf>,
    /// Where a directory destination's set is built, to replace it in one rename.
    sibling: Option<PathBuf>,
}

#[async_trait::async_trait]
impl PreparedSink for PreparedFiles {
    fn layout(&self) -> OutputLayout {
        if self.sink.file_name.is_some() {
            OutputLayout::Single
        } else {
            OutputLayout::PerPartition
        }
    }

    async fn open(&self, schema: &SchemaRef, output: usize) -> Result<OpenOutput> {
        let sink = &self.sink;
        match sink.publish {
            Publish::CompleteUpload {
                part_size,
                concurrency,
            } => {
                // The encoder records where each rolled-over file ends; the writer cuts there.
                let boundaries: Option<Boundaries> = match sink.roll {
                    Some(_) if sink.file_name.is_none() => Some(Boundaries::default()),
                    _ => None,
                };
                Ok(OpenOutput {
                    encoder: sink.encoder(schema, boundaries.as_ref())?,
                    writer: sink
                        .upload_writer(output, part_size, concurrency, boundaries)
                        .await?,
                })
            }
            Publish::Rename => Ok(OpenOutput {
                encoder: sink.encoder(schema, None)?,
                writer: sink.temporary_writer(output, self.sibling.as_deref())?,
            }),
        }
    }

    async fn commit(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<Committed> {
        let sink = &self.sink;
        if sink.file_name.is_some() {
            let outputs = ferry_engine::sink::publish_all(staged).await?;
            if let Publish::Rename = sink.publish {
                sink.remove_temp_dir().await?;
            }
            return Ok(Committed {
                outputs,
                removed: Vec::new(),
            });
        }
        let stale = match sink.existing_parts().await {
            Ok(stale) => stale,
            Err(e) => {
                ferry_engine::sink::discard_all(staged).await;
                return Err(e);
            }
        };
        let committed = match &self.sibling {
            Some(sibling) => self.commit_by_exchange(sibling, staged, stale).await,
            None => self.commit_listed(staged, stale).await,
        };
        if committed.is_err()
            && let Some(sibling) = &self.sibling
        {
            let _ = remove_local_dir(sibling).await;
        }
        committed
    }

    async fn abort(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<()> {
        let mut failure = None;
        for output in staged {
            if let Err(e) = output.discard().await {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        // Other outputs may still be writing: remove the directory only once it is empty,
        // and then the destination directories this run created, if they are empty too.
        if let Some(local) = &self.sink.local_dir {
            let temp = match &self.sibling {
                Some(dir) => dir.clone(),
                None => local.join(format!("_ferry_tmp_{}", self.sink.job)),
            };
            if tokio::fs::remove_dir(&temp).await.is_ok() {
                for dir in &self.created {
                    match tokio::fs::remove_dir(dir).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(_) => break,
                    }
                }
            }
        }
        Ok(())
    }
}

impl PreparedFiles {
    /// The manifest protocol: unlist, publish file by file, remove stale parts, list.
    async fn commit_listed(
        &self,
        staged: Vec<Box<dyn StagedOutput>>,
        stale: Vec<Path>,
    ) -> Result<Committed> {
        let sink = &self.sink;
        if let Err(e) = sink.remove_manifest(&sink.dir).await {
            ferry_engine::sink::discard_all(staged).await;
            return Err(e);
        }
        crash_point("publish:unlisted");
        let outputs = ferry_engine::sink::publish_all(staged).await?;
        let published = object_paths(&outputs)?;
        let removed = sink.finish_listed(&published, stale).await?;
        if let Publish::Rename = sink.publish {
            sink.remove_temp_dir().await?;
        }
        Ok(Committed { outputs, removed })
    }

    /// Names every output in the sibling, lists them in its manifest and swaps the sibling
    /// in for the destination in one rename; the old set goes with the sibling. When the
    /// destination gained files that are not ferry's while the job ran, or its file system
    /// cannot exchange directories, the files move in one by one under the manifest protocol.
    async fn commit_by_exchange(
        &self,
        sibling: &std::path::Path,
        staged: Vec<Box<dyn StagedOutput>>,
        stale: Vec<Path>,
    ) -> Result<Committed> {
        let sink = &self.sink;
        let local = sink
            .local_dir
            .clone()
            .ok_or_else(|| Error::internal("exchange without a local directory"))?;
        let in_sibling = object_paths(&ferry_engine::sink::publish_all(staged).await?)?;
        crash_point("publish:staged");
        let sibling_path = super::object_path(sibling)?;
        let at_dest: Vec<Path> = in_sibling
            .iter()
            .map(|p| sink.dir.clone().join(p.filename().unwrap_or_default()))
            .collect();
        let outputs: Vec<String> = at_dest.iter().map(|p| format!("/{p}")).collect();
        if sink.exchangeable(&local).await? {
            sink.write_manifest(&sibling_path, &in_sibling).await?;
            crash_point("publish:listed");
            let (from, to) = (sibling.to_path_buf(), local.clone());
            let swapped = ferry_engine::task::spawn_blocking(move || swap_in(&from, &to))
                .await
                .map_err(|e| Error::internal(format!("publish task failed: {e}")))?;
            match swapped {
                Ok(()) => {
                    crash_point("publish:exchanged");
                    remove_local_dir(sibling).await?;
                    let kept: std::collections::HashSet<&str> =
                        at_dest.iter().map(|p| p.as_ref()).collect();
                    let removed = stale
                        .iter()
                        .filter(|p| !kept.contains(p.as_ref()))
                        .map(|p| format!("/{p}"))
                        .collect();
                    return Ok(Committed { outputs, removed });
                }
                // A file system that cannot exchange (or a destination that became a mount
                // point): publish file by file below.
                Err(e) if matches!(e.raw_os_error(), Some(n) if NO_EXCHANGE.contains(&n)) => {
                    tracing::warn!(
                        destination = %sink.shown,
                        error = %e,
                        "cannot swap the output directory in; publishing file by file"
                    );
                    sink.remove_manifest(&sibling_path).await?;
                }
                Err(e) => {
                    return Err(Error::io(format!("cannot publish {}", sink.shown), e));
                }
            }
        }
        sink.remove_manifest(&sink.dir).await?;
        crash_point("publish:unlisted");
        for (index, (from, to)) in in_sibling.iter().zip(&at_dest).enumerate() {
            sink.store
                .rename(from, to)
                .await
                .map_err(|e| store_error("publish", to, e))?;
            crash_point(&format!("publish:output-{index}"));
        }
        let removed = sink.finish_listed(&at_dest, stale).await?;
        remove_local_dir(sibling).await?;
        Ok(Committed { outputs, removed })
    }
}

/// The object paths of published locations (`/a/b` -> `a/b`).
fn object_paths(locations: &[String]) -> Result<Vec<Path>> {
    locations
        .iter()
        .map(|l| {
            Path::parse(l.trim_start_matches('/'))
                .map_err(|e| Error::internal(format!("published path {l}: {e}")))
        })
        .collect()
}

/// Errors of an exchange that make it publish file by file instead: a file system without
/// exchange, another file system, a busy mount point.
const NO_EXCHANGE: [i32; 3] = [
    rustix::io::Errno::INVAL.raw_os_error(),
    rustix::io::Errno::XDEV.raw_os_error(),
    rustix::io::Errno::BUSY.raw_os_error(),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffers_follow_the_budget_within_their_bounds() {
        let buffer = |budget_mib, parallel| {
            write_buffer_for(&crate::format::io::settings_with(budget_mib, parallel))
        };
        // 64 MiB over 2 outputs: 64 MiB / 8 / 2 = 4 MiB.
        assert_eq!(buffer(64, 2), 4 << 20);
        assert_eq!(
            buffer(16, 2),
            1 << 20,
            "a small budget: the smallest buffer"
        );
        assert_eq!(buffer(256, 1), WRITE_BUFFER_BYTES, "a large one: the most");
    }
}
