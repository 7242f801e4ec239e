//! Parquet: an encoder that streams row groups out as they fill, and the writer settings.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ferry_engine::{Encoder, Error, Result};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as ParquetCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

/// Default rows per row group.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Compression codec of Parquet pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCodec {
    /// Snappy: fast, the common default.
    #[default]
    Snappy,
    /// Zstandard: smaller files, a little slower.
    Zstd,
    /// Gzip: for readers that know nothing else.
    Gzip,
    /// No compression.
    None,
}

/// Writer settings.
pub fn writer_properties(codec: ParquetCodec, row_group_rows: usize) -> Result<WriterProperties> {
    let compression = match codec {
        ParquetCodec::Snappy => ParquetCompression::SNAPPY,
        ParquetCodec::Zstd => ParquetCompression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| Error::internal(e.to_string()))?,
        ),
        ParquetCodec::Gzip => ParquetCompression::GZIP(GzipLevel::default()),
        ParquetCodec::None => ParquetCompression::UNCOMPRESSED,
    };
    Ok(WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_created_by(format!("ferry {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// Encodes batches into one Parquet file; bytes leave the encoder as row groups complete.
pub struct ParquetEncoder {
    writer: Option<ArrowWriter<Vec<u8>>>,
}

impl ParquetEncoder {
    /// An encoder for `schema`.
    pub fn new(schema: &SchemaRef, props: WriterProperties) -> Result<Self> {
        let writer =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props)).map_err(|e| {
                Error::invalid_input(format!("cannot write this schema as parquet: {e}"))
            })?;
        Ok(Self {
            writer: Some(writer),
        })
    }

    fn take(&mut self) -> Option<Bytes> {
        let buf = std::mem::take(self.writer.as_mut()?.inner_mut());
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }

    fn writer(&mut self) -> Result<&mut ArrowWriter<Vec<u8>>> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::internal("parquet encoder used after finish"))
    }
}

fn parquet_error(e: parquet::errors::ParquetError) -> Error {
    Error::data(format!("parquet encoding failed: {e}"))
}

impl Encoder for ParquetEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        self.writer()?.write(batch).map_err(parquet_error)?;
        Ok(self.take())
    }

    fn flush(&mut self) -> Result<Option<Bytes>> {
        self.writer()?.flush().map_err(parquet_error)?;
        Ok(self.take())
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        self.writer()?.finish().map_err(parquet_error)?;
        let out = self.take();
        self.writer = None;
        Ok(out)
    }

    fn buffered_bytes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.memory_size())
    }

    fn buffered_rows(&self) -> u64 {
        self.writer
            .as_ref()
            .map_or(0, |w| w.in_progress_rows() as u64)
    }
}
