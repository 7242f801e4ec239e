//! File formats, written over `ObjectStore` so that every store with files reuses them:
//! CSV, JSON lines, Parquet and Arrow IPC, with gzip and zstd for the text formats.

pub mod arrow_ipc;
pub mod csv;
pub mod interval;
pub mod io;
pub mod jsonl;
pub mod parquet;
pub mod schema;

use std::io::Read;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use ferry_engine::{Encoder, Error, Result};
use serde::{Deserialize, Serialize};

use self::csv::{CsvDialect, CsvEncoder, DEFAULT_INFER_ROWS};
use self::parquet::{DEFAULT_ROW_GROUP_ROWS, ParquetCodec, ParquetEncoder, writer_properties};
use self::schema::ColumnSpec;

/// A file format, selected by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FormatSpec {
    /// Delimited text.
    Csv(CsvFormat),
    /// One JSON object per line.
    Jsonl(JsonlFormat),
    /// Apache Parquet.
    Parquet(ParquetFormat),
    /// Arrow IPC file format (Feather v2).
    ArrowIpc(ArrowIpcFormat),
    /// Files copied byte for byte, not parsed (source and sink both `binary`).
    Binary(BinaryFormat),
}

/// How a binary copy names its outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hierarchy {
    /// Keep each file's path relative to the source path (default).
    #[default]
    Preserve,
    /// Put every file directly under the sink path (names must not collide).
    Flatten,
}

/// Binary copy options.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryFormat {
    /// On the sink: keep the folder hierarchy (default) or flatten it.
    #[serde(default)]
    pub hierarchy: Hierarchy,
    /// On the sink: read every copy back and compare its MD5 with the source's (default false).
    #[serde(default)]
    pub verify_md5: bool,
    /// On the sink: copy files even when the destination already has them (same size);
    /// default false, which makes a re-run resume where a failed run stopped.
    #[serde(default)]
    pub overwrite: bool,
}

/// Compression of a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Plain text.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Compression {
    /// The compression a file name implies.
    pub fn from_name(name: &str) -> Self {
        if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The file name suffix it adds.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// Wraps a reader in the decompressor.
    pub fn reader<'a>(self, inner: impl Read + Send + 'a) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(inner)
                    .map_err(|e| Error::io("start zstd decoder", e))?,
            ),
        })
    }
}

/// CSV options.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvFormat {
    /// Whether the first line holds column names (default true).
    #[serde(default)]
    pub header: Option<bool>,
    /// Field separator (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Quote character (default `"`).
    #[serde(default)]
    pub quote: Option<char>,
    /// Escape character inside quotes (default none: quotes are doubled).
    #[serde(default)]
    pub escape: Option<char>,
    /// Text of NULL when unquoted (default empty: an unquoted empty field is NULL, `""` is
    /// the empty string).
    #[serde(default)]
    pub null_value: Option<String>,
    /// Compression (default from the file name: `.gz`, `.zst`).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Explicit schema; inferred from the first records of the first file when absent.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// Records read to infer the schema (default 1000).
    #[serde(default)]
    pub infer_rows: Option<usize>,
}

impl CsvFormat {
    /// The dialect.
    pub fn dialect(&self) -> CsvDialect {
        let d = CsvDialect::default();
        CsvDialect {
            header: self.header.unwrap_or(d.header),
            delimiter: self.delimiter.unwrap_or(d.delimiter),
            quote: self.quote.unwrap_or(d.quote),
            escape: self.escape,
            null_value: self.null_value.clone().unwrap_or(d.null_value),
        }
    }
}

/// JSON lines options.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlFormat {
    /// Compression (default from the file name).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Explicit schema; inferred from the first lines when absent.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// Lines read to infer the schema (default 1000).
    #[serde(default)]
    pub infer_rows: Option<usize>,
}

/// Parquet options.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetFormat {
    /// Page compression when writing (default snappy).
    #[serde(default)]
    pub compression: ParquetCodec,
    /// Rows per row group when writing (default 1Mi). Row groups end early when the
    /// encoder's share of `max_buffer_bytes` is full.
    #[serde(default)]
    pub row_group_rows: Option<usize>,
    /// Columns to read (projection); all when absent.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

/// Arrow IPC options (none yet).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArrowIpcFormat {}

