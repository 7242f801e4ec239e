//! Binary copy: files and blobs copied byte for byte, without parsing, between local files and
//! Azure Blob Storage in any direction (the job azcopy does).
//!
//! Files are copied `parallel_copies` at a time; each is streamed from a GET into a multipart
//! (block) upload whose parts go up `max_concurrency` at a time, and is published whole when
//! its upload completes (a local file by rename, a blob by committing its block list), so a
//! destination file is never partial. A re-run skips files whose destination already has the
//! same size, so a failed run resumes file by file. The MD5 of every file is computed while
//! it streams; with `verify_md5` the copy is read back and must have the same MD5. (object_store
//! does not expose the Content-MD5 the service may hold, so the check reads the copy.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use ferry_engine::config::{JobSettings, LocalFiles};
use ferry_engine::report::{CountUnit, RunOutcome};
use ferry_engine::retry::Retry;
use ferry_engine::{
    CancellationToken, Committed, Error, JobControl, JobProgress, JobReport, Result,
};

use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::azure_blob::{DEFAULT_BLOCK_SIZE, DEFAULT_MAX_CONCURRENCY};
use crate::connection::Connections;
use crate::file::{self, InputFile, PartUploader};
use crate::format::io::store_error;
use crate::format::{BinaryFormat, FormatSpec, Hierarchy};
use crate::job::{JobFile, SinkSpec, SourceSpec};

/// One side of a binary copy.
struct Endpoint {
    store: Arc<dyn ObjectStore>,
    /// The directory (or prefix) that relative names start from.
    root: String,
    connector: &'static str,
}

/// Whether a job is a binary copy (its source or sink format is `binary`).
pub fn is_binary(spec: &JobFile) -> bool {
    matches!(spec.source.format(), Some(FormatSpec::Binary(_)))
        || matches!(spec.sink.format(), Some(FormatSpec::Binary(_)))
}

/// Checks a binary job without I/O: binary on both sides, a directory as the sink.
pub fn validate(spec: &JobFile) -> Result<()> {
    let both = matches!(spec.source.format(), Some(FormatSpec::Binary(_)))
        && matches!(spec.sink.format(), Some(FormatSpec::Binary(_)));
    if !both {
        return Err(crate::format::binary_only());
    }
    if !spec.sink.path().is_some_and(file::is_directory_path) {
        return Err(Error::config(
            "binary copy: the sink `path` must be a directory (or blob prefix) ending with `/`",
        ));
    }
    if spec.staging.is_some() {
        return Err(Error::config(
            "binary copy: `staging` does not apply; remove it",
        ));
    }
    Ok(())
}

/// The directory part of a source path: up to the last `/` before any glob character, or
/// the path itself when it names a directory.
fn listing_root(path: &str, is_single_file: bool) -> String {
    let cut = path.find(['*', '?', '[']).unwrap_or(path.len());
    let head = &path[..cut];
    let root = if cut < path.len() || is_single_file {
        head.rfind('/').map(|i| &head[..i]).unwrap_or("")
    } else {
        head
    };
    root.trim_matches('/').to_string()
}

async fn source_endpoint(
    spec: &SourceSpec,
    connections: &Connections,
    local: &LocalFiles,
) -> Result<(Endpoint, Vec<InputFile>)> {
    match spec {
        SourceSpec::File(s) => {
            let path = s.local_path(connections.file_root(&s.connection)?, local)?;
            let store = file::local_store();
            let files = file::list_inputs(&store, &path, &s.path).await?;
            file::check_inputs(&files, local)?;
            let text = path.to_string_lossy().to_string();
            let single = path.is_file();
            Ok((
                Endpoint {
                    store,
                    root: listing_root(&text, single),
                    connector: "file",
                },
                files,
            ))
        }
        SourceSpec::AzureBlob(s) => {
            let store = connections
                .azure_blob(&s.connection)?
                .store(&s.connection, &s.container)?;
            let text = format!("/{}", s.path.trim_start_matches('/'));
            let files = file::list_inputs(
                &store,
                std::path::Path::new(&text),
                &format!("{}/{}", s.container, s.path),
            )
            .await?;
            let single = files.len() == 1 && files[0].path == text.trim_matches('/');
            Ok((
                Endpoint {
                    store,
                    root: listing_root(&text, single),
                    connector: "azure_blob",
                },
                files,
            ))
        }
        SourceSpec::Tpch(_) | SourceSpec::Postgres(_) | SourceSpec::Sqlserver(_) => {
            Err(crate::format::binary_only())
        }
    }
}

