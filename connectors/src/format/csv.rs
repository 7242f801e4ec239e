//! CSV: a streaming decoder into Arrow, schema inference, record-boundary splitting, and an
//! encoder.
//!
//! Fields that need no unescaping (unquoted, or quoted without a quote or escape inside) are
//! found by one scan of each read block, eight bytes at a time, and copied in runs; csv-core's
//! state machine reads the others. This module adds what arrow's own CSV reader cannot do:
//! PostgreSQL's null convention (an unquoted empty field is NULL, a quoted empty field is the
//! empty string), exact file line numbers for every record (quoted newlines and CRLF
//! included), and rows that fail to convert either failing the job with file, line, column and
//! value, or being skipped and reported one by one.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanBuilder, PrimitiveBuilder, StringBuilder};
use arrow::compute::filter;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, Field, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
    validate_decimal_precision_and_scale,
};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use arrow_cast_parse::Parser;
use bytes::Bytes;
use csv_core::{ReadFieldResult, Reader, ReaderBuilder};
use ferry_engine::{Encoder, Error, Result, SkippedRow};
use serde::{Deserialize, Serialize};

use arrow::array::cast::AsArray;
use arrow::util::display::{ArrayFormatter, FormatOptions};

mod arrow_cast_parse {
    pub use arrow::compute::kernels::cast_utils::Parser;
}

/// Default number of records read to infer a schema.
pub const DEFAULT_INFER_ROWS: usize = 1000;

/// How CSV text is written: the dialect shared by reading and writing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsvDialect {
    /// Whether the first record holds the column names.
    pub header: bool,
    /// Field separator, one ASCII character.
    pub delimiter: char,
    /// Quote character, one ASCII character.
    pub quote: char,
    /// Escape character inside quoted fields (for example `\`); `null` means quotes are
    /// escaped by doubling them, as in RFC 4180.
    pub escape: Option<char>,
    /// The text of a NULL. Only an *unquoted* field equal to it is NULL: by default an
    /// unquoted empty field is NULL and a quoted empty field (`""`) is the empty string, as in
    /// PostgreSQL.
    pub null_value: String,
}

impl Default for CsvDialect {
    fn default() -> Self {
        Self {
            header: true,
            delimiter: ',',
            quote: '"',
            escape: None,
            null_value: String::new(),
        }
    }
}

impl CsvDialect {
    /// Checks the dialect without I/O.
    pub fn validate(&self) -> Result<()> {
        for (name, c) in [
            ("delimiter", Some(self.delimiter)),
            ("quote", Some(self.quote)),
            ("escape", self.escape),
        ] {
            if let Some(c) = c
                && (!c.is_ascii() || c == '\n' || c == '\r')
            {
                return Err(Error::config(format!(
                    "csv `{name}` must be one ASCII character other than a line break, not {c:?}"
                )));
            }
        }
        if self.delimiter == self.quote {
            return Err(Error::config("csv `delimiter` and `quote` must differ"));
        }
        Ok(())
    }

    fn reader(&self) -> Reader {
        ReaderBuilder::new()
            .delimiter(self.delimiter as u8)
            .quote(self.quote as u8)
            .escape(self.escape.map(|c| c as u8))
            .double_quote(self.escape.is_none())
            .build()
    }

    /// Whether a file can be split at record boundaries by counting quotes: true unless an
    /// escape character makes quote parity meaningless.
    pub fn splittable(&self) -> bool {
        self.escape.is_none()
    }
}

/// Positions of the delimiter, LF and CR bytes in a slice, found eight bytes at a time (short
/// fields make a search call per field cost more than the search).
struct Terminators<'a> {
    input: &'a [u8],
    delimiter: u64,
    /// Start of the word in `mask`.
    word: usize,
    /// One high bit per terminator byte of that word.
    mask: u64,
}

impl<'a> Terminators<'a> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    fn new(input: &'a [u8], delimiter: u8) -> Self {
        let mut terminators = Self {
            input,
            delimiter: Self::ONES * u64::from(delimiter),
            word: 0,
            mask: 0,
        };
        terminators.mask = terminators.mask_at(0);
        terminators
    }

    /// The high bit of each byte of `word` that equals the byte repeated in `pattern`
    /// (exact: no carries between bytes).
    fn equal(word: u64, pattern: u64) -> u64 {
        let x = word ^ pattern;
        !(((x & !Self::HIGH) + !Self::HIGH) | x) & Self::HIGH
    }

    fn mask_at(&self, at: usize) -> u64 {
        let (word, valid) = match self.input.get(at..at + 8) {
            Some(word) => (
                u64::from_le_bytes(word.try_into().expect("8 bytes")),
                u64::MAX,
            ),
            None => {
                // The last, short word: padded, and the padding masked out.
                let rest = &self.input[at.min(self.input.len())..];
                let mut bytes = [0u8; 8];
                bytes[..rest.len()].copy_from_slice(rest);
                (u64::from_le_bytes(bytes), (1u64 << (8 * rest.len())) - 1)
            }
        };
        let mask = Self::equal(word, self.delimiter)
            | Self::equal(word, Self::ONES * u64::from(b'\n'))
            | Self::equal(word, Self::ONES * u64::from(b'\r'));
        mask & valid
    }
}

impl Iterator for Terminators<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.word += 8;
            if self.word >= self.input.len() {
                return None;
            }
            self.mask = self.mask_at(self.word);
        }
        let at = self.word + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(at)
    }
}

/// A run of input copied into the decoder's buffer: `input[region..]` goes to `data[base..]`.
struct Run {
    region: usize,
    base: usize,
}

impl Run {
    /// Copies `input[region..until]` and moves the run past it.
    fn copy_to(&mut self, data: &mut [u8], input: &[u8], until: usize) {
        let n = until - self.region;
        data[self.base..self.base + n].copy_from_slice(&input[self.region..until]);
        self.base += n;
        self.region = until;
    }
}

/// The location of the partition being decoded, for messages.
#[derive(Debug, Clone)]
pub struct Origin {
    /// File name as the user wrote it.
    pub file: Arc<str>,
    /// Line number of the first byte of the partition.
    pub first_line: u64,
    /// Whether the partition starts with the header record.
    pub skip_header: bool,
}

/// The most field data a decoder holds (its field ends are `u32`): a batch ends at half of it,
/// and a single record larger than that is an error.
const MAX_DATA: usize = u32::MAX as usize;

/// What the decoder holds for a field besides its data: the byte that ended it, where it ends
/// (4) and whether it was quoted (1). Batches of many small fields end sooner.
pub const FIELD_COST: usize = 6;

/// Streams CSV bytes into record batches of a given schema.
pub struct CsvDecoder {
    schema: SchemaRef,
    dialect: CsvDialect,
    parser: Reader,
    origin: Origin,
    batch_rows: usize,
    /// Field bytes of complete records after which the batch is full, below `batch_rows`.
    max_batch_bytes: usize,
    /// The most field data held at once ([`MAX_DATA`]; smaller in tests).
    max_data: usize,
    skip_bad_rows: bool,
    /// Whether the schema was declared (`format.schema`) rather than inferred: the hint of a
    /// bad value differs.
    schema_declared: bool,
    started: bool,
    // Fields of the complete records of the batch, then of the record being read: the first
    // `data_len` bytes of `data` (which keeps its length, so that room is zeroed only once).
    data: Vec<u8>,
    data_len: usize,
    /// Where each field's data ends in `data` (which never exceeds [`MAX_DATA`]).
    ends: Vec<u32>,
    quoted: Vec<bool>,
    lines: Vec<u64>,
    record_first_field: usize,
    // Parser position.
    at_record_start: bool,
    at_field_start: bool,
    /// The last field ended at a delimiter that the fast path consumed (csv_core did not see
    /// it), so the record has one more field, empty if the data ends here.
    fast_delimited: bool,
    field_quoted: bool,
    field_newlines: u64,
    pending_cr: bool,
    line: u64,
    record_line: u64,
    header_pending: bool,
    // Records consumed, and the rows of the batch rejected before conversion.
    records: u64,
    skipped: Vec<SkippedRow>,
    finished: bool,
}

impl CsvDecoder {
    /// Says that the schema was declared in `format.schema`, not inferred.
    pub fn with_declared_schema(mut self, declared: bool) -> Self {
        self.schema_declared = declared;
        self
    }

