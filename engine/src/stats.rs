//! Live counters of a running job: cheap to update from any stage, cheap to observe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The stages of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading and decoding the source.
    Source,
    /// Encoding batches into the output format.
    Encode,
    /// Writing bytes to the sink.
    Sink,
}

impl Stage {
    /// All stages, in data-flow order.
    pub const ALL: [Stage; 3] = [Stage::Source, Stage::Encode, Stage::Sink];

    /// The stage's name, as in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Encode => "encode",
            Stage::Sink => "sink",
        }
    }
}

/// Time one stage (all its instances together) spent working and waiting.
#[derive(Debug, Default)]
pub struct StageClock {
    busy_ns: AtomicU64,
    wait_input_ns: AtomicU64,
    wait_output_ns: AtomicU64,
}

impl StageClock {
    /// Adds time spent working.
    pub fn busy(&self, d: Duration) {
        self.busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Adds time spent waiting for input (starved).
    pub fn wait_input(&self, d: Duration) {
        self.wait_input_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// Adds time spent waiting for room downstream (backpressure).
    pub fn wait_output(&self, d: Duration) {
        self.wait_output_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    /// A snapshot.
    pub fn snapshot(&self, stage: Stage) -> StageTimes {
        StageTimes {
            stage,
            busy_secs: self.busy_ns.load(Relaxed) as f64 / 1e9,
            wait_input_secs: self.wait_input_ns.load(Relaxed) as f64 / 1e9,
            wait_output_secs: self.wait_output_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Times `f` and returns its value with the elapsed time.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

/// A snapshot of one stage's times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageTimes {
    /// The stage.
    pub stage: Stage,
    /// Seconds spent working, summed over the stage's instances.
    pub busy_secs: f64,
    /// Seconds spent waiting for input.
    pub wait_input_secs: f64,
    /// Seconds spent waiting for room downstream.
    pub wait_output_secs: f64,
}

impl StageTimes {
    /// Share of the stage's time spent working, 0..=1.
    pub fn utilization(&self) -> f64 {
        let total = self.busy_secs + self.wait_input_secs + self.wait_output_secs;
        if total > 0.0 {
            self.busy_secs / total
        } else {
            0.0
        }
    }
}

/// Counters of a whole job, shared by its stages and observed by progress displays.
#[derive(Debug, Default)]
pub struct JobProgress {
    /// Notes for the report (see [`crate::Source::notes`]).
    pub notes: std::sync::Mutex<Vec<String>>,
    /// Partitions planned.
    pub partitions_total: AtomicU64,
    /// Partitions whose reading finished.
    pub partitions_done: AtomicU64,
    /// Source records consumed (skipped ones included).
    pub records_read: AtomicU64,
    /// Rows skipped as incompatible.
    pub rows_skipped: AtomicU64,
    /// Estimated input bytes of the planned partitions.
    pub input_bytes_total: AtomicU64,
    /// Input bytes consumed.
    pub input_bytes_read: AtomicU64,
    /// Rows handed to the encoders (a Parquet writer holds a row group's rows before it
    /// writes them, so this moves before `rows_written` does).
    pub rows_encoded: AtomicU64,
    /// Rows written to the sink.
    pub rows_written: AtomicU64,
    /// Bytes written to the sink.
    pub bytes_written: AtomicU64,
    /// Retries so far.
    pub retries: AtomicU64,
    /// Nanoseconds readers waited for room in the job's memory budget (part of the source
    /// stage's time blocked downstream).
    pub budget_wait_ns: AtomicU64,
    /// Times an encoder flushed early (a Parquet row group ended before its row limit)
    /// because it held its share of the budget, and the rows those flushes wrote.
    pub early_flushes: AtomicU64,
    /// See `early_flushes`.
    pub early_flush_rows: AtomicU64,
    /// Bytes an encoder may hold before it flushes (its share of the budget).
    pub encoder_share: AtomicU64,
    /// What tuning advice is measured against: `parallel_copies`, `max_buffer_bytes`.
    pub settings: std::sync::OnceLock<(u64, u64)>,
    source: StageClock,
    encode: StageClock,
    sink: StageClock,
}

impl JobProgress {
    /// New shared counters.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The clock of `stage`.
    pub fn clock(&self, stage: Stage) -> &StageClock {
        match stage {
            Stage::Source => &self.source,
            Stage::Encode => &self.encode,
            Stage::Sink => &self.sink,
        }
    }

    /// A consistent-enough snapshot for display.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            partitions_total: self.partitions_total.load(Relaxed),
            partitions_done: self.partitions_done.load(Relaxed),
            records_read: self.records_read.load(Relaxed),
            rows_encoded: self.rows_encoded.load(Relaxed),
            rows_written: self.rows_written.load(Relaxed),
            rows_skipped: self.rows_skipped.load(Relaxed),
            input_bytes_total: self.input_bytes_total.load(Relaxed),
            input_bytes_read: self.input_bytes_read.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
        }
    }

    /// Times of every stage.
    pub fn stage_times(&self) -> Vec<StageTimes> {
        Stage::ALL
            .iter()
            .map(|&s| self.clock(s).snapshot(s))
            .collect()
    }
}

/// What a progress display shows.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProgressSnapshot {
    /// Partitions planned.
    pub partitions_total: u64,
    /// Partitions read.
    pub partitions_done: u64,
    /// Records read.
    pub records_read: u64,
    /// Rows handed to the encoders.
    pub rows_encoded: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Rows skipped.
    pub rows_skipped: u64,
    /// Estimated input bytes.
    pub input_bytes_total: u64,
    /// Input bytes read.
    pub input_bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_is_busy_share() {
        let clock = StageClock::default();
        clock.busy(Duration::from_secs(3));
        clock.wait_input(Duration::from_secs(1));
        let t = clock.snapshot(Stage::Encode);
        assert!((t.utilization() - 0.75).abs() < 1e-9);
        assert_eq!(
            StageClock::default().snapshot(Stage::Sink).utilization(),
            0.0
        );
    }
}
