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
use ferry_engine::report::{CountUnit, JobFailure, JobStatus};
use ferry_engine::{Error, JobReport, Result};
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
            let path = s.local_path(connections, local)?;
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
        SourceSpec::Tpch(_) | SourceSpec::Postgres(_) => Err(crate::format::binary_only()),
    }
}

/// The sink side, with its part size and part concurrency.
fn sink_endpoint(
    spec: &SinkSpec,
    connections: &Connections,
    local: &LocalFiles,
) -> Result<(Endpoint, usize, usize)> {
    match spec {
        SinkSpec::File(s) => {
            let dir = s.local_path(connections, local)?;
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
                s.concurrency(),
            ))
        }
        SinkSpec::Postgres(_) => Err(crate::format::binary_only()),
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
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Asked before each file is published.
    gate: Option<ferry_engine::config::CommitGate>,
    /// Mode given to local copies once published.
    file_mode: Option<u32>,
}

impl Copier {
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
        let (src, dst) = (&self.source.store, &self.sink.store);
        if !self.options.overwrite
            && let Ok(meta) = dst.head(target).await
            && meta.size == file.size
        {
            return Ok(Outcome::AlreadyThere);
        }
        let from = Path::from(file.path.as_str());
        let mut stream = src
            .get(&from)
            .await
            .map_err(|e| store_error("read", &from, e))?
            .into_stream();
        let upload = dst
            .put_multipart(target)
            .await
            .map_err(|e| store_error("start uploading", target, e))?;
        let mut uploader =
            PartUploader::new(upload, target.clone(), self.part_size, self.concurrency);
        let mut md5 = Md5::new();
        let result: Result<()> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| store_error("read", &from, e))?;
                md5.update(&chunk);
                self.bytes_read.fetch_add(chunk.len() as u64, Relaxed);
                self.bytes_written.fetch_add(chunk.len() as u64, Relaxed);
                uploader.push(chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            uploader.abort().await;
            return Err(e);
        }
        let mut upload = uploader.finish().await?;
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
        if self.options.verify_md5 {
            let expected = md5.finalize();
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
        }
        Ok(Outcome::Copied)
    }
}

/// Runs a binary copy job to its report. "Rows" in the report are files: read = listed,
/// written = copied, skipped = already at the destination.
pub async fn run(spec: &JobFile, settings: JobSettings, connections: &Connections) -> JobReport {
    let started = Instant::now();
    let name = settings.name.clone();
    let in_job = |e: Error| e.context(format!("job {name}"));
    let prepared = async {
        validate(spec)?;
        let (source, files) = source_endpoint(&spec.source, connections, &settings.local).await?;
        let (sink, part_size, concurrency) =
            sink_endpoint(&spec.sink, connections, &settings.local)?;
        let file_mode = (sink.connector == "file").then(|| settings.local.output_mode());
        let options = match spec.sink.format() {
            Some(FormatSpec::Binary(b)) => b.clone(),
            _ => BinaryFormat::default(),
        };
        Ok::<_, Error>((
            Copier {
                source,
                sink,
                options,
                part_size,
                concurrency,
                bytes_read: AtomicU64::new(0),
                bytes_written: AtomicU64::new(0),
                gate: settings.commit_gate.clone(),
                file_mode,
            },
            files,
        ))
    }
    .await;
    let (copier, files) = match prepared {
        Ok(p) => p,
        Err(e) => return JobReport::failed(&name, in_job(e)),
    };
    // Every destination is known before anything is copied: flattening must not collide.
    let mut targets = Vec::with_capacity(files.len());
    let mut seen = std::collections::HashMap::new();
    for f in &files {
        match copier.target(f) {
            Ok(t) => {
                if let Some(other) = seen.insert(t.to_string(), f.path.clone()) {
                    return JobReport::failed(
                        &name,
                        in_job(Error::invalid_input(format!(
                            "{other} and {} would both be copied to {t}; keep the hierarchy or copy them separately",
                            f.path
                        ))),
                    );
                }
                targets.push(t);
            }
            Err(e) => return JobReport::failed(&name, in_job(e)),
        }
    }
    let retries = AtomicU64::new(0);
    let outcomes: Vec<(String, Result<Outcome>)> = futures::stream::iter(
        files.iter().zip(&targets),
    )
    .map(|(file, target)| {
        let (copier, retries, settings) = (&copier, &retries, &settings);
        async move {
            let mut attempt = 1;
            loop {
                match copier.copy(file, target).await {
                    Err(e) if e.is_retryable() && attempt < settings.max_attempts.get() => {
                        attempt += 1;
                        retries.fetch_add(1, Relaxed);
                        tracing::warn!(file = %file.path, error = %e, attempt, "retrying the file");
                        tokio::time::sleep(ferry_engine::retry::backoff(
                            attempt,
                            settings.initial_backoff,
                            settings.max_backoff,
                        ))
                        .await;
                    }
                    result => return (target.to_string(), result),
                }
            }
        }
    })
    .buffer_unordered(settings.parallel_copies.get())
    .collect()
    .await;
    let secs = started.elapsed().as_secs_f64();
    let mut copied = 0;
    let mut present = 0;
    let mut outputs = Vec::new();
    let mut error = None;
    for (target, outcome) in outcomes {
        match outcome {
            Ok(Outcome::Copied) => {
                copied += 1;
                outputs.push(target);
            }
            Ok(Outcome::AlreadyThere) => present += 1,
            Err(e) => {
                if error.is_none() {
                    error = Some(in_job(e));
                }
            }
        }
    }
    outputs.sort();
    let bytes_read = copier.bytes_read.load(Relaxed);
    JobReport {
        job: name.clone(),
        source: copier.source.connector.to_string(),
        sink: copier.sink.connector.to_string(),
        status: if error.is_none() {
            JobStatus::Succeeded
        } else {
            JobStatus::Failed
        },
        partitions: files.len() as u64,
        retries: retries.load(Relaxed),
        rows_read: files.len() as u64,
        rows_written: copied,
        rows_skipped: present,
        skipped_sample: vec![],
        bytes_read,
        bytes_written: copier.bytes_written.load(Relaxed),
        duration_secs: secs,
        rows_per_sec: if secs > 0.0 {
            copied as f64 / secs
        } else {
            0.0
        },
        read_mib_per_sec: if secs > 0.0 {
            bytes_read as f64 / secs / (1 << 20) as f64
        } else {
            0.0
        },
        stages: vec![],
        bottleneck: None,
        outputs,
        removed: vec![],
        error: error.map(|e| JobFailure {
            kind: e.kind(),
            exit_code: e.exit_code(),
            message: e.to_string(),
        }),
        prepare_secs: 0.0,
        unit: CountUnit::Files,
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