    /// Ends batches once their complete records take `bytes` in the decoder (their field data
    /// and [`FIELD_COST`] bytes a field), even before `batch_rows` (at least one record a
    /// batch; at most 2 GiB).
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.clamp(1, self.max_data / 2);
        self
    }

    /// Holds at most `bytes` of field data (tests; the real limit is 4 GiB).
    #[cfg(test)]
    fn with_max_data(mut self, bytes: usize) -> Self {
        self.max_data = bytes.min(MAX_DATA);
        self.max_batch_bytes = self.max_batch_bytes.min(self.max_data / 2);
        self
    }

    /// A decoder for one partition.
    pub fn new(
        schema: SchemaRef,
        dialect: CsvDialect,
        origin: Origin,
        batch_rows: usize,
        skip_bad_rows: bool,
    ) -> Self {
        let parser = dialect.reader();
        let line = origin.first_line;
        let header_pending = origin.skip_header && dialect.header;
        Self {
            schema,
            dialect,
            parser,
            origin,
            batch_rows: batch_rows.max(1),
            max_batch_bytes: MAX_DATA / 2,
            max_data: MAX_DATA,
            skip_bad_rows,
            schema_declared: false,
            started: false,
            data: Vec::new(),
            data_len: 0,
            ends: Vec::new(),
            quoted: Vec::new(),
            lines: Vec::new(),
            record_first_field: 0,
            at_record_start: true,
            at_field_start: true,
            fast_delimited: false,
            field_quoted: false,
            field_newlines: 0,
            pending_cr: false,
            line,
            record_line: line,
            header_pending,
            records: 0,
            skipped: Vec::new(),
            finished: false,
        }
    }

    /// Records consumed so far (header excluded), skipped ones included.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The line number at the end of the last record read.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Whether a full batch is ready to [`CsvDecoder::flush`].
    pub fn batch_full(&self) -> bool {
        let rows = self.lines.len();
        rows >= self.batch_rows
            || (rows * self.schema.fields().len())
                .checked_sub(1)
                // The data of the fields up to `last`, each followed by its terminator, and
                // their ends and flags.
                .and_then(|last| {
                    Some(*self.ends.get(last)? as usize + 1 + (last + 1) * (FIELD_COST - 1))
                })
                .is_some_and(|held| held >= self.max_batch_bytes)
    }

    /// Consumes bytes until the input is used up or a batch is full; returns the bytes
    /// consumed. An empty `input` means the end of the data.
    pub fn decode(&mut self, input: &[u8]) -> Result<usize> {
        let mut pos = 0;
        if !self.started {
            self.started = true;
            if input.starts_with(b"\xEF\xBB\xBF") {
                pos = 3;
            }
        }
        if input.is_empty() {
            self.finish_input()?;
            return Ok(0);
        }
        let ncols = self.schema.fields().len();
        // Output never exceeds input: make room once.
        let mut len = self.data_len;
        if len + input.len() - pos > self.max_data {
            // `batch_full` ends batches long before this: one record is this large.
            return Err(Error::data(format!(
                "{}:{}: a record holds more than {} MiB; check the quoting (a quote that is never closed reads the rest of the file as one field)",
                self.origin.file,
                self.record_line,
                self.max_data >> 21
            )));
        }
        if self.data.len() < len + input.len() - pos {
            self.data.resize(len + input.len() - pos, 0);
        }
        while pos < input.len() && !self.batch_full() {
            if self.at_record_start {
                while pos < input.len() {
                    match input[pos] {
                        b'\n' if self.pending_cr => self.pending_cr = false,
                        b'\n' => self.line += 1,
                        b'\r' => {
                            self.line += 1;
                            self.pending_cr = true;
                        }
                        _ => break,
                    }
                    pos += 1;
                }
                if pos == input.len() {
                    break;
                }
                self.pending_cr = false;
                self.at_record_start = false;
                self.record_line = self.line;
                self.record_first_field = self.ends.len();
            }
            if self.at_field_start {
                self.field_quoted = input[pos] == self.dialect.quote as u8;
                self.at_field_start = false;
                // Fields that end in this input and need no unescaping are taken many at a
                // time; the rest goes to csv_core.
                let used = self.read_fields(&input[pos..], &mut len, ncols)?;
                if used > 0 {
                    pos += used;
                    continue;
                }
            }
            let rest = &input[pos..];
            self.fast_delimited = false;
            let (result, nin, nout) = self.parser.read_field(rest, &mut self.data[len..]);
            if self.field_quoted {
                self.field_newlines +=
                    memchr::memchr_iter(b'\n', &self.data[len..len + nout]).count() as u64;
            }
            len += nout;
            pos += nin;
            match result {
                ReadFieldResult::InputEmpty => {}
                ReadFieldResult::OutputFull => {
                    self.data_len = len;
                    return Err(Error::internal("csv output buffer full"));
                }
                ReadFieldResult::Field { record_end } => {
                    self.end_field(&mut len);
                    if record_end {
                        let terminator = if nin > 0 { rest[nin - 1] } else { 0 };
                        if let Err(e) = self.end_record(ncols) {
                            self.data_len = len;
                            return Err(e);
                        }
                        len = self.data_len_after_rollback(len);
                        match terminator {
                            b'\n' => self.line += 1,
                            b'\r' => {
                                self.line += 1;
                                self.pending_cr = true;
                            }
                            _ => {}
                        }
                    }
                }
                ReadFieldResult::End => break,
            }
        }
        self.data_len = len;
        Ok(pos)
    }

    /// Reads the fields at the start of `input` that end in it and need no unescaping (unquoted
    /// fields, which csv_core reads literally too, and quoted ones without a quote or escape
    /// inside), straight into the batch: one scan finds where they end, and a copy per run of
    /// input moves them, each with the byte that ended it (in `data` every field is followed by
    /// one such byte, so a field starts one byte after the previous one ends; a CRLF's LF and
    /// the quotes are left out). Stops before a field csv_core must read (a quoted field with a
    /// quote or escape inside, or cut by the input), before a blank line, after a CR that no LF
    /// follows in this input (the record-start loop reads what follows), after a record that
    /// was rejected or was the header, and when the batch is full. Returns the bytes consumed;
    /// `len` becomes the data length.
    fn read_fields(&mut self, input: &[u8], len: &mut usize, ncols: usize) -> Result<usize> {
        let delimiter = self.dialect.delimiter as u8;
        let quote = self.dialect.quote as u8;
        // `input[run.region..used]` goes to `data[run.base..]`.
        let mut run = Run {
            region: 0,
            base: *len,
        };
        let mut used = 0;
        // Terminators before `skip_to` are inside a quoted field (its line breaks count as
        // lines); `lf_of_crlf` is a CRLF's LF (the CR counted the line).
        let mut skip_to = 0;
        let mut lf_of_crlf = usize::MAX;
        let mut quoted = false;
        if input.first() == Some(&quote) {
            match self.quoted_field(input, 0, &mut run) {
                Some(after) => (skip_to, quoted) = (after, true),
                None => return Ok(0),
            }
        }
        let mut outcome = Ok(());
        for end in Terminators::new(input, delimiter) {
            if end == lf_of_crlf {
                continue;
            }
            if end < skip_to {
                if input[end] == b'\n' {
                    self.line += 1;
                }
                continue;
            }
            self.ends.push((run.base + end - run.region) as u32);
            self.quoted.push(quoted);
            quoted = false;
            used = end + 1;
            let terminator = input[end];
            let next = input.get(used).copied();
            if terminator == delimiter {
                // csv_core does not see this delimiter: if the data ends here, the record has
                // one more, empty field.
                self.fast_delimited = true;
                if next == Some(quote) {
                    match self.quoted_field(input, used, &mut run) {
                        Some(after) => (skip_to, quoted) = (after, true),
                        None => break,
                    }
                }
                continue;
            }
            self.fast_delimited = false;
            self.line += 1;
            let rows = self.lines.len();
            outcome = self.end_record(ncols);
            if outcome.is_err() || self.lines.len() == rows || self.batch_full() {
                self.pending_cr = terminator == b'\r';
                break;
            }
            if terminator == b'\r' {
                if next != Some(b'\n') {
                    // A CR alone, or the input ends before its LF: the record-start loop reads on.
                    self.pending_cr = true;
                    break;
                }
                run.copy_to(&mut self.data, input, used);
                lf_of_crlf = used;
                used += 1;
                run.region = used;
            }
            match input.get(used) {
                Some(&b) if b != b'\n' && b != b'\r' => {
                    self.at_record_start = false;
                    self.record_line = self.line;
                    self.record_first_field = self.ends.len();
                    if b == quote {
                        match self.quoted_field(input, used, &mut run) {
                            Some(after) => (skip_to, quoted) = (after, true),
                            None => break,
                        }
                    }
                }
                _ => break,
            }
        }
        run.copy_to(&mut self.data, input, used);
        *len = self.data_len_after_rollback(run.base);
        if let Err(e) = outcome {
            self.data_len = *len;
            return Err(e);
        }
        if used > 0 {
            // csv_core did not see these fields: the next one starts afresh (a quoted field
            // reads the same from there).
            self.parser.reset();
            self.at_field_start = true;
            self.field_quoted = false;
        }
        Ok(used)
    }

    /// Takes the quoted field that starts at `input[at]` when its text needs no unescaping
    /// and a terminator follows its closing quote in this input: copies what precedes it and
    /// its text, and returns where its terminator is (the caller counts the line breaks in
    /// its text as it skips them). `None` leaves it to csv_core.
    fn quoted_field(&mut self, input: &[u8], at: usize, run: &mut Run) -> Option<usize> {
        let quote = self.dialect.quote as u8;
        let text = at + 1;
        let close = text + memchr::memchr(quote, &input[text..])?;
        let terminator = *input.get(close + 1)?;
        if terminator != self.dialect.delimiter as u8 && terminator != b'\n' && terminator != b'\r'
        {
            return None;
        }
        if let Some(escape) = self.dialect.escape
            && memchr::memchr(escape as u8, &input[text..close]).is_some()
        {
            return None;
        }
        run.copy_to(&mut self.data, input, at);
        run.region = text;
        run.copy_to(&mut self.data, input, close);
        run.region = close + 1;
        Some(close + 1)
    }

    /// The data length once a rejected record was rolled back (ends are the truth).
    fn data_len_after_rollback(&self, len: usize) -> usize {
        if self.at_record_start {
            self.ends.last().map_or(0, |&end| end as usize + 1)
        } else {
            len
        }
    }

    /// Ends the field whose data ends at `len`, and writes the byte that follows it.
    fn end_field(&mut self, len: &mut usize) {
        self.ends.push(*len as u32);
        if *len < self.data.len() {
            self.data[*len] = self.dialect.delimiter as u8;
        } else {
            self.data.push(self.dialect.delimiter as u8);
        }
        *len += 1;
        self.quoted.push(self.field_quoted);
        self.line += self.field_newlines;
        self.field_newlines = 0;
        self.field_quoted = false;
        self.at_field_start = true;
    }

    fn finish_input(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let ncols = self.schema.fields().len();
        if self.fast_delimited && !self.at_record_start {
            // The data ends right after a delimiter: the record's last field is empty.
            self.fast_delimited = false;
            let mut len = self.data_len;
            self.end_field(&mut len);
            self.data_len = len;
            self.end_record(ncols)?;
            self.data_len = self.data_len_after_rollback(len);
        }
        loop {
            let mut out = [0u8; 0];
            let (result, _, _) = self.parser.read_field(&[], &mut out);
            match result {
                ReadFieldResult::Field { record_end } => {
                    if self.at_record_start {
                        self.at_record_start = false;
                        self.record_line = self.line;
                        self.record_first_field = self.ends.len();
                    }
                    let mut len = self.data_len;
                    self.end_field(&mut len);
                    self.data_len = len;
                    if record_end {
                        self.end_record(ncols)?;
                        self.data_len = self.data_len_after_rollback(len);
                    }
                }
                ReadFieldResult::End | ReadFieldResult::InputEmpty => break,
                ReadFieldResult::OutputFull => {
                    return Err(Error::internal("csv output buffer full"));
                }
            }
        }
        self.finished = true;
        Ok(())
    }

    fn end_record(&mut self, ncols: usize) -> Result<()> {
        let nfields = self.ends.len() - self.record_first_field;
        self.at_record_start = true;
        if self.header_pending {
            self.header_pending = false;
            self.rollback_record();
            return Ok(());
        }
        self.records += 1;
        if nfields != ncols {
            let reason = format!("has {nfields} fields, expected {ncols}");
            self.rollback_record();
            return self.reject(
                self.record_line,
                reason,
                "check the delimiter and quoting, or the header",
            );
        }
        self.lines.push(self.record_line);
        Ok(())
    }

    fn rollback_record(&mut self) {
        let keep = self.record_first_field;
        self.ends.truncate(keep);
        self.quoted.truncate(keep);
    }

    fn reject(&mut self, line: u64, reason: String, hint: &str) -> Result<()> {
        let location = format!("{}:{line}", self.origin.file);
        if self.skip_bad_rows {
            self.skipped.push(SkippedRow { location, reason });
            Ok(())
        } else {
            Err(Error::data(format!(
                "{location}: record {reason}; {hint}, or set fault_tolerance.skip_incompatible_rows to skip such rows"
            )))
        }
    }

    /// Converts the complete records read so far into a batch, with the rows skipped since
    /// the last flush. Returns `None` when there is nothing to report.
    pub fn flush(&mut self) -> Result<Option<(RecordBatch, Vec<SkippedRow>)>> {
        let rows = self.lines.len();
        if rows == 0 && self.skipped.is_empty() {
            return Ok(None);
        }
        // Fields of a record in progress stay for the next batch.
        let in_progress = self.ends.len() - rows * self.schema.fields().len();
        let complete_fields = self.ends.len() - in_progress;
        // Each field is followed by one byte in `data`.
        let complete_data = if complete_fields == 0 {
            0
        } else {
            self.ends[complete_fields - 1] as usize + 1
        };
        let mut bad = vec![false; rows];
        let mut reasons: Vec<(usize, String)> = Vec::new();
        let text = std::str::from_utf8(&self.data[..complete_data]);
        let ncols = self.schema.fields().len();
        let column = |col| Column {
            data: &self.data[..complete_data],
            text: text.as_ref().ok().copied(),
            ends: &self.ends,
            quoted: &self.quoted,
            ncols,
            col,
            null_value: self.dialect.null_value.as_bytes(),
        };
        let mut on_bad = |row: usize, reason| {
            if !bad[row] {
                bad[row] = true;
                reasons.push((row, reason));
            }
        };
        let mut builders = (0..ncols)
            .map(|col| column_builder(self.schema.field(col), &column(col), rows))
            .collect::<Result<Vec<_>>>()?;
        for start in (0..rows).step_by(TILE_ROWS) {
            let tile = start..(start + TILE_ROWS).min(rows);
            for (col, builder) in builders.iter_mut().enumerate() {
                builder.append(&column(col), tile.clone(), &mut on_bad);
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(ncols);
        for (col, mut builder) in builders.into_iter().enumerate() {
            let array = builder.finish();
            let field = self.schema.field(col);
            if !field.is_nullable() && array.null_count() > 0 {
                column(col).each_span(0..rows, |row, _, null| {
                    if null {
                        on_bad(
                            row,
                            format!(
                                "column `{}` is NULL but the schema does not allow nulls",
                                field.name()
                            ),
                        );
                    }
                });
            }
            columns.push(array);
        }
        reasons.sort_by_key(|(row, _)| *row);
        let mut skipped = std::mem::take(&mut self.skipped);
        for (row, reason) in reasons {
            let line = self.lines[row];
            let hint = if self.schema_declared {
                "fix the value, or change the column's type in format.schema"
            } else {
                "fix the value, or declare the column's type in format.schema (it was inferred from the first rows)"
            };
            self.reject(line, reason, hint)?;
        }
        skipped.append(&mut self.skipped);
        // Rejected rows leave before the batch is made: a column that allows no NULLs holds
        // them in those rows.
        let mut kept = rows;
        if bad.iter().any(|b| *b) {
            let keep: arrow::array::BooleanArray = bad.iter().map(|b| Some(!b)).collect();
            kept = keep.true_count();
            columns = columns
                .iter()
                .map(|column| filter(column, &keep))
                .collect::<std::result::Result<_, _>>()?;
        }
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(kept)),
        )?;
        // Move the record in progress to the front.
        self.data.copy_within(complete_data..self.data_len, 0);
        self.data_len -= complete_data;
        self.ends.drain(..complete_fields);
        for end in &mut self.ends {
            *end -= complete_data as u32;
        }
        self.quoted.drain(..complete_fields);
        self.record_first_field = self.record_first_field.saturating_sub(complete_fields);
        self.lines.clear();
        Ok(Some((batch, skipped)))
    }
}