/// The sink side, with its part size and part concurrency.
fn sink_endpoint(
    spec: &SinkSpec,
    connections: &Connections,
    settings: &JobSettings,
) -> Result<(Endpoint, usize, usize)> {
    let local = &settings.local;
    match spec {
        SinkSpec::File(s) => {
            let dir = s.local_path(connections.file_root(&s.connection)?, local)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            Ok((
                Endpoint {
                    store: file::local_store(),
                    root: dir.to_string_lossy().trim_matches('/').to_string(),
                    connector: "file",
                },
                DEFAULT_BLOCK_SIZE.bytes() as usize,
                DEFAULT_MAX_CONCURRENCY,
            ))
        }
        SinkSpec::AzureBlob(s) => {
            let store = connections
                .azure_blob(&s.connection)?
                .store(&s.connection, &s.container)?;
            Ok((
                Endpoint {
                    store,
                    root: s.path.trim_matches('/').to_string(),
                    connector: "azure_blob",
                },
                s.block_bytes(),
                s.concurrency(settings),
            ))
        }
        SinkSpec::Postgres(_) | SinkSpec::Sqlserver(_) => Err(crate::format::binary_only()),
    }
}

/// What happened to one file.
enum Outcome {
    Copied,
    AlreadyThere,
}

struct Copier {
    source: Endpoint,
    sink: Endpoint,
    options: BinaryFormat,
    part_size: usize,
    concurrency: usize,
    /// Counts files and bytes: read = listed, written = copied, skipped = already there.
    progress: Arc<JobProgress>,
    /// Stops every copy; a file cut short is discarded, never published.
    cancel: CancellationToken,
    /// Asked before each file is published.
    gate: Option<ferry_engine::config::CommitGate>,
    /// Mode given to local copies once published.
    file_mode: Option<u32>,
}

impl Copier {
    /// The destination of every file, known before anything is copied: flattening must not
    /// make two files collide.
    fn targets(&self, files: &[InputFile]) -> Result<Vec<Path>> {
        let mut targets = Vec::with_capacity(files.len());
        let mut seen = std::collections::HashMap::new();
        for f in files {
            let t = self.target(f)?;
            if let Some(other) = seen.insert(t.to_string(), f.path.clone()) {
                return Err(Error::invalid_input(format!(
                    "{other} and {} would both be copied to {t}; keep the hierarchy or copy them separately",
                    f.path
                )));
            }
            targets.push(t);
        }
        Ok(targets)
    }

