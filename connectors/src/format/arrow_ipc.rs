//! Arrow IPC files: written with arrow's `FileWriter`, read block by block with `FileDecoder`
//! over ranged reads, so a large file is never loaded whole and splits by record batches.

use std::sync::Arc;

use arrow::buffer::Buffer;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::{FileDecoder, read_footer_length};
use arrow::ipc::writer::FileWriter;
use arrow::ipc::{Block, MetadataVersion, convert::try_fb_to_schema, root_as_footer};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ferry_engine::{Encoder, Error, Result};

/// The parsed footer of an IPC file.
pub struct IpcFooter {
    /// The file's schema.
    pub schema: SchemaRef,
    /// Metadata version.
    pub version: MetadataVersion,
    /// Dictionary blocks.
    pub dictionaries: Vec<Block>,
    /// Record batch blocks.
    pub batches: Vec<Block>,
}

/// Parses the footer from the file's tail; `tail_offset` is where `tail` starts in the file.
/// Returns `Err(needed)` with the number of tail bytes needed when `tail` is too short.
pub fn parse_footer(tail: &[u8], file: &str) -> Result<std::result::Result<IpcFooter, usize>> {
    let bad =
        |what: &str| Error::invalid_input(format!("{file} is not an Arrow IPC file ({what})"));
    if tail.len() < 10 {
        return Err(bad("too short"));
    }
    let trailer: [u8; 10] = tail[tail.len() - 10..]
        .try_into()
        .map_err(|_| bad("no trailer"))?;
    let footer_len = read_footer_length(trailer).map_err(|e| bad(&e.to_string()))?;
    if tail.len() < footer_len + 10 {
        return Ok(Err(footer_len + 10));
    }
    let footer_bytes = &tail[tail.len() - 10 - footer_len..tail.len() - 10];
    let footer = root_as_footer(footer_bytes).map_err(|e| bad(&e.to_string()))?;
    let schema = footer.schema().ok_or_else(|| bad("no schema"))?;
    Ok(Ok(IpcFooter {
        schema: Arc::new(try_fb_to_schema(schema).map_err(|e| bad(&e.to_string()))?),
        version: footer.version(),
        dictionaries: footer
            .dictionaries()
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default(),
        batches: footer
            .recordBatches()
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default(),
    }))
}

/// The byte range of a block.
pub fn block_range(block: &Block) -> std::ops::Range<u64> {
    let start = block.offset() as u64;
    start..start + block.metaDataLength() as u64 + block.bodyLength() as u64
}

/// A decoder for the blocks of one file.
pub fn decoder(footer: &IpcFooter) -> FileDecoder {
    FileDecoder::new(footer.schema.clone(), footer.version)
}

/// Reads a dictionary block of `file`.
pub fn read_dictionary(
    decoder: &mut FileDecoder,
    block: &Block,
    bytes: Bytes,
    file: &str,
) -> Result<()> {
    decoder
        .read_dictionary(block, &Buffer::from(bytes))
        .map_err(|e| damaged(file, e))
}

/// Reads a record batch block of `file`.
pub fn read_batch(
    decoder: &FileDecoder,
    block: &Block,
    bytes: Bytes,
    file: &str,
) -> Result<Option<RecordBatch>> {
    decoder
        .read_record_batch(block, &Buffer::from(bytes))
        .map_err(|e| damaged(file, e))
}

/// A block of `file` that does not decode: the file is damaged (not retried).
fn damaged(file: &str, e: arrow::error::ArrowError) -> Error {
    Error::data(format!(
        "{file} is damaged or not an Arrow IPC file: {e}; write it again"
    ))
}

/// Encodes batches into one Arrow IPC file.
pub struct ArrowIpcEncoder {
    writer: Option<FileWriter<Vec<u8>>>,
}

impl ArrowIpcEncoder {
    /// An encoder for `schema`.
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            writer: Some(FileWriter::try_new(Vec::new(), schema)?),
        })
    }

    fn take(&mut self) -> Option<Bytes> {
        let buf = std::mem::take(self.writer.as_mut()?.get_mut());
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

impl Encoder for ArrowIpcEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::internal("ipc encoder used after finish"))?
            .write(batch)?;
        Ok(self.take())
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        if let Some(w) = self.writer.as_mut() {
            w.finish()?;
        }
        let out = self.take();
        self.writer = None;
        Ok(out)
    }
}