impl FormatSpec {
    /// Checks the options without I/O.
    pub fn validate(&self) -> Result<()> {
        match self {
            FormatSpec::Csv(c) => {
                c.dialect().validate()?;
                if let Some(cols) = &c.schema {
                    schema::to_schema(cols)?;
                }
            }
            FormatSpec::Jsonl(j) => {
                if let Some(cols) = &j.schema {
                    schema::to_schema(cols)?;
                }
            }
            FormatSpec::Parquet(p) => {
                if p.row_group_rows == Some(0) {
                    return Err(Error::config("parquet `row_group_rows` must be at least 1"));
                }
            }
            FormatSpec::ArrowIpc(_) | FormatSpec::Binary(_) => {}
        }
        Ok(())
    }

    /// The format's name.
    pub fn name(&self) -> &'static str {
        match self {
            FormatSpec::Csv(_) => "csv",
            FormatSpec::Jsonl(_) => "jsonl",
            FormatSpec::Parquet(_) => "parquet",
            FormatSpec::ArrowIpc(_) => "arrow_ipc",
            FormatSpec::Binary(_) => "binary",
        }
    }

    /// The file extension of outputs, compression suffix included.
    pub fn extension(&self) -> String {
        match self {
            FormatSpec::Csv(c) => {
                format!("csv{}", c.compression.unwrap_or(Compression::None).suffix())
            }
            FormatSpec::Jsonl(j) => format!(
                "jsonl{}",
                j.compression.unwrap_or(Compression::None).suffix()
            ),
            FormatSpec::Parquet(_) => "parquet".into(),
            FormatSpec::ArrowIpc(_) => "arrow".into(),
            FormatSpec::Binary(_) => "bin".into(),
        }
    }

    /// The explicit schema, if given.
    pub fn explicit_schema(&self) -> Result<Option<SchemaRef>> {
        match self {
            FormatSpec::Csv(CsvFormat {
                schema: Some(cols), ..
            })
            | FormatSpec::Jsonl(JsonlFormat {
                schema: Some(cols), ..
            }) => Ok(Some(schema::to_schema(cols)?)),
            _ => Ok(None),
        }
    }

    /// Records to read for inference.
    pub fn infer_rows(&self) -> usize {
        match self {
            FormatSpec::Csv(c) => c.infer_rows,
            FormatSpec::Jsonl(j) => j.infer_rows,
            _ => None,
        }
        .unwrap_or(DEFAULT_INFER_ROWS)
        .max(1)
    }

    /// The compression of a text file named `name`.
    pub fn compression_of(&self, name: &str) -> Compression {
        let explicit = match self {
            FormatSpec::Csv(c) => c.compression,
            FormatSpec::Jsonl(j) => j.compression,
            _ => Some(Compression::None),
        };
        explicit.unwrap_or_else(|| Compression::from_name(name))
    }

    /// The format for writing a file named `name`: text formats without an explicit
    /// `compression` take it from the name (`.gz`, `.zst`), as reading does, so what ferry
    /// writes it reads back.
    pub fn for_output_name(&self, name: &str) -> FormatSpec {
        let mut format = self.clone();
        match &mut format {
            FormatSpec::Csv(c) if c.compression.is_none() => {
                c.compression = Some(Compression::from_name(name));
            }
            FormatSpec::Jsonl(j) if j.compression.is_none() => {
                j.compression = Some(Compression::from_name(name));
            }
            _ => {}
        }
        format
    }

    /// A new encoder for one output file.
    pub fn encoder(&self, schema: &SchemaRef) -> Result<Box<dyn Encoder>> {
        let (inner, compression): (Box<dyn Encoder>, Compression) = match self {
            FormatSpec::Csv(c) => (
                Box::new(CsvEncoder::new(schema, c.dialect())),
                c.compression.unwrap_or(Compression::None),
            ),
            FormatSpec::Jsonl(j) => (
                Box::new(jsonl::JsonlEncoder),
                j.compression.unwrap_or(Compression::None),
            ),
            FormatSpec::Parquet(p) => (
                Box::new(ParquetEncoder::new(
                    schema,
                    writer_properties(
                        p.compression,
                        p.row_group_rows.unwrap_or(DEFAULT_ROW_GROUP_ROWS),
                    )?,
                )?),
                Compression::None,
            ),
            FormatSpec::ArrowIpc(_) => (
                Box::new(arrow_ipc::ArrowIpcEncoder::new(schema)?),
                Compression::None,
            ),
            FormatSpec::Binary(_) => return Err(binary_only()),
        };
        Ok(match compression {
            Compression::None => inner,
            c => Box::new(CompressingEncoder::new(inner, c)?),
        })
    }
}

