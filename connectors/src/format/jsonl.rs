//! JSON lines: one JSON object per line, decoded by arrow-json.
//!
//! Only complete lines are fed to the decoder, and the lines of the current batch are kept,
//! so that when a batch fails to decode the bad line can be found, named by its line number,
//! and either fail the job or be skipped while the good lines of the batch are kept.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::json::reader::{Decoder, ReaderBuilder};
use arrow::json::writer::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ferry_engine::{Encoder, Error, Result, SkippedRow};

/// Decodes JSON lines into batches, with line numbers for every failure.
pub struct JsonlDecoder {
    schema: SchemaRef,
    decoder: Decoder,
    batch_rows: usize,
    /// Bytes of pending lines after which the batch is full, below `batch_rows`.
    max_batch_bytes: usize,
    skip_bad_rows: bool,
    file: Arc<str>,
    /// Complete lines fed since the last flush.
    pending: Vec<u8>,
    /// Line number of the first line of `pending`.
    pending_line: u64,
    /// Lines fed since the last flush (blank ones included).
    pending_lines: u64,
    rows: usize,
    records: u64,
}

impl JsonlDecoder {
    /// A decoder whose first line is `first_line` of `file`.
    pub fn new(
        schema: SchemaRef,
        batch_rows: usize,
        skip_bad_rows: bool,
        file: Arc<str>,
        first_line: u64,
    ) -> Result<Self> {
        Ok(Self {
            decoder: Self::decoder(&schema, batch_rows)?,
            schema,
            batch_rows: batch_rows.max(1),
            max_batch_bytes: usize::MAX,
            skip_bad_rows,
            file,
            pending: Vec::new(),
            pending_line: first_line,
            pending_lines: 0,
            rows: 0,
            records: 0,
        })
    }

    /// Ends batches once their lines hold `bytes` of text, even before `batch_rows` (at least
    /// one line a batch).
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.max(1);
        self
    }

    fn decoder(schema: &SchemaRef, batch_rows: usize) -> Result<Decoder> {
        Ok(ReaderBuilder::new(schema.clone())
            .with_batch_size(batch_rows.max(1))
            .with_strict_mode(false)
            .build_decoder()?)
    }

    /// Records consumed so far (skipped ones included).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The line number of the next line after the last flush.
    pub fn line(&self) -> u64 {
        self.pending_line
    }

    /// Whether a full batch is buffered.
    pub fn batch_full(&self) -> bool {
        self.rows >= self.batch_rows
            || (self.rows > 0 && self.pending.len() >= self.max_batch_bytes)
    }

    /// Feeds complete lines (the input must end with a newline, or be the end of the data).
    /// Returns how many bytes were used; the rest waits for the next batch.
    pub fn feed_lines(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        for line in input.split_inclusive(|b| *b == b'\n') {
            if self.batch_full() {
                break;
            }
            used += line.len();
            self.pending.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                self.pending.push(b'\n');
            }
            self.pending_lines += 1;
            if !line.trim_ascii().is_empty() {
                self.rows += 1;
                self.records += 1;
            }
        }
        used
    }

    /// Decodes the pending lines into a batch; a bad line fails the job or is skipped.
    pub fn flush(&mut self) -> Result<Option<(RecordBatch, Vec<SkippedRow>)>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.pending);
        let first_line = self.pending_line;
        self.pending_line += self.pending_lines;
        self.pending_lines = 0;
        self.rows = 0;
        match self.decode_all(&pending) {
            Ok(batch) => Ok(batch.map(|b| (b, vec![]))),
            Err(_) => {
                self.decoder = Self::decoder(&self.schema, self.batch_rows)?;
                self.decode_line_by_line(&pending, first_line).map(Some)
            }
        }
    }

    fn decode_all(&mut self, bytes: &[u8]) -> Result<Option<RecordBatch>> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.decoder.decode(rest)?;
            if n == 0 {
                break;
            }
            rest = &rest[n..];
        }
        Ok(self.decoder.flush()?)
    }

    fn decode_line_by_line(
        &mut self,
        bytes: &[u8],
        first_line: u64,
    ) -> Result<(RecordBatch, Vec<SkippedRow>)> {
        let mut good = Vec::new();
        let mut skipped = Vec::new();
        for (i, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            let mut one = Self::decoder(&self.schema, 1)?;
            let result = one
                .decode(line)
                .map_err(Error::from)
                .and_then(|_| one.flush().map_err(Error::from));
            match result {
                Ok(Some(batch)) => good.push(batch),
                Ok(None) => {}
                Err(e) => {
                    let location = format!("{}:{}", self.file, first_line + i as u64);
                    if !self.skip_bad_rows {
                        return Err(Error::data(format!(
                            "{location}: {e}; fix the line, declare the schema in format.schema, or set fault_tolerance.skip_incompatible_rows to skip such rows"
                        )));
                    }
                    skipped.push(SkippedRow {
                        location,
                        reason: e.to_string(),
                    });
                }
            }
        }
        let batch = arrow::compute::concat_batches(&self.schema, &good)?;
        Ok((batch, skipped))
    }
}

