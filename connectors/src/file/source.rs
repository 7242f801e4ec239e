//! Reading files: one path, a directory, or a glob; each file one or more partitions.
//!
//! A large uncompressed CSV or JSONL file is split into byte ranges at record boundaries
//! (found by one quote-aware scan, so quoted newlines never split a record); Parquet files
//! split by row groups and Arrow IPC files by record batches. Decoding runs on a blocking
//! thread per partition and hands batches to the engine through a small channel.

// `ParquetObjectReader` is deprecated in parquet 60 in favour of a hand-written
// `AsyncFileReader`; it still works, and replacing it is tracked as follow-up work.
#![allow(deprecated)]

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use ferry_engine::channel::ByteBudget;
use ferry_engine::{
    BatchStream, Charge, Checkpoint, Error, Partition, ReadAhead, Result, SkippedRow, Source,
    SourceBatch, read_ahead,
};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderBuilder, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::RowGroupMetaData;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::format::csv::{CsvDecoder, Origin, find_boundaries};
use crate::format::io::{StoreReader, store_error};
use crate::format::jsonl::JsonlDecoder;
use crate::format::{Compression, FormatSpec, arrow_ipc};

/// Files smaller than this are never split.
pub const MIN_SPLIT_BYTES: u64 = 16 << 20;
/// Target size of a byte-range partition of a large file.
pub const TARGET_PARTITION_BYTES: u64 = 128 << 20;

/// One input file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputFile {
    /// Location in the store.
    pub path: String,
    /// Name for messages (as the user knows it).
    pub label: String,
    /// Size in bytes.
    pub size: u64,
}

