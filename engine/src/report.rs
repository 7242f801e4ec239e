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
        if let Some(b) = self.bottleneck {
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