/// Rows converted at a time: every column takes its values from these rows while their fields
/// are still in L1 cache (a column at a time over a whole batch reads each field's bytes back
/// from beyond it).
const TILE_ROWS: usize = 64;

/// One column of the buffered records.
struct Column<'a> {
    data: &'a [u8],
    text: Option<&'a str>,
    ends: &'a [u32],
    quoted: &'a [bool],
    ncols: usize,
    col: usize,
    null_value: &'a [u8],
}

impl<'a> Column<'a> {
    /// Calls `f` with each of `rows`, where its field's bytes are in `data`, and whether it
    /// is NULL.
    #[inline(always)]
    fn each_span(&self, rows: Range<usize>, mut f: impl FnMut(usize, Range<usize>, bool)) {
        let mut i = rows.start * self.ncols + self.col;
        for row in rows {
            let start = if i == 0 {
                0
            } else {
                self.ends[i - 1] as usize + 1
            };
            let end = self.ends[i] as usize;
            let null = self.data[start..end] == *self.null_value && !self.quoted[i];
            f(row, start..end, null);
            i += self.ncols;
        }
    }

    /// The sum of the field lengths of the first `rows` rows.
    fn text_bytes(&self, rows: usize) -> usize {
        let mut bytes = 0;
        self.each_span(0..rows, |_, span, _| bytes += span.len());
        bytes
    }
}

/// Why `bytes` of column `name` are not `what`.
#[cold]
fn invalid(name: &str, bytes: &[u8], what: &str) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("column `{name}`: `{}` {what}", shorten(text)),
        Err(e) => format!(
            "column `{name}` is not valid UTF-8 at byte {}",
            e.valid_up_to()
        ),
    }
}