/// A partition of a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum PartSpec {
    /// A byte range starting at a record boundary (text formats).
    Range {
        start: u64,
        end: u64,
        line: u64,
        header: bool,
    },
    /// The whole file (compressed text).
    Whole,
    /// Row groups `first..first+count` (Parquet) or record batches (Arrow IPC).
    Blocks { first: usize, count: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FilePartition {
    file: InputFile,
    part: PartSpec,
}

/// Reads files of one format.
pub struct FileSource {
    store: Arc<dyn ObjectStore>,
    files: Vec<InputFile>,
    format: FormatSpec,
    schema: SchemaRef,
    /// Column indices read from Parquet files (projection), if not all.
    projection: Option<Vec<usize>>,
    batch_rows: usize,
    /// Input bytes that end a CSV, JSON lines or Parquet batch before `batch_rows`.
    batch_bytes: usize,
    skip_bad_rows: bool,
    connector: &'static str,
    /// Bytes per read of a text file (and of its read-ahead).
    read_block: u64,
    /// The store is the local file system (object path `a/b` is the file `/a/b`).
    local: bool,
}

impl FileSource {
    /// Marks the store as the local file system, whose files can be read directly.
    pub fn with_local_files(mut self, local: bool) -> Self {
        self.local = local;
        self
    }

    /// Names the store in reports and metrics (`azure_blob`); default `file`.
    pub fn with_connector(mut self, connector: &'static str) -> Self {
        self.connector = connector;
        self
    }

    /// A source over `files`, whose schema is inferred or read now.
    pub async fn new(
        store: Arc<dyn ObjectStore>,
        files: Vec<InputFile>,
        format: FormatSpec,
        batch_rows: usize,
        skip_bad_rows: bool,
    ) -> Result<Self> {
        let first = files
            .first()
            .ok_or_else(|| Error::invalid_input("no input files"))?
            .clone();
        let mut projection = None;
        let schema = match format.explicit_schema()? {
            Some(schema) => schema,
            None => match &format {
                FormatSpec::Csv(_) | FormatSpec::Jsonl(_) => infer(&store, &first, &format).await?,
                FormatSpec::Parquet(p) => {
                    let builder = parquet_builder(&store, &first).await?;
                    let full = builder.schema().clone();
                    match &p.columns {
                        None => full,
                        Some(columns) => {
                            let indices = columns
                                .iter()
                                .map(|c| {
                                    full.index_of(c).map_err(|_| {
                                        Error::invalid_input(format!(
                                            "{}: no column `{c}`; the file has: {}",
                                            first.label,
                                            full.fields()
                                                .iter()
                                                .map(|f| f.name().as_str())
                                                .collect::<Vec<_>>()
                                                .join(", ")
                                        ))
                                    })
                                })
                                .collect::<Result<Vec<_>>>()?;
                            let schema = Arc::new(full.project(&indices)?);
                            projection = Some(indices);
                            schema
                        }
                    }
                }
                FormatSpec::ArrowIpc(_) => {
                    let (footer, _) = ipc_footer(&store, &first).await?;
                    footer.schema
                }
                FormatSpec::Binary(_) => return Err(crate::format::binary_only()),
            },
        };
        Ok(Self {
            store,
            files,
            format,
            schema,
            projection,
            batch_rows,
            batch_bytes: usize::MAX,
            skip_bad_rows,
            connector: "file",
            read_block: crate::format::io::DEFAULT_READ_BLOCK,
            local: false,
        })
    }

    /// Reads text in blocks sized for `settings` (see [`crate::format::io::read_block_for`]),
    /// and ends CSV, JSON lines and Parquet batches at its
    /// [`batch_bytes`](ferry_engine::config::JobSettings::batch_bytes).
    pub fn with_sizes_for(mut self, settings: &ferry_engine::config::JobSettings) -> Self {
        self.read_block = crate::format::io::read_block_for(settings);
        self.batch_bytes = settings.batch_bytes();
        self
    }

    /// Cuts a splittable text file into byte ranges that start at line boundaries
    /// (`quote`: the CSV quote byte to track, none for JSON lines).
    async fn split_text(
        &self,
        file: &InputFile,
        quote: Option<u8>,
        per_file: usize,
    ) -> Result<Vec<FilePartition>> {
        let n = (per_file as u64)
            .max(file.size.div_ceil(TARGET_PARTITION_BYTES))
            .min(file.size / MIN_SPLIT_BYTES * 2)
            .max(1);
        let targets: Vec<u64> = (1..n).map(|i| file.size * i / n).collect();
        let (store, f) = (self.store.clone(), file.clone());
        let handle = Handle::current();
        let boundaries = ferry_engine::task::spawn_blocking(move || {
            let reader = StoreReader::new(store, Path::from(f.path.as_str()), 0..f.size, handle);
            // JSON lines never hold a raw newline inside a value: no quote tracking.
            find_boundaries(reader, quote.unwrap_or(0), &targets)
        })
        .await
        .map_err(|e| Error::internal(format!("boundary scan: {e}")))?
        .map_err(|e| e.context(&file.label))?;
        let range = |start: (u64, u64), end: u64| FilePartition {
            file: file.clone(),
            part: PartSpec::Range {
                start: start.0,
                end,
                line: start.1,
                header: start.0 == 0,
            },
        };
        let mut parts = Vec::new();
        let mut start = (0u64, 1u64);
        for b in boundaries.iter().filter(|b| b.offset < file.size) {
            if b.offset > start.0 {
                parts.push(range(start, b.offset));
                start = (b.offset, b.line);
            }
        }
        parts.push(range(start, file.size));
        Ok(parts)
    }

    /// Cuts a file that is not splittable text: by row groups (Parquet) or record batches
    /// (Arrow IPC), else one part (a byte range when uncompressed, to resume by offset).
    async fn split_file(&self, file: &InputFile, per_file: usize) -> Result<Vec<FilePartition>> {
        let blocks = match &self.format {
            FormatSpec::Parquet(_) => Some(
                parquet_builder(&self.store, file)
                    .await?
                    .metadata()
                    .num_row_groups(),
            ),
            FormatSpec::ArrowIpc(_) => Some(ipc_footer(&self.store, file).await?.0.batches.len()),
            _ => None,
        };
        let part = |part: PartSpec| FilePartition {
            file: file.clone(),
            part,
        };
        Ok(match blocks {
            Some(total) => {
                let n = per_file.min(total).max(1);
                (0..n)
                    .map(|i| {
                        let (first, end) = (total * i / n, total * (i + 1) / n);
                        part(PartSpec::Blocks {
                            first,
                            count: end - first,
                        })
                    })
                    .collect()
            }
            None if self.format.compression_of(&file.label) == Compression::None => {
                vec![part(PartSpec::Range {
                    start: 0,
                    end: file.size,
                    line: 1,
                    header: true,
                })]
            }
            None => vec![part(PartSpec::Whole)],
        })
    }

    /// A partition's description for logs and errors, and its size in bytes.
    fn describe(&self, p: &FilePartition) -> (String, u64) {
        match &p.part {
            PartSpec::Range { start, end, .. } => (
                format!("{} bytes {start}..{end}", p.file.label),
                end - start,
            ),
            PartSpec::Whole => (p.file.label.clone(), p.file.size),
            PartSpec::Blocks { first, count } => {
                let what = if matches!(self.format, FormatSpec::Parquet(_)) {
                    "row groups"
                } else {
                    "batches"
                };
                (
                    format!("{} {what} {first}..{}", p.file.label, first + count),
                    p.file.size,
                )
            }
        }
    }

    fn splittable_text(&self, file: &InputFile) -> Option<Option<u8>> {
        if self.format.compression_of(&file.label) != Compression::None
            || file.size < 2 * MIN_SPLIT_BYTES
        {
            return None;
        }
        match &self.format {
            FormatSpec::Csv(c) if c.dialect().splittable() => Some(Some(c.dialect().quote as u8)),
            FormatSpec::Jsonl(_) => Some(None),
            _ => None,
        }
    }
}

/// Reads up to `max` bytes from the start of a file, decompressed.
async fn sample(
    store: &Arc<dyn ObjectStore>,
    file: &InputFile,
    compression: Compression,
    max: usize,
) -> Result<(Vec<u8>, bool)> {
    let (store, file) = (store.clone(), file.clone());
    let handle = Handle::current();
    ferry_engine::task::spawn_blocking(move || {
        let path = Path::from(file.path.as_str());
        let raw = StoreReader::new(store, path, 0..file.size, handle);
        let reader = compression.reader(raw)?;
        let mut buf = Vec::new();
        let n = reader
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read {}", file.label), e))?;
        let complete = n <= max;
        buf.truncate(max);
        Ok((buf, complete))
    })
    .await
    .map_err(|e| Error::internal(format!("sampling task: {e}")))?
}

async fn infer(
    store: &Arc<dyn ObjectStore>,
    file: &InputFile,
    format: &FormatSpec,
) -> Result<SchemaRef> {
    const SAMPLE_BYTES: usize = 4 << 20;
    let (bytes, complete) = sample(
        store,
        file,
        format.compression_of(&file.label),
        SAMPLE_BYTES,
    )
    .await?;
    match format {
        FormatSpec::Csv(c) => crate::format::csv::infer_schema(
            &bytes,
            complete,
            &c.dialect(),
            format.infer_rows(),
            &file.label,
        ),
        FormatSpec::Jsonl(_) => {
            crate::format::jsonl::infer_schema(&bytes, complete, format.infer_rows(), &file.label)
        }
        _ => Err(Error::internal("inference of a binary format")),
    }
}

async fn parquet_builder(
    store: &Arc<dyn ObjectStore>,
    file: &InputFile,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>> {
    let reader = ParquetObjectReader::new(store.clone(), Path::from(file.path.as_str()))
        .with_file_size(file.size);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| metadata_error(file, e))
}

/// Opens an input of the local file system, where object path `a/b` is the file `/a/b`.
fn open_local(file: &InputFile) -> Result<std::fs::File> {
    std::fs::File::open(format!("/{}", file.path))
        .map_err(|e| Error::io(format!("open {}", file.label), e))
}

fn metadata_error(file: &InputFile, e: parquet::errors::ParquetError) -> Error {
    Error::invalid_input(format!("{}: cannot read parquet metadata: {e}", file.label))
}

async fn ipc_footer(
    store: &Arc<dyn ObjectStore>,
    file: &InputFile,
) -> Result<(arrow_ipc::IpcFooter, u64)> {
    let path = Path::from(file.path.as_str());
    let mut want = file.size.min(64 << 10);
    loop {
        let tail = store
            .get_range(&path, file.size - want..file.size)
            .await
            .map_err(|e| store_error("read", &path, e))?;
        match arrow_ipc::parse_footer(&tail, &file.label)? {
            Ok(footer) => return Ok((footer, want)),
            Err(needed) if (needed as u64) <= file.size && needed as u64 > want => {
                want = needed as u64
            }
            Err(_) => {
                return Err(Error::invalid_input(format!(
                    "{} is not an Arrow IPC file",
                    file.label
                )));
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn plan(&self, parallelism: usize) -> Result<Vec<Partition>> {
        let mut parts: Vec<FilePartition> = Vec::new();
        let per_file = parallelism.div_ceil(self.files.len()).max(1);
        for file in &self.files {
            match self.splittable_text(file) {
                Some(quote) => parts.extend(self.split_text(file, quote, per_file).await?),
                None => parts.extend(self.split_file(file, per_file).await?),
            }
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let (description, size) = self.describe(&p);
                Partition::new(i, description, Some(size), &p)
            })
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        resume: Option<Checkpoint>,
        budget: &ByteBudget,
    ) -> Result<BatchStream> {
        let part: FilePartition = partition.decode()?;
        let (ahead, rx) = read_ahead(budget, 2);
        let ahead = Arc::new(ahead);
        let task = ReadTask {
            store: self.store.clone(),
            format: self.format.clone(),
            schema: self.schema.clone(),
            projection: self.projection.clone(),
            batch_rows: self.batch_rows,
            batch_bytes: self.batch_bytes,
            skip_bad_rows: self.skip_bad_rows,
            handle: Handle::current(),
            part,
            resume,
            ahead: ahead.clone(),
            read_block: self.read_block,
            local: self.local,
        };
        ferry_engine::task::spawn_blocking(move || {
            if let Err(e) = task.run() {
                ahead.blocking_fail(e);
            }
        });
        Ok(tokio_stream_from(rx))
    }

    fn connector(&self) -> &'static str {
        self.connector
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Result<SourceBatch>>) -> BatchStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Counts raw bytes read, for progress.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Relaxed);
        Ok(n)
    }
}

