//! The job report: what was moved, how fast, and which stage held the job back.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::source::SkippedRow;
use crate::stats::{Stage, StageTimes};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// All data written and published.
    Succeeded,
    /// Nothing published; see the error.
    Failed,
    /// Cancelled; nothing published.
    Cancelled,
}

impl JobStatus {
    /// The status as reports and metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// How a job that ended with `error` ended.
    pub fn of(error: Option<&crate::Error>) -> Self {
        match error {
            None => JobStatus::Succeeded,
            Some(e) if e.kind() == ErrorKind::Cancelled => JobStatus::Cancelled,
            Some(_) => JobStatus::Failed,
        }
    }
}

/// Everything a finished run hands to [`JobReport::build`].
#[derive(Debug)]
pub struct RunOutcome {
    /// The job's name.
    pub job: String,
    /// Source and sink connector kinds.
    pub kinds: (&'static str, &'static str),
    /// Seconds the run took.
    pub secs: f64,
    /// What was published, or why nothing was.
    pub result: crate::Result<crate::sink::Committed>,
    /// Skipped rows for the report.
    pub skipped_sample: Vec<SkippedRow>,
    /// What the counts count.
    pub unit: CountUnit,
    /// The figures of what passed to the sink, when the job verifies.
    pub figures: Option<crate::verify::Figures>,
}

/// The failure of a failed job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFailure {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// The message.
    pub message: String,
    /// The process exit code it maps to.
    #[serde(default)]
    pub exit_code: i32,
}

/// The report of one job run. Every field but `status` has a default when read, so records
/// written by earlier versions (a channel's reports survive an upgrade) still read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    /// The job's name.
    #[serde(default)]
    pub job: String,
    /// The source connector.
    #[serde(default)]
    pub source: String,
    /// The sink connector.
    #[serde(default)]
    pub sink: String,
    /// How it ended.
    pub status: JobStatus,
    /// Partitions planned.
    #[serde(default)]
    pub partitions: u64,
    /// Retries of partitions and outputs.
    #[serde(default)]
    pub retries: u64,
    /// Records read from the source (skipped ones included).
    #[serde(default)]
    pub rows_read: u64,
    /// Rows written to the sink.
    #[serde(default)]
    pub rows_written: u64,
    /// Rows skipped as incompatible.
    #[serde(default)]
    pub rows_skipped: u64,
    /// The first skipped rows with their reasons (all of them are in the fault log).
    #[serde(default)]
    pub skipped_sample: Vec<SkippedRow>,
    /// Input bytes read, where the source knows them.
    #[serde(default)]
    pub bytes_read: u64,
    /// Bytes written.
    #[serde(default)]
    pub bytes_written: u64,
    /// Wall-clock seconds.
    #[serde(default)]
    pub duration_secs: f64,
    /// Rows written per second.
    #[serde(default)]
    pub rows_per_sec: f64,
    /// Input megabytes (MiB) per second.
    #[serde(default)]
    pub read_mib_per_sec: f64,
    /// Time each stage was busy and waiting.
    #[serde(default)]
    pub stages: Vec<StageTimes>,
    /// The stage that held the job back: the busiest one.
    #[serde(default)]
    pub bottleneck: Option<Stage>,
    /// What was published.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Earlier outputs that this run replaced.
    #[serde(default)]
    pub removed: Vec<String>,
    /// Why the job failed.
    #[serde(default)]
    pub error: Option<JobFailure>,
    /// Seconds spent preparing the job before it ran (reading metadata, inferring schemas,
    /// setting up generators); included in `duration_secs`.
    #[serde(default)]
    pub prepare_secs: f64,
    /// What `rows_*` count: rows, or whole files for a binary copy.
    #[serde(default)]
    pub unit: CountUnit,
    /// What the reader of the report should know about how the data was read (for
    /// example, that partitions read the source at different moments).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// `verify: true`: the figures of what was read and of the output read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// What to change to make the job faster, from the stages' measured busy and waiting
    /// times (empty when nothing stands out, or the job was too short to tell).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advice: Vec<String>,
}

/// What `verify: true` compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Figures of the data read, as it passed to the sink.
    pub read: crate::verify::Figures,
    /// Figures of the published output, read back after the commit.
    pub output: Option<crate::verify::Figures>,
    /// Seconds the read-back took.
    pub secs: f64,
}