/// Builds one column of a batch from its text, a tile of rows at a time.
trait ColumnBuilder {
    fn append(
        &mut self,
        column: &Column<'_>,
        rows: Range<usize>,
        bad: &mut dyn FnMut(usize, String),
    );
    fn finish(&mut self) -> ArrayRef;
}

/// What a parsed column appends to: arrow's primitive and boolean builders.
trait ValueBuilder {
    type Value;
    fn put(&mut self, value: Self::Value);
    fn put_null(&mut self);
    /// The column built, of `data_type`.
    fn finish_as(&mut self, data_type: &DataType) -> ArrayRef;
}

impl<T: ArrowPrimitiveType> ValueBuilder for PrimitiveBuilder<T> {
    type Value = T::Native;

    #[inline]
    fn put(&mut self, value: T::Native) {
        self.append_value(value);
    }

    #[inline]
    fn put_null(&mut self) {
        self.append_null();
    }

    fn finish_as(&mut self, data_type: &DataType) -> ArrayRef {
        Arc::new(self.finish().with_data_type(data_type.clone()))
    }
}

impl ValueBuilder for BooleanBuilder {
    type Value = bool;

    #[inline]
    fn put(&mut self, value: bool) {
        self.append_value(value);
    }

    #[inline]
    fn put_null(&mut self) {
        self.append_null();
    }

    fn finish_as(&mut self, _: &DataType) -> ArrayRef {
        Arc::new(self.finish())
    }
}

/// A column parsed by `parse` into `builder`; text it does not take is `what`.
struct Parsed<B, P> {
    name: String,
    builder: B,
    data_type: DataType,
    parse: P,
    what: String,
}

impl<B, P> ColumnBuilder for Parsed<B, P>
where
    B: ValueBuilder,
    P: Fn(&[u8]) -> Option<B::Value>,
{
    fn append(
        &mut self,
        column: &Column<'_>,
        rows: Range<usize>,
        bad: &mut dyn FnMut(usize, String),
    ) {
        column.each_span(rows, |row, span, null| {
            if null {
                return self.builder.put_null();
            }
            let bytes = &column.data[span];
            match (self.parse)(bytes) {
                Some(value) => self.builder.put(value),
                None => {
                    self.builder.put_null();
                    bad(row, invalid(&self.name, bytes, &self.what));
                }
            }
        });
    }

    fn finish(&mut self) -> ArrayRef {
        self.builder.finish_as(&self.data_type)
    }
}

struct Strings {
    name: String,
    builder: StringBuilder,
}

impl ColumnBuilder for Strings {
    fn append(
        &mut self,
        column: &Column<'_>,
        rows: Range<usize>,
        bad: &mut dyn FnMut(usize, String),
    ) {
        column.each_span(rows, |row, span, null| {
            if null {
                return self.builder.append_null();
            }
            let text = match column.text {
                // Fields start and end next to an ASCII terminator: on character boundaries.
                Some(text) => text.get(span.clone()),
                None => std::str::from_utf8(&column.data[span.clone()]).ok(),
            };
            match text {
                Some(text) => self.builder.append_value(text),
                None => {
                    self.builder.append_null();
                    bad(row, invalid(&self.name, &column.data[span], "is not text"));
                }
            }
        });
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.builder.finish())
    }
}

/// The builder of `field`'s column for `rows` rows of `column`'s text.
fn column_builder(
    field: &Field,
    column: &Column<'_>,
    rows: usize,
) -> Result<Box<dyn ColumnBuilder>> {
    fn parsed_into<B: ValueBuilder + 'static>(
        field: &Field,
        builder: B,
        what: &str,
        parse: impl Fn(&[u8]) -> Option<B::Value> + 'static,
    ) -> Box<dyn ColumnBuilder> {
        Box::new(Parsed {
            name: field.name().clone(),
            builder,
            data_type: field.data_type().clone(),
            parse,
            what: what.to_string(),
        })
    }
    fn parsed<T: ArrowPrimitiveType>(
        field: &Field,
        rows: usize,
        what: &str,
        parse: impl Fn(&[u8]) -> Option<T::Native> + 'static,
    ) -> Box<dyn ColumnBuilder> {
        parsed_into(
            field,
            PrimitiveBuilder::<T>::with_capacity(rows),
            what,
            parse,
        )
    }
    fn arrow<T: ArrowPrimitiveType + Parser>(
        field: &Field,
        rows: usize,
        what: &str,
    ) -> Box<dyn ColumnBuilder> {
        parsed::<T>(field, rows, what, arrow_parse::<T>)
    }
    fn int<T>(field: &Field, rows: usize, what: &str) -> Box<dyn ColumnBuilder>
    where
        T: ArrowPrimitiveType + Parser,
        T::Native: TryFrom<i64>,
    {
        parsed::<T>(field, rows, what, parse_int::<T>)
    }
    let name = field.name().clone();
    Ok(match field.data_type() {
        DataType::Boolean => parsed_into(
            field,
            BooleanBuilder::with_capacity(rows),
            "is not a boolean (true/false, t/f, yes/no, 1/0)",
            |bytes| std::str::from_utf8(bytes).ok().and_then(parse_bool),
        ),
        DataType::Int8 => int::<Int8Type>(field, rows, "is not an int8"),
        DataType::Int16 => int::<Int16Type>(field, rows, "is not an int16"),
        DataType::Int32 => int::<Int32Type>(field, rows, "is not an int32"),
        DataType::Int64 => int::<Int64Type>(field, rows, "is not an int64"),
        DataType::UInt8 => int::<UInt8Type>(field, rows, "is not a uint8"),
        DataType::UInt16 => int::<UInt16Type>(field, rows, "is not a uint16"),
        DataType::UInt32 => int::<UInt32Type>(field, rows, "is not a uint32"),
        DataType::UInt64 => arrow::<UInt64Type>(field, rows, "is not a uint64"),
        DataType::Float32 => arrow::<Float32Type>(field, rows, "is not a number"),
        DataType::Float64 => parsed::<Float64Type>(field, rows, "is not a number", parse_f64),
        DataType::Date32 => {
            parsed::<Date32Type>(field, rows, "is not a date (YYYY-MM-DD)", parse_date)
        }
        DataType::Timestamp(TimeUnit::Second, _) => {
            arrow::<TimestampSecondType>(field, rows, "is not a timestamp")
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            arrow::<TimestampMillisecondType>(field, rows, "is not a timestamp")
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            arrow::<TimestampMicrosecondType>(field, rows, "is not a timestamp")
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            arrow::<TimestampNanosecondType>(field, rows, "is not a timestamp")
        }
        &DataType::Decimal128(p, s) => {
            validate_decimal_precision_and_scale::<Decimal128Type>(p, s)?;
            parsed::<Decimal128Type>(
                field,
                rows,
                &format!("is not a decimal({p},{s})"),
                move |v| {
                    let text = std::str::from_utf8(v).ok()?;
                    arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(text, p, s)
                        .ok()
                },
            )
        }
        // The column's exact text size: no growing (and copying) while it is built, and the
        // batch charges the budget for what it holds.
        DataType::Utf8 => Box::new(Strings {
            name,
            builder: StringBuilder::with_capacity(rows, column.text_bytes(rows)),
        }),
        other => {
            return Err(Error::config(format!(
                "csv cannot read column `{name}` as {other}; declare it as one of bool, int, float, utf8, date, timestamp or decimal"
            )));
        }
    })
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Parses text as arrow does (`None` for text that is not UTF-8).
fn arrow_parse<T: Parser>(text: &[u8]) -> Option<T::Native> {
    std::str::from_utf8(text).ok().and_then(T::parse)
}

/// Parses an integer: a sign and at most 18 digits directly, any other text (more digits,
/// surrounding spaces) as arrow does; both reject values out of the type's range.
pub fn parse_int<T>(text: &[u8]) -> Option<T::Native>
where
    T: Parser,
    T::Native: TryFrom<i64>,
{
    let digits = match text.first() {
        Some(b'-' | b'+') => &text[1..],
        _ => text,
    };
    if digits.is_empty() || digits.len() > 18 {
        return arrow_parse::<T>(text);
    }
    let mut value = 0i64;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return arrow_parse::<T>(text);
        }
        value = value * 10 + i64::from(digit);
    }
    if text[0] == b'-' {
        value = -value;
    }
    T::Native::try_from(value).ok()
}

/// Parses a float: plain decimals of at most 15 digits (`-123.45`) directly, as one exact
/// division that IEEE 754 rounds correctly (Clinger's fast path), any other text as arrow does.
pub fn parse_f64(text: &[u8]) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    // Digits, then optionally a point and more digits (wrapping: more than 15 go to arrow).
    let mut mantissa = 0u64;
    let mut take_digits = |from: usize| {
        let mut at = from;
        while let Some(digit) = digits
            .get(at)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|&d| d < 10)
        {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(digit));
            at += 1;
        }
        at
    };
    let point = take_digits(0);
    let (end, fraction) = match digits.get(point) {
        Some(b'.') if point > 0 => {
            let end = take_digits(point + 1);
            (end, end - point - 1)
        }
        _ => (point, 0),
    };
    let count = point + fraction;
    if end != digits.len() || count == 0 || count > 15 || (end > point && fraction == 0) {
        return arrow_parse::<Float64Type>(text);
    }
    // At most 15 digits: the mantissa and 10^fraction are exact doubles.
    let value = mantissa as f64 / POWERS[fraction];
    Some(if negative { -value } else { value })
}