struct ReadTask {
    store: Arc<dyn ObjectStore>,
    format: FormatSpec,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    batch_rows: usize,
    batch_bytes: usize,
    skip_bad_rows: bool,
    handle: Handle,
    part: FilePartition,
    resume: Option<Checkpoint>,
    ahead: Arc<ReadAhead>,
    read_block: u64,
    /// The store is the local file system (object path `a/b` is the file `/a/b`).
    local: bool,
}

/// The end of a read: the consumer went away.
struct Closed;

impl ReadTask {
    /// Reads the partition. The format readers (arrow's IPC decoder above all) can panic on
    /// a damaged file instead of failing; such a panic fails the read with the file named.
    fn run(self) -> Result<()> {
        let label = self.part.file.label.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read())).unwrap_or_else(
            |panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no reason given");
                Err(Error::data(format!(
                    "{label} is damaged: its reader failed on it ({why}); write it again"
                )))
            },
        )
    }

    fn read(self) -> Result<()> {
        match &self.format {
            FormatSpec::Csv(_) | FormatSpec::Jsonl(_) => self.read_text(),
            FormatSpec::Parquet(_) => self.read_parquet(),
            FormatSpec::ArrowIpc(_) => self.read_ipc(),
            FormatSpec::Binary(_) => Err(crate::format::binary_only()),
        }
    }

    fn send(&self, batch: SourceBatch) -> std::result::Result<(), Closed> {
        if self.ahead.blocking_send(batch) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    /// Sends a batch of a binary format (no skipped rows, no line numbers).
    fn send_block(
        &self,
        batch: RecordBatch,
        records: u64,
        position: Option<u64>,
        input_bytes: u64,
    ) -> std::result::Result<(), Closed> {
        let checkpoint = Checkpoint {
            records,
            position,
            line: None,
        };
        self.send(SourceBatch {
            batch,
            checkpoint,
            skipped: vec![],
            input_bytes,
            charge: Charge::default(),
        })
    }

    /// Where a text read starts: `(from, end, records to skip, first line, header)`,
    /// from the partition's range or the checkpoint inside it.
    fn text_start(&self) -> (u64, u64, u64, u64, bool) {
        let file = &self.part.file;
        let (start, end, mut line, header) = match self.part.part {
            PartSpec::Range {
                start,
                end,
                line,
                header,
            } => (start, end, line, header),
            _ => (0, file.size, 1, true),
        };
        let seekable = matches!(self.part.part, PartSpec::Range { .. });
        let (from, skip_records, header) = match self.resume {
            Some(c) if seekable => {
                line = c.line.unwrap_or(line);
                (
                    c.position.unwrap_or(start),
                    0,
                    header && c.position.is_none_or(|p| p == start),
                )
            }
            Some(c) => (start, c.records, header),
            None => (start, 0, header),
        };
        (from, end, skip_records, line, header)
    }

    /// The decoder of a text read that starts at `line`, past the header or not.
    fn text_decoder(&self, label: &Arc<str>, line: u64, header: bool) -> Result<Text> {
        Ok(match &self.format {
            FormatSpec::Csv(c) => Text::Csv(Box::new(
                CsvDecoder::new(
                    self.schema.clone(),
                    c.dialect(),
                    Origin {
                        file: label.clone(),
                        first_line: line,
                        skip_header: header,
                    },
                    self.batch_rows,
                    self.skip_bad_rows,
                )
                .with_declared_schema(c.schema.is_some())
                .with_max_batch_bytes(self.batch_bytes),
            )),
            _ => Text::Jsonl(Box::new(
                JsonlDecoder::new(
                    self.schema.clone(),
                    self.batch_rows,
                    self.skip_bad_rows,
                    label.clone(),
                    line,
                )?
                .with_max_batch_bytes(self.batch_bytes),
            )),
        })
    }

    fn read_text(&self) -> Result<()> {
        let file = &self.part.file;
        let label: Arc<str> = file.label.as_str().into();
        let path = Path::from(file.path.as_str());
        let compression = self.format.compression_of(&file.label);
        let (from, end, skip_records, line, header) = self.text_start();
        let count = Arc::new(AtomicU64::new(0));
        // A local file is read straight into the decoder's buffer (the kernel reads ahead);
        // a store's ranged GETs go through a block fetched ahead of the one in use.
        let inner: Box<dyn Read + Send> = if self.local {
            let mut opened = open_local(file)?;
            opened
                .seek(SeekFrom::Start(from))
                .map_err(|e| Error::io(format!("read {label}"), e))?;
            Box::new(opened.take(end - from))
        } else {
            Box::new(StoreReader::sized(
                self.store.clone(),
                path,
                from..end,
                self.handle.clone(),
                self.read_block,
            ))
        };
        let raw = Counting {
            inner,
            count: count.clone(),
        };
        let mut reader = compression.reader(raw)?;
        let mut decoder = self.text_decoder(&label, line, header)?;
        let base_records = self.resume.map_or(0, |c| c.records);
        let mut state = Emit {
            sent_records: 0,
            skip_records,
            reported_bytes: 0,
            position: from,
            base_records,
        };
        let mut buf = vec![0u8; (self.read_block as usize).min(1 << 20)];
        let mut filled = 0usize;
        let mut eof = false;
        loop {
            if !eof && filled < buf.len() {
                let n = reader
                    .read(&mut buf[filled..])
                    .map_err(|e| Error::io(format!("read {label}"), e))?;
                eof = n == 0;
                filled += n;
            }
            let used = decoder.feed(&buf[..filled], eof)?;
            buf.copy_within(used..filled, 0);
            filled -= used;
            let at_end = eof && filled == 0;
            if (decoder.batch_full() || at_end)
                && let Some((batch, skipped)) = decoder.flush()?
            {
                let consumed = (compression == Compression::None)
                    .then(|| from + count.load(Relaxed) - filled as u64);
                let (records, line_now) = (decoder.records(), decoder.line());
                let read = count.load(Relaxed);
                if state
                    .emit(self, batch, skipped, records, consumed, line_now, read)
                    .is_err()
                {
                    return Ok(());
                }
            }
            if at_end {
                return Ok(());
            }
            if used == 0 && filled == buf.len() {
                // A single record larger than the buffer: grow it.
                buf.resize(buf.len() * 2, 0);
            }
        }
    }

    /// The reader of a Parquet partition: its row groups, projection, batch size and resume
    /// offset; returns it with the partition's row count.
    fn configure<T>(
        &self,
        builder: ArrowReaderBuilder<T>,
        first: usize,
        count: usize,
        offset: u64,
    ) -> (ArrowReaderBuilder<T>, u64) {
        let total_rows: u64 = builder.metadata().row_groups()[first..first + count]
            .iter()
            .map(|g| g.num_rows() as u64)
            .sum();
        let mask = match &self.projection {
            Some(indices) => {
                ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied())
            }
            None => ProjectionMask::all(),
        };
        let batch_rows =
            self.parquet_batch_rows(&builder.metadata().row_groups()[first..first + count]);
        let builder = builder
            .with_row_groups((first..first + count).collect())
            .with_projection(mask)
            .with_batch_size(batch_rows)
            .with_offset(offset as usize);
        (builder, total_rows)
    }

    /// Rows per Parquet batch: `batch_rows`, fewer where the widest of the row groups' rows
    /// (their uncompressed bytes per row, all columns, dictionaries not expanded) would make a
    /// batch pass `batch_bytes`.
    fn parquet_batch_rows(&self, groups: &[RowGroupMetaData]) -> usize {
        let widest = groups
            .iter()
            .filter(|g| g.num_rows() > 0)
            .map(|g| (g.total_byte_size().max(0) as u64).div_ceil(g.num_rows() as u64))
            .max()
            .unwrap_or(0);
        match (self.batch_bytes as u64).checked_div(widest) {
            Some(rows) => (rows.min(self.batch_rows as u64) as usize).max(1),
            None => self.batch_rows,
        }
    }

    fn read_parquet(&self) -> Result<()> {
        let file = &self.part.file;
        let PartSpec::Blocks { first, count } = self.part.part else {
            return Err(Error::internal("parquet partition without row groups"));
        };
        let offset = self.resume.map_or(0, |c| c.records);
        let invalid =
            |e: parquet::errors::ParquetError| Error::invalid_input(format!("{}: {e}", file.label));
        // A local file is read a page at a time (the synchronous reader pulls each page from
        // the file as it decodes); the asynchronous reader fetches a whole row group's column
        // chunks first, which holds a large row group in memory outside the budget.
        let (mut batches, total_rows): (Box<dyn Iterator<Item = _>>, u64) = if self.local {
            let opened = open_local(file)?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(opened)
                .map_err(|e| metadata_error(file, e))?;
            let (builder, total_rows) = self.configure(builder, first, count, offset);
            (Box::new(builder.build().map_err(invalid)?), total_rows)
        } else {
            let builder = self.handle.block_on(parquet_builder(&self.store, file))?;
            let (builder, total_rows) = self.configure(builder, first, count, offset);
            let mut stream = builder.build().map_err(invalid)?;
            let handle = self.handle.clone();
            let batches = std::iter::from_fn(move || {
                handle
                    .block_on(stream.next())
                    .map(|b| b.map_err(arrow::error::ArrowError::from))
            });
            (Box::new(batches), total_rows)
        };
        let mut records = offset;
        let share = file.size / (count.max(1) as u64);
        for batch in &mut batches {
            let batch = batch
                .map_err(|e| Error::data(format!("{}: {e}", file.label)).with_retryable(true))?;
            records += batch.num_rows() as u64;
            let input_bytes = (share * count as u64 * batch.num_rows() as u64)
                .checked_div(total_rows)
                .unwrap_or(0);
            if self.send_block(batch, records, None, input_bytes).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn read_ipc(&self) -> Result<()> {
        let file = &self.part.file;
        let path = Path::from(file.path.as_str());
        let PartSpec::Blocks { first, count } = self.part.part else {
            return Err(Error::internal("ipc partition without batches"));
        };
        let (footer, _) = self.handle.block_on(ipc_footer(&self.store, file))?;
        let mut decoder = arrow_ipc::decoder(&footer);
        let get = |range: std::ops::Range<u64>| {
            self.handle
                .block_on(self.store.get_range(&path, range))
                .map_err(|e| store_error("read", &path, e))
        };
        for block in &footer.dictionaries {
            arrow_ipc::read_dictionary(
                &mut decoder,
                block,
                get(arrow_ipc::block_range(block))?,
                &file.label,
            )?;
        }
        let start = self
            .resume
            .and_then(|c| c.position)
            .map_or(first, |p| p as usize);
        let mut records = self.resume.map_or(0, |c| c.records);
        for index in start..first + count {
            let block = &footer.batches[index];
            let range = arrow_ipc::block_range(block);
            let input_bytes = range.end - range.start;
            let Some(batch) = arrow_ipc::read_batch(&decoder, block, get(range)?, &file.label)?
            else {
                continue;
            };
            records += batch.num_rows() as u64;
            if self
                .send_block(batch, records, Some(index as u64 + 1), input_bytes)
                .is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

enum Text {
    Csv(Box<CsvDecoder>),
    Jsonl(Box<JsonlDecoder>),
}

impl Text {
    /// Decodes from `buf`; returns the bytes used. JSON lines are fed complete lines only;
    /// at the end (`eof`) the last line may lack its newline.
    fn feed(&mut self, buf: &[u8], eof: bool) -> Result<usize> {
        match self {
            Text::Csv(d) => {
                let used = d.decode(buf)?;
                if eof && used == buf.len() {
                    d.decode(&[])?;
                }
                Ok(used)
            }
            Text::Jsonl(d) => {
                let complete = if eof {
                    buf.len()
                } else {
                    memchr::memrchr(b'\n', buf).map_or(0, |i| i + 1)
                };
                Ok(d.feed_lines(&buf[..complete]))
            }
        }
    }

    fn batch_full(&self) -> bool {
        match self {
            Text::Csv(d) => d.batch_full(),
            Text::Jsonl(d) => d.batch_full(),
        }
    }

    fn flush(&mut self) -> Result<Option<(RecordBatch, Vec<SkippedRow>)>> {
        match self {
            Text::Csv(d) => d.flush(),
            Text::Jsonl(d) => d.flush(),
        }
    }

    fn records(&self) -> u64 {
        match self {
            Text::Csv(d) => d.records(),
            Text::Jsonl(d) => d.records(),
        }
    }

    fn line(&self) -> Option<u64> {
        match self {
            Text::Csv(d) => Some(d.line()),
            Text::Jsonl(d) => Some(d.line()),
        }
    }
}

/// Bookkeeping of what a text partition has handed on.
struct Emit {
    /// Records handed on (or skipped) since this read started.
    sent_records: u64,
    /// Records to drop at the start (resume of a compressed file).
    skip_records: u64,
    reported_bytes: u64,
    position: u64,
    base_records: u64,
}

impl Emit {
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        task: &ReadTask,
        mut batch: RecordBatch,
        mut skipped: Vec<SkippedRow>,
        records: u64,
        position: Option<u64>,
        line: Option<u64>,
        raw_bytes: u64,
    ) -> std::result::Result<(), Closed> {
        let new_records = records - self.sent_records;
        self.sent_records = records;
        if self.skip_records > 0 {
            // Resuming a compressed file: drop what was delivered before the failure.
            let drop = self.skip_records.min(new_records);
            self.skip_records -= drop;
            let rows_to_drop = (drop as usize).min(batch.num_rows());
            batch = batch.slice(rows_to_drop, batch.num_rows() - rows_to_drop);
            skipped.clear();
            if batch.num_rows() == 0 {
                return Ok(());
            }
        }
        if let Some(p) = position {
            self.position = p;
        }
        let input_bytes = raw_bytes - self.reported_bytes;
        self.reported_bytes = raw_bytes;
        let checkpoint = Checkpoint {
            records: self.base_records + records,
            position: position.map(|_| self.position),
            line,
        };
        task.send(SourceBatch {
            batch,
            checkpoint,
            skipped,
            input_bytes,
            charge: Charge::default(),
        })
    }
}
