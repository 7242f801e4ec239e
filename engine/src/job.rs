//! A job ready to run: its settings and its built source and sink, plus the state its stages
//! share while it runs.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;

use crate::channel::ByteBudget;
use crate::config::JobSettings;
use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::source::{Partition, SkippedRow, Source};
use crate::stats::JobProgress;

/// How many skipped rows the report lists; the fault log has all of them.
pub const SKIPPED_SAMPLE_ROWS: usize = 20;

/// A validated job with its source and sink built.
pub struct Job {
    /// The settings.
    pub settings: JobSettings,
    /// Where data comes from.
    pub source: Arc<dyn Source>,
    /// Where data goes.
    pub sink: Arc<dyn Sink>,
}

/// What the stages of a running job share.
pub(crate) struct JobContext {
    pub settings: JobSettings,
    pub source: Arc<dyn Source>,
    pub sink: Arc<dyn Sink>,
    pub schema: SchemaRef,
    pub budget: ByteBudget,
    pub progress: Arc<JobProgress>,
    pub faults: FaultLog,
}

/// Skipped rows: counted, sampled for the report, and written to the fault log file.
pub(crate) struct FaultLog {
    job: String,
    path: Option<std::path::PathBuf>,
    /// Mode of the file when it is created.
    mode: u32,
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    file: Option<BufWriter<File>>,
    sample: Vec<SkippedRow>,
}

impl FaultLog {
    pub fn new(job: &str, path: Option<std::path::PathBuf>, mode: u32) -> Self {
        Self {
            job: job.to_string(),
            path,
            mode,
            state: Mutex::default(),
        }
    }

    /// Records skipped rows of `partition`.
    pub fn record(&self, partition: &Partition, rows: &[SkippedRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::internal("fault log lock poisoned"))?;
        for row in rows {
            tracing::warn!(job = %self.job, partition = partition.index, location = %row.location, reason = %row.reason, "skipped row");
            if state.sample.len() < SKIPPED_SAMPLE_ROWS {
                state.sample.push(row.clone());
            }
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        if state.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            let file = File::options()
                .create(true)
                .append(true)
                .mode(self.mode)
                .open(path)
                .map_err(|e| Error::io(format!("open fault log {}", path.display()), e))?;
            state.file = Some(BufWriter::new(file));
        }
        if let Some(file) = state.file.as_mut() {
            for row in rows {
                let line = serde_json::json!({
                    "job": self.job,
                    "partition": partition.description,
                    "location": row.location,
                    "reason": row.reason,
                });
                writeln!(file, "{line}")
                    .map_err(|e| Error::io(format!("write fault log {}", path.display()), e))?;
            }
        }
        Ok(())
    }

    /// Flushes the file and returns the sample of skipped rows.
    pub fn finish(&self) -> Result<Vec<SkippedRow>> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::internal("fault log lock poisoned"))?;
        if let (Some(file), Some(path)) = (state.file.as_mut(), &self.path) {
            file.flush()
                .map_err(|e| Error::io(format!("write fault log {}", path.display()), e))?;
        }
        Ok(state.sample.clone())
    }
}