/// Parses a date as days since 1970-01-01: `YYYY-MM-DD` directly (the form nearly every file
/// uses; years 1900-2099 by table), any other text as arrow does.
pub fn parse_date(text: &[u8]) -> Option<i32> {
    if let &[y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = text {
        let digits = [y0, y1, y2, y3, m0, m1, d0, d1].map(|c| c.wrapping_sub(b'0') as u32);
        if digits.iter().all(|&d| d < 10) {
            let [y0, y1, y2, y3, m0, m1, d0, d1] = digits;
            let year = (y0 * 1000 + y1 * 100 + y2 * 10 + y3) as i32;
            let (month, day) = (m0 * 10 + m1, d0 * 10 + d1);
            if !(1..=12).contains(&month) || day == 0 {
                return arrow_parse::<Date32Type>(text);
            }
            let m = month as usize;
            if let Some(starts) = usize::try_from(year - TABLE_FIRST_YEAR)
                .ok()
                .and_then(|y| MONTH_STARTS.get(y))
            {
                let date = starts[m - 1] + day as i32 - 1;
                return if date < starts[m] {
                    Some(date)
                } else {
                    arrow_parse::<Date32Type>(text)
                };
            }
            if day <= days_in_month(year, month) {
                return Some(days_from_civil(year, month, day));
            }
        }
    }
    arrow_parse::<Date32Type>(text)
}

/// The first year of [`MONTH_STARTS`].
const TABLE_FIRST_YEAR: i32 = 1900;

/// Days from 1970-01-01 to the first day of each month of the years 1900-2099 and of the
/// January after: a date of those years is one lookup, and its day is valid if it comes
/// before the next month's first.
const MONTH_STARTS: [[i32; 13]; 200] = {
    let mut table = [[0; 13]; 200];
    let mut y = 0;
    while y < table.len() {
        let year = TABLE_FIRST_YEAR + y as i32;
        let mut m = 0;
        while m < 12 {
            table[y][m] = days_from_civil(year, m as u32 + 1, 1);
            m += 1;
        }
        table[y][12] = days_from_civil(year + 1, 1, 1);
        y += 1;
    }
    table
};

fn days_in_month(year: i32, month: u32) -> u32 {
    const DAYS: [u32; 13] = [0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    DAYS[month as usize] + u32::from(month == 2 && leap)
}

/// Days from 1970-01-01 to a valid proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, years from March so that the leap day comes last).
const fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400) as u32;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era as i32 - 719_468
}

/// Parses a boolean as PostgreSQL does.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Infers a schema from the first records of `sample` (which may end mid-record).
pub fn infer_schema(
    sample: &[u8],
    complete: bool,
    dialect: &CsvDialect,
    max_records: usize,
    file: &str,
) -> Result<SchemaRef> {
    let mut parser = dialect.reader();
    let mut records: Vec<Vec<(String, bool)>> = Vec::new();
    let mut record: Vec<(String, bool)> = Vec::new();
    let mut field = Vec::new();
    let mut out = vec![0u8; sample.len() + 1];
    let input = sample.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(sample);
    let mut pos = 0;
    let mut at_field_start = true;
    let mut quoted = false;
    while records.len() < max_records + usize::from(dialect.header) {
        let rest = &input[pos..];
        if at_field_start && !rest.is_empty() {
            let first = if record.is_empty() {
                rest.iter()
                    .position(|b| *b != b'\n' && *b != b'\r')
                    .unwrap_or(0)
            } else {
                0
            };
            quoted = rest.get(first) == Some(&(dialect.quote as u8));
            at_field_start = false;
        }
        let (result, nin, nout) = parser.read_field(rest, &mut out);
        field.extend_from_slice(&out[..nout]);
        pos += nin;
        match result {
            ReadFieldResult::Field { record_end } => {
                record.push((String::from_utf8_lossy(&field).into_owned(), quoted));
                field.clear();
                at_field_start = true;
                if record_end {
                    records.push(std::mem::take(&mut record));
                }
            }
            // A partial sample ends mid-record: drop the rest; a whole file ends with EOF.
            ReadFieldResult::InputEmpty if !complete => break,
            ReadFieldResult::InputEmpty => {}
            ReadFieldResult::End => break,
            ReadFieldResult::OutputFull => return Err(Error::internal("csv output buffer full")),
        }
    }
    let Some(first) = records.first() else {
        return Err(Error::invalid_input(format!(
            "{file}: no records to infer a schema from; the file is empty, or give format.schema"
        )));
    };
    let names: Vec<String> = if dialect.header {
        first
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                if name.trim().is_empty() {
                    format!("column_{}", i + 1)
                } else {
                    name.trim().to_string()
                }
            })
            .collect()
    } else {
        (1..=first.len()).map(|i| format!("column_{i}")).collect()
    };
    let rows = if dialect.header {
        &records[1..]
    } else {
        &records[..]
    };
    let fields: Vec<Field> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let values = rows
                .iter()
                .filter_map(|r| r.get(i))
                .filter(|(v, quoted)| *quoted || v.as_str() != dialect.null_value)
                .map(|(v, _)| v.as_str());
            Field::new(name, infer_type(values), true)
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for f in &fields {
        if !seen.insert(f.name().as_str()) {
            return Err(Error::invalid_input(format!(
                "{file}: the header names column `{}` twice; give format.schema with distinct names",
                f.name()
            )));
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The narrowest type that holds every value: int64, float64, bool, date, timestamp or utf8.
pub fn infer_type<'a>(values: impl Iterator<Item = &'a str>) -> DataType {
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Empty,
        Int,
        Float,
        Bool,
        Date,
        Timestamp,
        Text,
    }
    let classify = |v: &str| {
        if Int64Type::parse(v).is_some() {
            Kind::Int
        } else if parse_f64(v.as_bytes()).is_some() && v.bytes().any(|b| b.is_ascii_digit()) {
            Kind::Float
        } else if parse_bool(v).is_some() {
            Kind::Bool
        } else if v.len() == 10 && parse_date(v.as_bytes()).is_some() {
            Kind::Date
        } else if v.len() > 10
            && v.as_bytes()[4] == b'-'
            && TimestampMicrosecondType::parse(v).is_some()
        {
            Kind::Timestamp
        } else {
            Kind::Text
        }
    };
    let mut kind = Kind::Empty;
    for v in values {
        let k = classify(v);
        kind = match (kind, k) {
            (Kind::Empty, k) => k,
            (a, b) if a == b => a,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            (Kind::Date, Kind::Timestamp) | (Kind::Timestamp, Kind::Date) => Kind::Timestamp,
            _ => Kind::Text,
        };
        if kind == Kind::Text {
            break;
        }
    }
    match kind {
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Date => DataType::Date32,
        Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Kind::Empty | Kind::Text => DataType::Utf8,
    }
}

/// Encodes batches as CSV text in the given dialect.
pub struct CsvEncoder {
    dialect: CsvDialect,
    header: Option<Vec<String>>,
    buf: Vec<u8>,
    cell: String,
}

impl CsvEncoder {
    /// An encoder that writes the header first if the dialect has one.
    pub fn new(schema: &SchemaRef, dialect: CsvDialect) -> Self {
        let header = dialect
            .header
            .then(|| schema.fields().iter().map(|f| f.name().clone()).collect());
        Self {
            dialect,
            header,
            buf: Vec::new(),
            cell: String::new(),
        }
    }

    fn needs_quotes(&self, s: &str, is_text: bool) -> bool {
        let d = self.dialect.delimiter as u8;
        let q = self.dialect.quote as u8;
        (is_text && (s.is_empty() || s == self.dialect.null_value))
            || s.bytes().any(|b| {
                b == d
                    || b == q
                    || b == b'\n'
                    || b == b'\r'
                    || Some(b as char) == self.dialect.escape
            })
    }

    fn push_field(&mut self, s: &str, is_text: bool) {
        if !self.needs_quotes(s, is_text) {
            self.buf.extend_from_slice(s.as_bytes());
            return;
        }
        let q = self.dialect.quote as u8;
        self.buf.push(q);
        for b in s.bytes() {
            if b == q || Some(b as char) == self.dialect.escape {
                self.buf.push(self.dialect.escape.map_or(q, |e| e as u8));
            }
            self.buf.push(b);
        }
        self.buf.push(q);
    }
}

impl CsvEncoder {
    fn write_header(&mut self) {
        if let Some(names) = self.header.take() {
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    self.buf.push(self.dialect.delimiter as u8);
                }
                self.push_field(name, true);
            }
            self.buf.push(b'\n');
        }
    }
}