/// What a report's counts count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CountUnit {
    /// Rows (records).
    #[default]
    Rows,
    /// Files copied byte for byte.
    Files,
}

impl CountUnit {
    fn word(self) -> &'static str {
        match self {
            CountUnit::Rows => "rows",
            CountUnit::Files => "files",
        }
    }
}

impl JobReport {
    /// The report of a finished run from its live counters: the one report builder of the
    /// engine's copies and of binary copies.
    pub fn build(outcome: RunOutcome, progress: &crate::stats::JobProgress) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let snapshot = progress.snapshot();
        let stages = if outcome.unit == CountUnit::Rows {
            progress.stage_times()
        } else {
            Vec::new()
        };
        let secs = outcome.secs;
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let (committed, error) = match outcome.result {
            Ok(committed) => (committed, None),
            Err(e) => (crate::sink::Committed::default(), Some(e)),
        };
        let advice = match (&error, progress.settings.get()) {
            (None, Some(&(parallel_copies, budget))) => advise(&Measured {
                stages: &stages,
                secs,
                partitions: snapshot.partitions_total,
                parallel_copies,
                budget,
                budget_wait_secs: progress.budget_wait_ns.load(Relaxed) as f64 / 1e9,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
                kinds: outcome.kinds,
            }),
            _ => Vec::new(),
        };
        JobReport {
            job: outcome.job,
            source: outcome.kinds.0.to_string(),
            sink: outcome.kinds.1.to_string(),
            status: JobStatus::of(error.as_ref()),
            partitions: snapshot.partitions_total,
            retries: progress.retries.load(Relaxed),
            rows_read: snapshot.records_read,
            rows_written: snapshot.rows_written,
            rows_skipped: snapshot.rows_skipped,
            skipped_sample: outcome.skipped_sample,
            bytes_read: snapshot.input_bytes_read,
            bytes_written: snapshot.bytes_written,
            duration_secs: secs,
            rows_per_sec: per_sec(snapshot.rows_written),
            read_mib_per_sec: per_sec(snapshot.input_bytes_read) / (1 << 20) as f64,
            bottleneck: JobReport::find_bottleneck(&stages),
            stages,
            outputs: committed.outputs,
            removed: committed.removed,
            error: error.map(|e| JobFailure {
                kind: e.kind(),
                exit_code: e.exit_code(),
                message: e.to_string(),
            }),
            prepare_secs: 0.0,
            unit: outcome.unit,
            notes: progress.notes.lock().map(|n| n.clone()).unwrap_or_default(),
            verification: outcome.figures.map(|read| Verification {
                read,
                output: None,
                secs: 0.0,
            }),
            advice,
        }
    }

    /// The report of a job that failed before it started copying.
    pub fn failed(job: &str, e: crate::Error) -> Self {
        Self {
            job: job.to_string(),
            source: String::new(),
            sink: String::new(),
            status: JobStatus::of(Some(&e)),
            partitions: 0,
            retries: 0,
            rows_read: 0,
            rows_written: 0,
            rows_skipped: 0,
            skipped_sample: vec![],
            bytes_read: 0,
            bytes_written: 0,
            duration_secs: 0.0,
            rows_per_sec: 0.0,
            read_mib_per_sec: 0.0,
            stages: vec![],
            bottleneck: None,
            outputs: vec![],
            removed: vec![],
            error: Some(JobFailure {
                kind: e.kind(),
                exit_code: e.exit_code(),
                message: e.to_string(),
            }),
            prepare_secs: 0.0,
            unit: CountUnit::Rows,
            notes: Vec::new(),
            verification: None,
            advice: Vec::new(),
        }
    }

    /// The same report with `secs` of preparation before the job ran counted in its time.
    pub fn with_preparation(mut self, secs: f64) -> Self {
        self.prepare_secs = secs;
        self.duration_secs += secs;
        if self.duration_secs > 0.0 {
            self.rows_per_sec = self.rows_written as f64 / self.duration_secs;
            self.read_mib_per_sec = self.bytes_read as f64 / (1 << 20) as f64 / self.duration_secs;
        }
        self
    }

    /// The same report naming the source and sink kinds (`postgres`, `file`).
    pub fn with_kinds(mut self, source: &str, sink: &str) -> Self {
        self.source = source.to_string();
        self.sink = sink.to_string();
        self
    }

    /// The stage that worked longest, if any stage did work: behind bounded queues the
    /// slowest stage is busy while the others wait for it. (A stage's share of busy time
    /// misleads on short jobs: a source that read for 60 ms and never waited is 100% busy.)
    pub fn find_bottleneck(stages: &[StageTimes]) -> Option<Stage> {
        stages
            .iter()
            .filter(|s| s.busy_secs > 0.0)
            .max_by(|a, b| {
                a.busy_secs
                    .total_cmp(&b.busy_secs)
                    .then(a.utilization().total_cmp(&b.utilization()))
            })
            .map(|s| s.stage)
    }

    /// The exit code of the command that ran this job.
    pub fn exit_code(&self) -> i32 {
        self.error.as_ref().map_or(0, |e| e.exit_code)
    }
}