/// The error for a binary format on one side only.
pub fn binary_only() -> Error {
    Error::config(
        "the binary format copies files as they are: give `binary` as the format of both the source and the sink",
    )
}

enum Compressor {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Compresses the output of a text encoder as a stream.
pub struct CompressingEncoder {
    inner: Box<dyn Encoder>,
    compressor: Option<Compressor>,
}

impl CompressingEncoder {
    fn new(inner: Box<dyn Encoder>, compression: Compression) -> Result<Self> {
        let compressor = match compression {
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::default(),
            )),
            Compression::Zstd => Compressor::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), 3)
                    .map_err(|e| Error::io("start zstd encoder", e))?,
            ),
            Compression::None => {
                return Err(Error::internal("compressing encoder without compression"));
            }
        };
        Ok(Self {
            inner,
            compressor: Some(compressor),
        })
    }

    fn push(&mut self, bytes: Option<Bytes>) -> Result<Option<Bytes>> {
        use std::io::Write;
        let Some(c) = self.compressor.as_mut() else {
            return Err(Error::internal("compressing encoder used after finish"));
        };
        let buf = match c {
            Compressor::Gzip(g) => {
                if let Some(b) = bytes {
                    g.write_all(&b).map_err(|e| Error::io("gzip", e))?;
                }
                std::mem::take(g.get_mut())
            }
            Compressor::Zstd(z) => {
                if let Some(b) = bytes {
                    z.write_all(&b).map_err(|e| Error::io("zstd", e))?;
                }
                std::mem::take(z.get_mut())
            }
        };
        Ok((!buf.is_empty()).then(|| Bytes::from(buf)))
    }
}

impl Encoder for CompressingEncoder {
    fn encode(&mut self, batch: &arrow::record_batch::RecordBatch) -> Result<Option<Bytes>> {
        let out = self.inner.encode(batch)?;
        self.push(out)
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        let last = self.inner.finish()?;
        let mut out = self.push(last)?.map(|b| b.to_vec()).unwrap_or_default();
        match self.compressor.take() {
            Some(Compressor::Gzip(g)) => out.extend(g.finish().map_err(|e| Error::io("gzip", e))?),
            Some(Compressor::Zstd(z)) => out.extend(z.finish().map_err(|e| Error::io("zstd", e))?),
            None => {}
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }

    fn buffered_bytes(&self) -> usize {
        self.inner.buffered_bytes()
    }

    fn buffered_rows(&self) -> u64 {
        self.inner.buffered_rows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_strictly() {
        let f: FormatSpec =
            serde_json::from_str(r#"{"type":"csv","delimiter":";","header":false}"#).unwrap();
        assert_eq!(f.extension(), "csv");
        // Writing takes the compression from the name, as reading does.
        for (name, suffix) in [
            ("o.csv.gz", "csv.gz"),
            ("o.csv.zst", "csv.zst"),
            ("o.csv", "csv"),
        ] {
            assert_eq!(f.for_output_name(name).extension(), suffix, "{name}");
            assert_eq!(
                f.for_output_name(name).compression_of(name),
                f.compression_of(name),
                "{name}"
            );
        }
        assert!(!matches!(&f, FormatSpec::Csv(c) if c.dialect().header));
        let err =
            serde_json::from_str::<FormatSpec>(r#"{"type":"csv","delimeter":";"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `delimeter`"),
            "{err}"
        );
        let err = serde_json::from_str::<FormatSpec>(r#"{"type":"xlsx"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown variant `xlsx`"), "{err}");
        let p: FormatSpec =
            serde_json::from_str(r#"{"type":"parquet","compression":"zstd"}"#).unwrap();
        assert_eq!(p.extension(), "parquet");
        assert_eq!(Compression::from_name("a.csv.gz"), Compression::Gzip);
    }
}