impl Encoder for CsvEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        self.write_header();
        let options = FormatOptions::default().with_display_error(true);
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let text: Vec<Option<&arrow::array::StringArray>> = batch
            .columns()
            .iter()
            .map(|c| c.as_string_opt::<i32>())
            .collect();
        for row in 0..batch.num_rows() {
            for (col, column) in batch.columns().iter().enumerate() {
                if col > 0 {
                    self.buf.push(self.dialect.delimiter as u8);
                }
                if column.is_null(row) {
                    self.buf
                        .extend_from_slice(self.dialect.null_value.as_bytes());
                    continue;
                }
                if let Some(strings) = text[col] {
                    let value = strings.value(row);
                    self.push_field(value, true);
                } else {
                    let mut cell = std::mem::take(&mut self.cell);
                    cell.clear();
                    write!(cell, "{}", formatters[col].value(row))
                        .map_err(|e| Error::data(format!("cannot format a value: {e}")))?;
                    self.push_field(&cell, false);
                    self.cell = cell;
                }
            }
            self.buf.push(b'\n');
        }
        Ok(Some(Bytes::from(std::mem::take(&mut self.buf))))
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        // An output without rows still gets its header.
        self.write_header();
        Ok((!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf))))
    }
}

/// Where record `n` of a file starts, for splitting one file into byte ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boundary {
    /// Byte offset of the first byte of a record.
    pub offset: u64,
    /// Line number of that byte.
    pub line: u64,
}