    /// The destination of `file`.
    fn target(&self, file: &InputFile) -> Result<Path> {
        let relative = file
            .path
            .strip_prefix(&self.source.root)
            .map(|r| r.trim_start_matches('/'))
            .filter(|r| !r.is_empty())
            .unwrap_or(&file.path);
        let name = match self.options.hierarchy {
            Hierarchy::Preserve => relative,
            Hierarchy::Flatten => relative.rsplit('/').next().unwrap_or(relative),
        };
        let full = if self.sink.root.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.sink.root)
        };
        Path::parse(&full).map_err(|e| Error::config(format!("destination {full}: {e}")))
    }

    async fn copy(&self, file: &InputFile, target: &Path) -> Result<Outcome> {
        if !self.options.overwrite
            && let Ok(meta) = self.sink.store.head(target).await
            && meta.size == file.size
        {
            self.progress.rows_skipped.fetch_add(1, Relaxed);
            return Ok(Outcome::AlreadyThere);
        }
        let (mut upload, md5) = self.upload(file, target).await?;
        if self.cancel.is_cancelled() {
            let _ = upload.abort().await;
            return Err(Error::cancelled("the job was cancelled"));
        }
        if let Some(gate) = &self.gate
            && let Err(e) = gate.check().await
        {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload
            .complete()
            .await
            .map_err(|e| store_error("publish", target, e))?;
        self.check_copy(file, target, md5).await?;
        self.progress.rows_written.fetch_add(1, Relaxed);
        Ok(Outcome::Copied)
    }

    /// Streams `file` into a multipart upload to `target` with every part stored, not
    /// completed; returns it with the file's MD5. A failed or cancelled upload is discarded
    /// and its bytes taken back from the progress (a retry counts them again).
    async fn upload(
        &self,
        file: &InputFile,
        target: &Path,
    ) -> Result<(
        Box<dyn object_store::MultipartUpload>,
        md5::digest::Output<Md5>,
    )> {
        let from = Path::from(file.path.as_str());
        let mut stream = self
            .source
            .store
            .get(&from)
            .await
            .map_err(|e| store_error("read", &from, e))?
            .into_stream();
        let upload = self
            .sink
            .store
            .put_multipart(target)
            .await
            .map_err(|e| store_error("start uploading", target, e))?;
        let mut uploader =
            PartUploader::new(upload, target.clone(), self.part_size, self.concurrency);
        let mut md5 = Md5::new();
        let mut copied = 0u64;
        let result: Result<()> = async {
            loop {
                let next = tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Error::cancelled("the job was cancelled")),
                    next = stream.next() => next,
                };
                let Some(chunk) = next else {
                    return Ok(());
                };
                let chunk = chunk.map_err(|e| store_error("read", &from, e))?;
                md5.update(&chunk);
                let len = chunk.len() as u64;
                copied += len;
                self.progress.input_bytes_read.fetch_add(len, Relaxed);
                self.progress.bytes_written.fetch_add(len, Relaxed);
                uploader.push(chunk).await?;
            }
        }
        .await;
        if let Err(e) = result {
            uploader.abort().await;
            let take_back = |counter: &AtomicU64| {
                counter.fetch_sub(copied.min(counter.load(Relaxed)), Relaxed);
            };
            take_back(&self.progress.input_bytes_read);
            take_back(&self.progress.bytes_written);
            return Err(e);
        }
        Ok((uploader.finish().await?, md5.finalize()))
    }

    /// Checks a published copy: its mode (local files), its size, and with `verify_md5` its
    /// MD5 read back. A copy that fails is removed.
    async fn check_copy(
        &self,
        file: &InputFile,
        target: &Path,
        expected: md5::digest::Output<Md5>,
    ) -> Result<()> {
        let dst = &self.sink.store;
        if let Some(mode) = self.file_mode {
            use std::os::unix::fs::PermissionsExt;
            let local = format!("/{target}");
            tokio::fs::set_permissions(&local, std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| Error::io(format!("cannot set the mode of {local}"), e))?;
        }
        let meta = dst
            .head(target)
            .await
            .map_err(|e| store_error("check", target, e))?;
        if meta.size != file.size {
            let _ = dst.delete(target).await;
            return Err(Error::store(format!(
                "{target}: the copy has {} bytes, the source {}; it was removed",
                meta.size, file.size
            )));
        }
        if !self.options.verify_md5 {
            return Ok(());
        }
        let mut check = Md5::new();
        let mut back = dst
            .get(target)
            .await
            .map_err(|e| store_error("read back", target, e))?
            .into_stream();
        while let Some(chunk) = back
            .try_next()
            .await
            .map_err(|e| store_error("read back", target, e))?
        {
            check.update(&chunk);
        }
        if check.finalize() != expected {
            let _ = dst.delete(target).await;
            return Err(Error::store(format!(
                "{target}: the copy's MD5 differs from the source's; the copy was removed, run the job again"
            ))
            .with_retryable(true));
        }
        Ok(())
    }
}