/// Infers a schema from the first lines of a sample.
pub fn infer_schema(
    sample: &[u8],
    complete: bool,
    max_records: usize,
    file: &str,
) -> Result<SchemaRef> {
    let end = if complete {
        sample.len()
    } else {
        memchr::memrchr(b'\n', sample).map_or(0, |i| i + 1)
    };
    let lines = sample[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty());
    let mut values = Vec::new();
    for (i, line) in lines.take(max_records).enumerate() {
        let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
            Error::invalid_input(format!(
                "{file}: line {} is not JSON ({e}); give format.schema or fix the file",
                i + 1
            ))
        })?;
        values.push(Ok(value));
    }
    if values.is_empty() {
        return Err(Error::invalid_input(format!(
            "{file}: no lines to infer a schema from; the file is empty, or give format.schema"
        )));
    }
    let schema = arrow::json::reader::infer_json_schema_from_iterator(values.into_iter())?;
    Ok(Arc::new(schema))
}

/// Encodes batches as JSON lines.
#[derive(Default)]
pub struct JsonlEncoder;

impl Encoder for JsonlEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        let mut writer = LineDelimitedWriter::new(Vec::new());
        writer.write(batch)?;
        writer.finish()?;
        Ok(Some(Bytes::from(writer.into_inner())))
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn a_null_where_the_schema_allows_none_is_a_bad_line() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, true),
        ]));
        let text = b"{\"a\":1,\"b\":\"x\"}\n{\"a\":null,\"b\":\"y\"}\n{\"b\":\"z\"}\n{\"a\":4}\n";
        let mut d = JsonlDecoder::new(schema.clone(), 100, false, "t.jsonl".into(), 1).unwrap();
        d.feed_lines(text);
        let err = d.flush().unwrap_err().to_string();
        assert!(err.starts_with("t.jsonl:2: "), "{err}");

        let mut d = JsonlDecoder::new(schema, 100, true, "t.jsonl".into(), 1).unwrap();
        d.feed_lines(text);
        let (batch, skipped) = d.flush().unwrap().unwrap();
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 4]
        );
        let lines: Vec<&str> = skipped.iter().map(|s| s.location.as_str()).collect();
        assert_eq!(lines, ["t.jsonl:2", "t.jsonl:3"]);
    }

    #[test]
    fn bad_line_is_named_or_skipped() {
        let text = b"{\"a\":1,\"b\":\"x\"}\n\n{\"a\":\"oops\"}\n{\"a\":3}\n";
        let mut d = JsonlDecoder::new(schema(), 100, false, "t.jsonl".into(), 1).unwrap();
        assert_eq!(d.feed_lines(text), text.len());
        let err = d.flush().unwrap_err().to_string();
        assert!(err.starts_with("t.jsonl:3: "), "{err}");

        let mut d = JsonlDecoder::new(schema(), 100, true, "t.jsonl".into(), 1).unwrap();
        d.feed_lines(text);
        let (batch, skipped) = d.flush().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[1, 3]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].location, "t.jsonl:3");
        assert_eq!(d.records(), 3);
    }

    #[test]
    fn batches_end_at_their_byte_limit_before_their_row_limit() {
        // Lines of 20-40 bytes, a limit of 100 bytes: each batch ends with the first line that
        // brings it to 100 bytes or more.
        let lines: Vec<String> = (0..50)
            .map(|i| format!("{{\"a\":{i},\"b\":\"{}\"}}\n", "x".repeat(i % 20)))
            .collect();
        let text = lines.concat();
        let mut d = JsonlDecoder::new(schema(), 1000, false, "t.jsonl".into(), 1)
            .unwrap()
            .with_max_batch_bytes(100);
        let mut rest = text.as_bytes();
        let mut sizes = Vec::new();
        while !rest.is_empty() {
            rest = &rest[d.feed_lines(rest)..];
            if let Some((batch, _)) = d.flush().unwrap() {
                sizes.push(batch.num_rows());
            }
        }
        let mut expected = vec![0usize];
        let mut bytes = 0;
        for (i, line) in lines.iter().enumerate() {
            *expected.last_mut().unwrap() += 1;
            bytes += line.len();
            if bytes >= 100 && i + 1 < lines.len() {
                expected.push(0);
                bytes = 0;
            }
        }
        assert_eq!(sizes, expected);
        assert_eq!(sizes.iter().sum::<usize>(), 50);
    }

    #[test]
    fn infers_from_lines() {
        let s = infer_schema(
            b"{\"a\":1,\"b\":\"x\"}\n{\"a\":2.5}\n{\"a\":",
            false,
            10,
            "t",
        )
        .unwrap();
        assert_eq!(
            s.field_with_name("a").unwrap().data_type(),
            &DataType::Float64
        );
        assert_eq!(s.field_with_name("b").unwrap().data_type(), &DataType::Utf8);
    }
}