/// What the advice of a finished job is derived from.
struct Measured<'a> {
    stages: &'a [StageTimes],
    secs: f64,
    partitions: u64,
    parallel_copies: u64,
    budget: u64,
    budget_wait_secs: f64,
    cores: u64,
    kinds: (&'static str, &'static str),
}

/// Jobs shorter than this get no advice: their stage times say little.
const ADVICE_AFTER_SECS: f64 = 2.0;

/// Concrete advice for a job that succeeded, from where its time went: the readers waiting
/// for room in the memory budget while the stages after them had time to spare
/// (budget-starved), or the busiest stage (source-, encoder- or sink-bound).
fn advise(m: &Measured) -> Vec<String> {
    if m.secs < ADVICE_AFTER_SECS {
        return Vec::new();
    }
    let stage = |s: Stage| m.stages.iter().find(|t| t.stage == s).cloned();
    let (Some(source), Some(encode), Some(sink)) = (
        stage(Stage::Source),
        stage(Stage::Encode),
        stage(Stage::Sink),
    ) else {
        return Vec::new();
    };
    let source_total = source.busy_secs + source.wait_input_secs + source.wait_output_secs;
    if source_total > 0.0
        && m.budget_wait_secs >= 0.25 * source_total
        && encode.utilization() < 0.5
        && sink.utilization() < 0.5
    {
        return vec![format!(
            "budget-starved: readers waited {:.1}s for room in the memory budget while the encoders and the sink had time to spare; raise max_buffer_bytes (now {})",
            m.budget_wait_secs,
            human_bytes(m.budget)
        )];
    }
    let Some(bottleneck) = JobReport::find_bottleneck(m.stages) else {
        return Vec::new();
    };
    let advice = match bottleneck {
        Stage::Source if m.partitions < m.parallel_copies => {
            let how = match m.kinds.0 {
                "postgres" | "sqlserver" => "give the source a `partition` (a column to split on)",
                "file" | "azure_blob" => {
                    "a compressed file, or one smaller than the split size, is read whole: write the input as several files, or uncompressed"
                }
                _ => "split the input",
            };
            format!(
                "source-bound: the source was read as {} partition(s), so only {} of the {} parallel_copies read; {how}",
                m.partitions, m.partitions, m.parallel_copies
            )
        }
        Stage::Source => format!(
            "source-bound: the {} partitions were read {} at a time and the stages after the readers waited for them; raise parallel_copies (now {}) if the source can serve more readers",
            m.partitions, m.parallel_copies, m.parallel_copies
        ),
        Stage::Encode if m.parallel_copies < m.cores => format!(
            "encoder-bound: encoding ran on {} thread(s) of {} cores; raise parallel_copies to {}",
            m.parallel_copies, m.cores, m.cores
        ),
        Stage::Encode => format!(
            "encoder-bound: encoding kept the {} cores busy; more cores, or a lighter compression (snappy, or none), make it faster",
            m.cores
        ),
        Stage::Sink => match m.kinds.1 {
            "postgres" => "sink-bound: PostgreSQL took the rows slower than they came; mode overwrite (or a new table) loads in parallel_copies sessions, append and truncate in one; drop the table's indexes and triggers during the load, or load several tables in parallel jobs".to_string(),
            "sqlserver" => "sink-bound: SQL Server took the rows slower than they came (one bulk load per job); set table_lock, or load into a heap without indexes".to_string(),
            "azure_blob" => "sink-bound: Azure Blob Storage took the data slower than it came; raise block_size or max_concurrency, or check the network to the account".to_string(),
            _ => "sink-bound: the destination took the data slower than it came; write to a faster disk or store".to_string(),
        },
    };
    vec![advice]
}

fn human_bytes(n: u64) -> String {
    crate::config::ByteSize(n).to_string()
}