/// Runs a binary copy job to its report, watched and cancelled through `control`. "Rows" in
/// the report are files: read = listed, written = copied, skipped = already at the
/// destination; partitions are files too.
pub async fn run(
    spec: &JobFile,
    settings: JobSettings,
    connections: &Connections,
    control: &JobControl,
) -> JobReport {
    let started = Instant::now();
    let name = settings.name.clone();
    let kinds = (spec.source.kind(), spec.sink.kind());
    let result = copy_all(spec, &settings, connections, control)
        .await
        .map_err(|e| e.context(format!("job {name}")));
    let outcome = RunOutcome {
        job: name,
        kinds,
        secs: started.elapsed().as_secs_f64(),
        result,
        skipped_sample: Vec::new(),
        unit: CountUnit::Files,
        // Every file's MD5 is checked as it is copied; `verify` adds nothing to that.
        figures: None,
    };
    let report = JobReport::build(outcome, &control.progress);
    ferry_engine::metrics::record_job(&report);
    report
}

/// Prepares both sides, then copies every file, `parallel_copies` at once.
async fn copy_all(
    spec: &JobFile,
    settings: &JobSettings,
    connections: &Connections,
    control: &JobControl,
) -> Result<Committed> {
    validate(spec)?;
    let (source, files) = source_endpoint(&spec.source, connections, &settings.local).await?;
    let (sink, part_size, concurrency) = sink_endpoint(&spec.sink, connections, settings)?;
    let file_mode = (sink.connector == "file").then(|| settings.local.output_mode());
    let options = match spec.sink.format() {
        Some(FormatSpec::Binary(b)) => b.clone(),
        _ => BinaryFormat::default(),
    };
    let progress = &control.progress;
    let copier = Copier {
        source,
        sink,
        options,
        part_size,
        concurrency,
        progress: progress.clone(),
        cancel: control.cancel.clone(),
        gate: settings.commit_gate.clone(),
        file_mode,
    };
    let targets = copier.targets(&files)?;
    progress.partitions_total.store(files.len() as u64, Relaxed);
    progress.records_read.store(files.len() as u64, Relaxed);
    progress
        .input_bytes_total
        .store(files.iter().map(|f| f.size).sum(), Relaxed);
    let kinds = (spec.source.kind(), spec.sink.kind());
    let outcomes: Vec<(String, Result<Outcome>)> = futures::stream::iter(files.iter().zip(&targets))
        .map(|(file, target)| {
            let copier = &copier;
            async move {
                let mut retry = Retry::new(settings, &copier.progress, "file", kinds);
                loop {
                    match copier.copy(file, target).await {
                        Err(e) => match retry.after(&e) {
                            Some(wait) if !copier.cancel.is_cancelled() => {
                                let attempt = retry.attempt();
                                tracing::warn!(file = %file.path, error = %e, attempt, "retrying the file");
                                if let Err(cancelled) = Retry::wait(wait, &copier.cancel).await {
                                    return (target.to_string(), Err(cancelled));
                                }
                            }
                            _ => return (target.to_string(), Err(e)),
                        },
                        Ok(outcome) => {
                            copier.progress.partitions_done.fetch_add(1, Relaxed);
                            return (target.to_string(), Ok(outcome));
                        }
                    }
                }
            }
        })
        .buffer_unordered(settings.parallel_copies.get())
        .collect()
        .await;
    let mut committed = Committed::default();
    let mut failure: Option<Error> = None;
    for (target, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Copied) => committed.outputs.push(target),
            Ok(Outcome::AlreadyThere) => {}
            // The first root cause; a cancellation that followed it is a consequence.
            Err(e) => {
                if failure.as_ref().is_none_or(|f| {
                    f.kind() == ferry_engine::ErrorKind::Cancelled
                        && e.kind() != ferry_engine::ErrorKind::Cancelled
                }) {
                    failure = Some(e);
                }
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            committed.outputs.sort();
            Ok(committed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_start_at_the_listing_root() {
        assert_eq!(listing_root("/data/in/", false), "data/in");
        assert_eq!(listing_root("/data/in", false), "data/in");
        assert_eq!(listing_root("/data/in/a.csv", true), "data/in");
        assert_eq!(listing_root("/data/*/x.csv", false), "data");
        assert_eq!(listing_root("/logs/2024-*.gz", false), "logs");
        assert_eq!(listing_root("/*.gz", false), "");
    }
}