/// Finds record boundaries near the `targets` offsets by scanning `reader` once: quote parity
/// tells whether a newline ends a record or sits inside a quoted value. Returns, for each
/// target, the first record start at or after it (or none past the end).
pub fn find_boundaries(
    mut reader: impl std::io::Read,
    quote: u8,
    targets: &[u64],
) -> Result<Vec<Boundary>> {
    let mut boundaries = Vec::with_capacity(targets.len());
    let mut next_target = targets.iter().copied().peekable();
    let mut offset = 0u64;
    let mut line = 1u64;
    let mut in_quotes = false;
    let mut seeking: Option<u64> = None;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::io("scan csv for record boundaries", e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let mut i = 0usize;
        while i < n {
            if seeking.is_none() {
                match next_target.peek() {
                    Some(&t) if t <= offset + i as u64 => {
                        seeking = Some(t);
                        next_target.next();
                    }
                    Some(&t) if t < offset + n as u64 => {}
                    _ => {
                        // No target in this chunk: count quotes and newlines in bulk.
                        let rest = &chunk[i..];
                        line += memchr::memchr_iter(b'\n', rest).count() as u64;
                        in_quotes ^= memchr::memchr_iter(quote, rest).count() % 2 == 1;
                        i = n;
                        continue;
                    }
                }
            }
            let b = chunk[i];
            if b == quote {
                in_quotes = !in_quotes;
            } else if b == b'\n' {
                line += 1;
                if !in_quotes && seeking.take().is_some() {
                    boundaries.push(Boundary {
                        offset: offset + i as u64 + 1,
                        line,
                    });
                    // Targets already passed map to the same boundary.
                    while next_target
                        .peek()
                        .is_some_and(|&t| t <= offset + i as u64 + 1)
                    {
                        next_target.next();
                        boundaries.push(Boundary {
                            offset: offset + i as u64 + 1,
                            line,
                        });
                    }
                }
            }
            i += 1;
        }
        offset += n as u64;
    }
    Ok(boundaries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;
    use arrow::util::pretty::pretty_format_batches;

    fn decode_all(
        text: &[u8],
        schema: SchemaRef,
        dialect: CsvDialect,
        batch_rows: usize,
        skip: bool,
    ) -> Result<(Vec<RecordBatch>, Vec<SkippedRow>, u64)> {
        decode_in_pieces(text, schema, dialect, batch_rows, skip, 3)
    }

    fn decode_in_pieces(
        text: &[u8],
        schema: SchemaRef,
        dialect: CsvDialect,
        batch_rows: usize,
        skip: bool,
        piece_len: usize,
    ) -> Result<(Vec<RecordBatch>, Vec<SkippedRow>, u64)> {
        let d = CsvDecoder::new(schema, dialect, origin(), batch_rows, skip);
        feed_in_pieces(d, text, piece_len)
    }

    /// The tests' file: `t.csv` from line 1, with its header.
    fn origin() -> Origin {
        Origin {
            file: "t.csv".into(),
            first_line: 1,
            skip_header: true,
        }
    }

    /// Feeds `text` to `d` in pieces of `piece_len`, flushing every full batch.
    fn feed_in_pieces(
        mut d: CsvDecoder,
        text: &[u8],
        piece_len: usize,
    ) -> Result<(Vec<RecordBatch>, Vec<SkippedRow>, u64)> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        // Feed in pieces (small ones cross every boundary).
        for piece in text.chunks(piece_len) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = d.decode(rest)?;
                rest = &rest[n..];
                if d.batch_full()
                    && let Some((b, s)) = d.flush()?
                {
                    out.push(b);
                    skipped.extend(s);
                }
            }
        }
        d.decode(&[])?;
        if let Some((b, s)) = d.flush()? {
            out.push(b);
            skipped.extend(s);
        }
        Ok((out, skipped, d.records()))
    }

    fn schema(cols: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn floats_parse_as_arrow_parses_them() {
        use proptest::prelude::*;
        let texts = "-?[0-9]{0,17}(\\.[0-9]{0,17})?|[-+]?[0-9.eE]{1,8}|[-+]?(inf|NaN|infinity)";
        proptest!(ProptestConfig::with_cases(20_000), |(text in texts)| {
            let ours = parse_f64(text.as_bytes());
            let arrow = Float64Type::parse(&text);
            prop_assert_eq!(ours.map(f64::to_bits), arrow.map(f64::to_bits), "{}", text);
            if let Some(v) = ours.filter(|v| v.is_finite()) {
                // And the standard library's correctly rounded reading agrees.
                prop_assert_eq!(Some(v.to_bits()), text.parse::<f64>().ok().map(f64::to_bits));
            }
        });
        for text in [
            "999999999999999.9",
            "0.000000000000001",
            "-0.0",
            "123456789012345",
            "1.",
            ".5",
        ] {
            assert_eq!(
                parse_f64(text.as_bytes()).map(f64::to_bits),
                Float64Type::parse(text).map(f64::to_bits),
                "{text}"
            );
        }
    }

    #[test]
    fn integers_parse_as_arrow_parses_them() {
        use proptest::prelude::*;
        fn agree<T>(text: &str) -> std::result::Result<(), TestCaseError>
        where
            T: Parser,
            T::Native: TryFrom<i64> + PartialEq + std::fmt::Debug,
        {
            prop_assert_eq!(parse_int::<T>(text.as_bytes()), T::parse(text), "{}", text);
            Ok(())
        }
        let texts = "[-+]?[0-9]{0,20}|[-+0-9. e]{1,6}";
        proptest!(ProptestConfig::with_cases(20_000), |(text in texts)| {
            agree::<Int8Type>(&text)?;
            agree::<Int16Type>(&text)?;
            agree::<Int32Type>(&text)?;
            agree::<Int64Type>(&text)?;
            agree::<UInt8Type>(&text)?;
            agree::<UInt32Type>(&text)?;
        });
        for text in [
            "",
            "-",
            "+",
            "-0",
            "+0",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "256",
            "-1",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "4294967295",
            "4294967296",
            "999999999999999999",
            "-999999999999999999",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "00000000000000000000001",
            " 1",
            "1 ",
            "1.0",
            "1e3",
        ] {
            agree::<Int8Type>(text).unwrap();
            agree::<Int16Type>(text).unwrap();
            agree::<Int32Type>(text).unwrap();
            agree::<Int64Type>(text).unwrap();
            agree::<UInt8Type>(text).unwrap();
            agree::<UInt16Type>(text).unwrap();
            agree::<UInt32Type>(text).unwrap();
        }
    }

    #[test]
    fn terminators_are_every_delimiter_and_line_break() {
        use proptest::prelude::*;
        let bytes = proptest::collection::vec(
            prop_oneof![
                Just(b','),
                Just(b'\n'),
                Just(b'\r'),
                Just(0u8),
                Just(0x80u8),
                any::<u8>()
            ],
            0..70,
        );
        proptest!(ProptestConfig::with_cases(3_000), |(input in bytes, delimiter in prop_oneof![Just(b','), Just(0u8), Just(b'\t'), any::<u8>()])| {
            let found: Vec<usize> = Terminators::new(&input, delimiter).collect();
            let expected: Vec<usize> = input
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == delimiter || **b == b'\n' || **b == b'\r')
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(found, expected);
        });
    }

    #[test]
    fn dates_parse_as_arrow_parses_them() {
        // Every day of 1890-2110, and the month ends and impossible days of every year from
        // 0000 to 9999, against arrow's parser (which goes through chrono).
        let mut checked = 0;
        for year in 0..=9999 {
            let days: &[u32] = if (1890..=2110).contains(&year) {
                &[
                    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                    22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 99,
                ]
            } else {
                &[0, 1, 28, 29, 30, 31, 32]
            };
            for month in 0..=13 {
                for &day in days {
                    let text = format!("{year:04}-{month:02}-{day:02}");
                    assert_eq!(
                        parse_date(text.as_bytes()),
                        Date32Type::parse(&text),
                        "{text}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000);
        assert_eq!(parse_date("1970-01-01".as_bytes()), Some(0));
        assert_eq!(parse_date("2000-03-01".as_bytes()), Some(11_017));
        assert_eq!(parse_date("1969-12-31".as_bytes()), Some(-1));
        // Other forms are arrow's.
        for text in [
            "2020-1-5",
            "+2020-01-05",
            "2020-01-05T00:00:00",
            " 2020-01-05",
            "2020/01/05",
        ] {
            assert_eq!(
                parse_date(text.as_bytes()),
                Date32Type::parse(text),
                "{text}"
            );
        }
    }

    #[test]
    fn a_record_larger_than_the_decoder_holds_is_an_error_naming_its_line() {
        // Ten good records, then one whose quote is never closed: with 1,000 bytes of room
        // the decoder gives up on it (4 GiB outside tests), fed in pieces as a file is read.
        let mut text = b"id,name\n".to_vec();
        for i in 0..10 {
            text.extend_from_slice(format!("{i},x\n").as_bytes());
        }
        text.extend_from_slice(b"10,\"");
        text.extend(std::iter::repeat_n(b'y', 5000));
        text.extend_from_slice(b"\n11,z\n");
        let schema = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        let d = CsvDecoder::new(schema.clone(), CsvDialect::default(), origin(), 1000, false)
            .with_max_data(1000);
        let err = feed_in_pieces(d, &text, 100).unwrap_err().to_string();
        assert!(err.contains("t.csv:12: a record holds more than"), "{err}");
        assert!(err.contains("a quote that is never closed"), "{err}");
        // Closed, the same record fits a decoder with room for it.
        let closed = [&text[..text.len() - 6], b"\"\n11,z\n"].concat();
        let d = CsvDecoder::new(schema, CsvDialect::default(), origin(), 1000, false)
            .with_max_data(20_000);
        let (batches, _, records) = feed_in_pieces(d, &closed, 100).unwrap();
        assert_eq!(records, 12);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 12);
    }

    #[test]
    fn batches_end_at_their_byte_limit_before_their_row_limit() {
        // 100 records of `i` and a 10-byte name: 11-13 bytes of fields each, and what the
        // decoder holds for each of the two fields.
        let mut text = b"id,name\n".to_vec();
        for i in 0..100 {
            text.extend_from_slice(format!("{i},name-{i:05}\n").as_bytes());
        }
        let schema = schema(&[("id", DataType::Int64), ("name", DataType::Utf8)]);
        let field_bytes = |batch: &RecordBatch, row: usize| {
            let ids = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            ids.value(row).to_string().len() + 10 + 2 * FIELD_COST
        };
        for piece_len in [text.len(), 7, 1] {
            let d = CsvDecoder::new(schema.clone(), CsvDialect::default(), origin(), 1000, false)
                .with_max_batch_bytes(100);
            let (batches, _, records) = feed_in_pieces(d, &text, piece_len).unwrap();
            assert_eq!(records, 100);
            let mut next = 0;
            for (i, batch) in batches.iter().enumerate() {
                let ids = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap();
                for id in ids.values() {
                    assert_eq!(*id, next, "rows in order, each once");
                    next += 1;
                }
                let bytes: usize = (0..batch.num_rows()).map(|r| field_bytes(batch, r)).sum();
                let last = field_bytes(batch, batch.num_rows() - 1);
                if i + 1 < batches.len() {
                    assert!(
                        bytes >= 100 && bytes - last < 100,
                        "batch {i} ends at the first record that reaches 100 bytes: {bytes}"
                    );
                }
            }
            assert_eq!(next, 100);
            // The batch sizes the rule gives, from the input's own field lengths.
            let mut expected = vec![0usize];
            let mut bytes = 0;
            for i in 0..100 {
                *expected.last_mut().unwrap() += 1;
                bytes += i.to_string().len() + 10 + 2 * FIELD_COST;
                if bytes >= 100 && i < 99 {
                    expected.push(0);
                    bytes = 0;
                }
            }
            let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
            assert_eq!(sizes, expected, "piece length {piece_len}");
        }
    }

    #[test]
    fn unquoted_fields_read_the_same_whole_or_in_pieces() {
        // Unquoted fields (the scan) beside quoted ones (the scan, or csv_core), a quote inside an
        // unquoted field (literal), CR, LF and CRLF ends, and data that ends right after a
        // delimiter: the last field is then an empty one (NULL).
        let text = b"a,b,c\r1,x\"y,\"q,1\"\n2,,\"\"\r\n\"3\",z,\n4,w,";
        let s = schema(&[
            ("a", DataType::Int64),
            ("b", DataType::Utf8),
            ("c", DataType::Utf8),
        ]);
        for piece_len in [1, 2, 3, 7, text.len()] {
            let (batches, skipped, records) = decode_in_pieces(
                text,
                s.clone(),
                CsvDialect::default(),
                100,
                false,
                piece_len,
            )
            .unwrap();
            assert!(skipped.is_empty());
            assert_eq!(records, 4, "pieces of {piece_len}");
            let batch = arrow::compute::concat_batches(&s, &batches).unwrap();
            let a = batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>();
            assert_eq!(a.values().to_vec(), [1, 2, 3, 4], "pieces of {piece_len}");
            let b = batch.column(1).as_string::<i32>();
            let c = batch.column(2).as_string::<i32>();
            let cells = |col: &arrow::array::StringArray| -> Vec<Option<String>> {
                col.iter().map(|v| v.map(str::to_string)).collect()
            };
            assert_eq!(
                cells(b),
                [
                    Some("x\"y".into()),
                    None,
                    Some("z".into()),
                    Some("w".into())
                ],
                "pieces of {piece_len}"
            );
            assert_eq!(
                cells(c),
                [Some("q,1".into()), Some(String::new()), None, None],
                "pieces of {piece_len}"
            );
        }
    }

    #[test]
    fn nulls_follow_postgres_and_quotes_unescape() {
        let text = b"\xEF\xBB\xBFid,name,note\r\n1,\"\",\r\n2,,\"a \"\"quoted\"\", value\"\r\n3,\"multi\nline\",x\r\n";
        let s = schema(&[
            ("id", DataType::Int64),
            ("name", DataType::Utf8),
            ("note", DataType::Utf8),
        ]);
        let (batches, skipped, records) =
            decode_all(text, s, CsvDialect::default(), 2, false).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(records, 3);
        let printed = pretty_format_batches(&batches).unwrap().to_string();
        let expected = "\
+----+-------+-------------------+
| id | name  | note              |
+----+-------+-------------------+
| 1  |       |                   |
| 2  |       | a \"quoted\", value |
| 3  | multi | x                 |
|    | line  |                   |
+----+-------+-------------------+";
        assert_eq!(printed, expected);
        let names = batches[0].column(1).as_string::<i32>();
        assert!(
            names.is_valid(0) && names.value(0).is_empty(),
            "quoted empty is the empty string"
        );
        assert!(names.is_null(1), "unquoted empty is null");
        assert!(batches[0].column(2).is_null(0));
    }

    #[test]
    fn bad_value_names_file_line_column_and_value() {
        // The bad value sits after a quoted newline, so record and line numbers differ.
        let text = b"id,price\n1,\"2.5\"\n2,\"3\n\"\n3,abc\n";
        let s = schema(&[("id", DataType::Int64), ("price", DataType::Float64)]);
        let err = decode_all(text, s.clone(), CsvDialect::default(), 100, false).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("t.csv:5"), "{msg}");
        assert!(
            msg.contains("column `price`: `abc` is not a number"),
            "{msg}"
        );
        assert!(msg.contains("skip_incompatible_rows"), "{msg}");
    }

    #[test]
    fn nulls_in_a_column_that_allows_none_and_bad_booleans_are_rejected_by_row() {
        // An unquoted empty field is NULL; a quoted one is the empty string.
        let text = b"id,name,ok\n1,a,true\n2,,yes\n3,\"\",0\n,d,f\n5,e,maybe\n6,f,\n";
        let s = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("ok", DataType::Boolean, true),
        ]));
        let (batches, skipped, records) =
            decode_all(text, s.clone(), CsvDialect::default(), 4, true).unwrap();
        assert_eq!(records, 6);
        let reasons: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.location.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "t.csv:3",
                    "column `name` is NULL but the schema does not allow nulls"
                ),
                (
                    "t.csv:5",
                    "column `id` is NULL but the schema does not allow nulls"
                ),
                (
                    "t.csv:6",
                    "column `ok`: `maybe` is not a boolean (true/false, t/f, yes/no, 1/0)"
                ),
            ]
        );
        let batch = arrow::compute::concat_batches(&s, &batches).unwrap();
        let ids = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(ids.values().to_vec(), [1, 3, 6]);
        let names = batch.column(1).as_string::<i32>();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            [Some("a"), Some(""), Some("f")]
        );
        let ok = batch.column(2).as_boolean();
        assert_eq!(
            ok.iter().collect::<Vec<_>>(),
            [Some(true), Some(false), None]
        );
        // Without skipping, the first such row fails the job naming its line.
        let err = decode_all(text, s, CsvDialect::default(), 4, false).unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("t.csv:3")
                && err.contains("`name` is NULL but the schema does not allow nulls"),
            "{err}"
        );
    }

    #[test]
    fn text_of_any_length_reads_back_as_written() {
        use proptest::prelude::*;
        // Fields of 0-40 bytes, multi-byte characters included, some quoted, at the end of
        // the decoder's data and not (batches of 1-7 rows).
        let field = "([a-z é€😀]{0,12}|[a-z]{13,40})";
        let rows = proptest::collection::vec((field, field, any::<bool>()), 1..40);
        proptest!(ProptestConfig::with_cases(300), |(rows in rows, batch_rows in 1usize..8)| {
            let mut text = String::from("a,b\n");
            for (a, b, quote) in &rows {
                if *quote {
                    text.push_str(&format!("\"{a}\",{b}\n"));
                } else {
                    text.push_str(&format!("{a},{b}\n"));
                }
            }
            let s = schema(&[("a", DataType::Utf8), ("b", DataType::Utf8)]);
            let (batches, skipped, _) =
                decode_all(text.as_bytes(), s.clone(), CsvDialect::default(), batch_rows, false)
                    .unwrap();
            prop_assert!(skipped.is_empty());
            let batch = arrow::compute::concat_batches(&s, &batches).unwrap();
            let column = |i: usize| -> Vec<Option<String>> {
                batch.column(i).as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
            };
            // An unquoted empty field is NULL, a quoted one the empty string.
            let expected_a: Vec<Option<String>> = rows
                .iter()
                .map(|(a, _, quote)| (*quote || !a.is_empty()).then(|| a.clone()))
                .collect();
            let expected_b: Vec<Option<String>> = rows
                .iter()
                .map(|(_, b, _)| (!b.is_empty()).then(|| b.clone()))
                .collect();
            prop_assert_eq!(column(0), expected_a);
            prop_assert_eq!(column(1), expected_b);
        });
        // Text that is not UTF-8 is rejected by row and column.
        let text = b"a,b\nok,fine\nbad\xff\xfe,x\nyes,\xc3\n";
        let s = schema(&[("a", DataType::Utf8), ("b", DataType::Utf8)]);
        let (batches, skipped, _) =
            decode_all(text, s.clone(), CsvDialect::default(), 10, true).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1);
        let reasons: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.location.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("t.csv:3", "column `a` is not valid UTF-8 at byte 3"),
                ("t.csv:4", "column `b` is not valid UTF-8 at byte 0"),
            ]
        );
    }

    #[test]
    fn bad_rows_are_skipped_and_reported() {
        let text = b"id,price\n1,2.5\n2,abc\n3\n4,4.5,9\n5,5.5";
        let s = schema(&[("id", DataType::Int64), ("price", DataType::Float64)]);
        let (batches, skipped, records) =
            decode_all(text, s, CsvDialect::default(), 2, true).unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!((rows, skipped.len(), records), (2, 3, 5));
        assert!(
            skipped
                .iter()
                .any(|s| s.location == "t.csv:3" && s.reason.contains("`abc` is not a number"))
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.location == "t.csv:4" && s.reason.contains("has 1 fields, expected 2"))
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.location == "t.csv:5" && s.reason.contains("has 3 fields"))
        );
    }

    #[test]
    fn an_escape_character_reads_as_the_csv_crate_reads_it() {
        // Quoted fields with and without the escape inside, at the start, middle and end of
        // records, with LF and CRLF ends.
        let text = b"a,b,c\n\"x\\\"y\",\"plain\",z\r\nq,\"p\\\\r\",\"\"\n\"1,2\",\"e\\\"\",\"3\"\n";
        let dialect = CsvDialect {
            escape: Some('\\'),
            ..CsvDialect::default()
        };
        let expected: Vec<Vec<String>> = csv::ReaderBuilder::new()
            .escape(Some(b'\\'))
            .double_quote(false)
            .from_reader(&text[..])
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect();
        assert_eq!(expected.len(), 3);
        let s = schema(&[
            ("a", DataType::Utf8),
            ("b", DataType::Utf8),
            ("c", DataType::Utf8),
        ]);
        for piece_len in [text.len(), 5, 1] {
            let (batches, _, _) =
                decode_in_pieces(text, s.clone(), dialect.clone(), 10, false, piece_len).unwrap();
            let rows: Vec<Vec<String>> = (0..batches[0].num_rows())
                .map(|r| {
                    (0..3)
                        .map(|c| batches[0].column(c).as_string::<i32>().value(r).to_string())
                        .collect()
                })
                .collect();
            assert_eq!(rows, expected, "pieces of {piece_len}");
        }
    }

    #[test]
    fn a_quoted_line_break_after_a_crlf_counts_once() {
        // Found by the property test: a CRLF's LF followed by a quoted field with a line break
        // was counted as a line of its own.
        let text = b"a,b\r\n1,2\r\n\"x\ny\",1\r\nbad\n2,3\n";
        let s = schema(&[("a", DataType::Utf8), ("b", DataType::Utf8)]);
        for piece_len in [text.len(), 1] {
            let (batches, skipped, _) =
                decode_in_pieces(text, s.clone(), CsvDialect::default(), 10, true, piece_len)
                    .unwrap();
            assert_eq!(batches[0].num_rows(), 3);
            assert_eq!(batches[0].column(0).as_string::<i32>().value(1), "x\ny");
            assert_eq!(skipped.len(), 1);
            assert_eq!(skipped[0].location, "t.csv:5", "pieces of {piece_len}");
        }
    }

    #[test]
    fn custom_dialect_and_null_text() {
        let text = b"a;b\n\\N;'x;y'\n'\\N';\\N\n";
        let dialect = CsvDialect {
            delimiter: ';',
            quote: '\'',
            null_value: "\\N".into(),
            ..CsvDialect::default()
        };
        let s = schema(&[("a", DataType::Utf8), ("b", DataType::Utf8)]);
        let (batches, _, _) = decode_all(text, s, dialect, 10, false).unwrap();
        let a = batches[0].column(0).as_string::<i32>();
        let b = batches[0].column(1).as_string::<i32>();
        assert!(a.is_null(0));
        assert_eq!(b.value(0), "x;y");
        assert_eq!(a.value(1), "\\N");
        assert!(b.is_null(1));
    }

    #[test]
    fn infers_types_from_a_sample() {
        let text = b"i,f,b,d,t,s,e\n1,1.5,true,2024-01-02,2024-01-02 03:04:05,x,\n2,2,false,2024-02-03,2024-01-02T03:04:05,\"\",\n";
        let s = infer_schema(text, true, &CsvDialect::default(), 100, "t.csv").unwrap();
        let types: Vec<DataType> = s.fields().iter().map(|f| f.data_type().clone()).collect();
        assert_eq!(
            types,
            vec![
                DataType::Int64,
                DataType::Float64,
                DataType::Boolean,
                DataType::Date32,
                DataType::Timestamp(TimeUnit::Microsecond, None),
                DataType::Utf8,
                DataType::Utf8
            ]
        );
    }

    #[test]
    fn encoder_round_trips_nulls_and_empty_strings() {
        let s = schema(&[("id", DataType::Int64), ("s", DataType::Utf8)]);
        let batch = RecordBatch::try_new(
            s.clone(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(arrow::array::StringArray::from(vec![
                    Some(""),
                    None,
                    Some("a,\"b\"\nc"),
                ])),
            ],
        )
        .unwrap();
        let mut enc = CsvEncoder::new(&s, CsvDialect::default());
        let bytes = enc.encode(&batch).unwrap().unwrap();
        assert_eq!(&bytes[..], b"id,s\n1,\"\"\n,\n3,\"a,\"\"b\"\"\nc\"\n");
        let (back, _, _) = decode_all(&bytes, s, CsvDialect::default(), 10, false).unwrap();
        assert_eq!(back[0], batch);
    }

    #[test]
    fn boundaries_skip_quoted_newlines() {
        let text = b"h\n\"a\nb\"\nc\nd\n";
        // Target 3 is inside the quoted value: the next record starts at 8 (line 4).
        let b = find_boundaries(&text[..], b'"', &[3, 9]).unwrap();
        assert_eq!(
            b,
            vec![
                Boundary { offset: 8, line: 4 },
                Boundary {
                    offset: 10,
                    line: 5
                }
            ]
        );
    }
}