impl fmt::Display for JobReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "cancelled",
        };
        let kinds = if self.source.is_empty() && self.sink.is_empty() {
            String::new()
        } else {
            format!(" ({} -> {})", self.source, self.sink)
        };
        if self.partitions == 0 && self.stages.is_empty() && self.status != JobStatus::Succeeded {
            // It never started: no figures to show, only why.
            writeln!(f, "job {} {status} before it started{kinds}", self.job)?;
            if let Some(e) = &self.error {
                writeln!(f, "  error     {}", e.message)?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "job {} {status} in {:.2}s{kinds}",
            self.job, self.duration_secs
        )?;
        let unit = self.unit.word();
        if self.prepare_secs >= 0.01 {
            writeln!(
                f,
                "  prepare   {:.2}s before the copy started (metadata, schemas, generators)",
                self.prepare_secs
            )?;
        }
        writeln!(
            f,
            "  {unit:<9} read {}  written {}  skipped {}",
            self.rows_read, self.rows_written, self.rows_skipped
        )?;
        writeln!(
            f,
            "  bytes     read {}  written {}",
            human_bytes(self.bytes_read),
            human_bytes(self.bytes_written)
        )?;
        writeln!(
            f,
            "  speed     {:.0} {unit}/s  {:.1} MiB/s read",
            self.rows_per_sec, self.read_mib_per_sec
        )?;
        writeln!(
            f,
            "  partitions {}  retries {}",
            self.partitions, self.retries
        )?;
        if self.partitions > 1 && !self.stages.is_empty() {
            writeln!(
                f,
                "  stages    times summed over the {} partitions (several run at once)",
                self.partitions
            )?;
        }
        for s in &self.stages {
            writeln!(
                f,
                "  stage {:<6} busy {:>8.2}s  waiting for input {:>8.2}s  blocked downstream {:>8.2}s  ({:.0}% busy)",
                s.stage.name(),
                s.busy_secs,
                s.wait_input_secs,
                s.wait_output_secs,
                s.utilization() * 100.0
            )?;
        }
        if let Some(b) = self.bottleneck
            && self.advice.is_empty()
        {
            let hint = match b {
                Stage::Source => {
                    "the source: raise parallel_copies if the source can serve more readers"
                }
                Stage::Encode => "encoding: raise parallel_copies to encode on more threads",
                Stage::Sink => "the sink: the destination accepts data slower than it is produced",
            };
            writeln!(f, "  bottleneck {hint}")?;
        }
        for o in &self.outputs {
            writeln!(f, "  output    {o}")?;
        }
        for n in &self.notes {
            writeln!(f, "  note      {n}")?;
        }
        for a in &self.advice {
            writeln!(f, "  advice    {a}")?;
        }
        if let Some(v) = &self.verification
            && let Some(output) = &v.output
        {
            writeln!(
                f,
                "  verified  {} rows, {} columns read back in {:.2}s: row checksum {} {} {}",
                output.rows,
                output.columns.len(),
                v.secs,
                v.read.checksum,
                if v.read.differences(output).is_empty() {
                    "="
                } else {
                    "!="
                },
                output.checksum
            )?;
        }
        for s in &self.skipped_sample {
            writeln!(f, "  skipped   {}: {}", s.location, s.reason)?;
        }
        if let Some(e) = &self.error {
            writeln!(f, "  error     {}", e.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bottleneck_is_the_busiest_stage() {
        let times = |stage, busy, wait| StageTimes {
            stage,
            busy_secs: busy,
            wait_input_secs: wait,
            wait_output_secs: 0.0,
        };
        let stages = vec![
            times(Stage::Source, 2.0, 8.0),
            times(Stage::Encode, 9.0, 1.0),
            times(Stage::Sink, 1.0, 9.0),
        ];
        assert_eq!(JobReport::find_bottleneck(&stages), Some(Stage::Encode));
        assert_eq!(JobReport::find_bottleneck(&[]), None);
        // A short job: the source read briefly and never waited (100% busy), the sink worked
        // far longer while waiting too; the sink is where the time went.
        let short = vec![
            times(Stage::Source, 0.06, 0.0),
            times(Stage::Encode, 0.02, 0.3),
            times(Stage::Sink, 0.33, 0.1),
        ];
        assert_eq!(JobReport::find_bottleneck(&short), Some(Stage::Sink));
    }

    #[test]
    fn advice_follows_where_the_time_went() {
        let stage = |stage, busy, wait_input, wait_output| StageTimes {
            stage,
            busy_secs: busy,
            wait_input_secs: wait_input,
            wait_output_secs: wait_output,
        };
        let measured =
            |stages: &[StageTimes], partitions, parallel_copies, budget_wait_secs, kinds| {
                advise(&Measured {
                    stages,
                    secs: 10.0,
                    partitions,
                    parallel_copies,
                    budget: 64 << 20,
                    budget_wait_secs,
                    cores: 8,
                    kinds,
                })
            };
        // Readers busy, the rest waiting for them: source-bound, and with fewer partitions
        // than parallel_copies the advice is to split the source.
        let reading = [
            stage(Stage::Source, 9.0, 0.0, 1.0),
            stage(Stage::Encode, 1.0, 9.0, 0.0),
            stage(Stage::Sink, 0.5, 9.5, 0.0),
        ];
        let one = measured(&reading, 1, 4, 0.0, ("postgres", "file"));
        assert!(
            one[0].starts_with("source-bound") && one[0].contains("`partition`"),
            "{one:?}"
        );
        let many = measured(&reading, 8, 4, 0.0, ("postgres", "file"));
        assert!(
            many[0].contains("raise parallel_copies (now 4)"),
            "{many:?}"
        );
        // Encoders busy: more threads while cores are left, else more cores.
        let encoding = [
            stage(Stage::Source, 2.0, 0.0, 8.0),
            stage(Stage::Encode, 9.5, 0.5, 0.0),
            stage(Stage::Sink, 1.0, 9.0, 0.0),
        ];
        let few = measured(&encoding, 8, 2, 0.0, ("file", "file"));
        assert!(few[0].contains("raise parallel_copies to 8"), "{few:?}");
        let all = measured(&encoding, 8, 8, 0.0, ("file", "file"));
        assert!(all[0].contains("more cores"), "{all:?}");
        // The sink busy: advice for that store.
        let loading = [
            stage(Stage::Source, 1.0, 0.0, 9.0),
            stage(Stage::Encode, 1.0, 1.0, 8.0),
            stage(Stage::Sink, 9.5, 0.5, 0.0),
        ];
        let pg = measured(&loading, 4, 4, 0.0, ("file", "postgres"));
        assert!(pg[0].starts_with("sink-bound: PostgreSQL"), "{pg:?}");
        // Readers waiting for the budget while the encoders and the sink idle: budget-starved.
        let starved = [
            stage(Stage::Source, 2.0, 0.0, 8.0),
            stage(Stage::Encode, 2.0, 8.0, 0.0),
            stage(Stage::Sink, 1.0, 9.0, 0.0),
        ];
        let advice = measured(&starved, 4, 4, 6.0, ("file", "file"));
        assert!(
            advice[0].starts_with("budget-starved") && advice[0].contains("64MiB"),
            "{advice:?}"
        );
        // The same waits behind a busy sink are backpressure, not starvation.
        let behind = measured(&loading, 4, 4, 6.0, ("file", "postgres"));
        assert!(behind[0].starts_with("sink-bound"), "{behind:?}");
        // A short job gets no advice.
        let short = advise(&Measured {
            stages: &reading,
            secs: 1.0,
            partitions: 1,
            parallel_copies: 4,
            budget: 64 << 20,
            budget_wait_secs: 0.0,
            cores: 8,
            kinds: ("postgres", "file"),
        });
        assert!(short.is_empty());
    }

    #[test]
    fn a_record_of_an_earlier_version_still_reads() {
        // What the spool wrote for a job cancelled before it started, and for a node that
        // died during every run, before reports were typed.
        for text in [
            r#"{"job": "0001-x", "status": "cancelled"}"#,
            r#"{"job": "0002-y", "status": "failed", "error": {"kind": "internal", "message": "out of attempts"}}"#,
        ] {
            let report: JobReport = serde_json::from_str(text).unwrap();
            assert!(report.job.starts_with("000"), "{text}");
            assert_eq!(report.rows_written, 0);
        }
        let failed: JobReport = serde_json::from_str(
            r#"{"job": "j", "status": "failed", "error": {"kind": "internal", "message": "m"}}"#,
        )
        .unwrap();
        assert_eq!(failed.status, JobStatus::Failed);
        assert_eq!(failed.error.unwrap().message, "m");
    }
}
