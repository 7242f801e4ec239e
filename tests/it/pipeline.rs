//! The engine's pipeline with in-memory stages: backpressure, retries, atomicity.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use ferry_engine::config::JobSettings;
use ferry_engine::testing::{FlightProbe, InjectedFailure, MemorySink, MemorySource};
use ferry_engine::{Job, JobStatus, OutputLayout};

use crate::support::sorted_rows;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
    ]))
}

/// `partitions` lists of `batches` batches of `rows` rows, each row with ~`width` bytes of text.
fn data(partitions: usize, batches: usize, rows: usize, width: usize) -> Vec<Vec<RecordBatch>> {
    let mut next = 0i64;
    (0..partitions)
        .map(|_| {
            (0..batches)
                .map(|_| {
                    let ids: Vec<i64> = (next..next + rows as i64).collect();
                    next += rows as i64;
                    let text: Vec<String> = ids.iter().map(|i| format!("{i:0width$}")).collect();
                    RecordBatch::try_new(
                        schema(),
                        vec![
                            Arc::new(Int64Array::from(ids)),
                            Arc::new(StringArray::from(text)),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        })
        .collect()
}

fn partitions_probe_batch() -> RecordBatch {
    data(1, 1, 1000, 100).remove(0).remove(0)
}

fn settings(parallel: usize, budget: u64) -> JobSettings {
    let mut s = JobSettings::new("test");
    s.parallel_copies = parallel.try_into().unwrap();
    s.max_buffer_bytes = budget;
    s.initial_backoff = Duration::from_millis(1);
    s.max_backoff = Duration::from_millis(5);
    s
}

fn run(job: Job) -> ferry_engine::JobReport {
    actix::System::new().block_on(ferry_engine::run(job))
}

#[test]
fn slow_sink_keeps_data_in_flight_within_the_budget() {
    let budget = 2 << 20;
    let probe = Arc::new(FlightProbe::default());
    // 4 partitions x 40 batches of ~100 KiB: ~16 MiB, eight times the budget.
    let partitions = data(4, 40, 1000, 100);
    let batch_bytes = partitions[0][0].get_array_memory_size() as u64;
    let total: u64 = partitions
        .iter()
        .flatten()
        .map(|b| b.get_array_memory_size() as u64)
        .sum();
    assert!(
        total > 6 * budget,
        "the data must be much larger than the budget"
    );
    let source = MemorySource::new(schema(), partitions).with_probe(probe.clone());
    let sink = MemorySink::new(OutputLayout::PerPartition)
        .with_write_delay(Duration::from_millis(2))
        .with_probe(probe.clone());
    let report = run(Job {
        settings: settings(4, budget),
        source: Arc::new(source),
        sink: Arc::new(sink.clone()),
    });
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(report.rows_written, 160_000);
    // A batch holds budget for its memory size until encoded, then for its encoded size until
    // written: the budget admits at most budget / (the smaller of the two) items, and each
    // of the 4 readers may hold one more batch while it waits for budget.
    let encoded = {
        use ferry_engine::Encoder;
        let mut e = ferry_engine::testing::IpcStreamEncoder::new(&schema()).unwrap();
        e.encode(&partitions_probe_batch()).unwrap();
        e.encode(&partitions_probe_batch()).unwrap().unwrap().len() as u64
    };
    let bound = budget.div_ceil(encoded.min(batch_bytes)) + 4;
    assert!(
        probe.peak_in_flight() <= bound,
        "peak {} batches > bound {bound}",
        probe.peak_in_flight()
    );
    assert!(
        probe.peak_in_flight() >= 8,
        "the budget was used: peak {}",
        probe.peak_in_flight()
    );
    assert_eq!(
        sink.published().iter().map(|b| b.num_rows()).sum::<usize>(),
        160_000
    );
    assert_eq!(
        report.bottleneck,
        Some(ferry_engine::Stage::Sink),
        "{report}"
    );
}

#[test]
fn a_source_failing_twice_resumes_from_its_checkpoint() {
    let partitions = data(3, 10, 100, 8);
    let expected = sorted_rows(&partitions.iter().flatten().cloned().collect::<Vec<_>>());
    let failing = MemorySource::new(schema(), partitions.clone()).with_failure(InjectedFailure {
        partition: 1,
        before_batch: 6,
        times: 2,
        retryable: true,
    });
    let opens = failing.opens();
    let sink = MemorySink::new(OutputLayout::PerPartition);
    let report = run(Job {
        settings: settings(2, 64 << 20),
        source: Arc::new(failing),
        sink: Arc::new(sink.clone()),
    });
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(report.retries, 2);
    assert_eq!(
        opens.load(SeqCst),
        3 + 2,
        "each retry reopens only the failing partition"
    );
    assert_eq!(report.rows_read, 3000);
    assert_eq!(
        sorted_rows(&sink.published()),
        expected,
        "identical output, no duplicates"
    );
}

#[test]
fn a_non_retryable_failure_publishes_nothing() {
    let failing = MemorySource::new(schema(), data(4, 10, 100, 8)).with_failure(InjectedFailure {
        partition: 2,
        before_batch: 5,
        times: 1,
        retryable: false,
    });
    let sink = MemorySink::new(OutputLayout::PerPartition);
    let report = run(Job {
        settings: settings(2, 64 << 20),
        source: Arc::new(failing),
        sink: Arc::new(sink.clone()),
    });
    assert_eq!(report.status, JobStatus::Failed);
    let message = &report.error.as_ref().unwrap().message;
    assert!(
        message.contains("partition 2") && message.contains("injected failure"),
        "{message}"
    );
    assert!(sink.published_names().is_empty(), "nothing published");
    assert!(
        sink.leftovers().is_empty(),
        "staged outputs removed: {:?}",
        sink.leftovers()
    );
}

#[test]
fn retries_give_up_after_max_attempts() {
    let failing = MemorySource::new(schema(), data(1, 4, 10, 8)).with_failure(InjectedFailure {
        partition: 0,
        before_batch: 2,
        times: 100,
        retryable: true,
    });
    let sink = MemorySink::new(OutputLayout::Single);
    let mut s = settings(1, 64 << 20);
    s.max_attempts = 3.try_into().unwrap();
    let report = run(Job {
        settings: s,
        source: Arc::new(failing),
        sink: Arc::new(sink.clone()),
    });
    assert_eq!(report.status, JobStatus::Failed);
    assert!(
        report
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("after 3 attempts"),
        "{report}"
    );
    assert!(sink.published_names().is_empty() && sink.leftovers().is_empty());
}

#[test]
fn a_failing_sink_write_restarts_the_output_without_duplicates() {
    let partitions = data(2, 5, 50, 8);
    let expected = sorted_rows(&partitions.iter().flatten().cloned().collect::<Vec<_>>());
    let sink = MemorySink::new(OutputLayout::Single).with_failing_writes(1);
    let report = run(Job {
        settings: settings(2, 64 << 20),
        source: Arc::new(MemorySource::new(schema(), partitions)),
        sink: Arc::new(sink.clone()),
    });
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(report.retries, 1);
    assert_eq!(report.rows_written, 500);
    assert_eq!(sorted_rows(&sink.published()), expected);
    assert_eq!(sink.published_names().len(), 1);
}

#[test]
fn the_commit_gate_decides_whether_a_job_publishes() {
    let gate = |answer: ferry_engine::Result<bool>| {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let answer = Arc::new(std::sync::Mutex::new(Some(answer)));
        let gate = ferry_engine::config::CommitGate::new(move || {
            counter.fetch_add(1, SeqCst);
            let answer = answer.lock().unwrap().take().unwrap();
            Box::pin(async move { answer })
        });
        (gate, asked)
    };
    let job = |gate| {
        let sink = MemorySink::new(OutputLayout::PerPartition);
        let mut settings = settings(2, 64 << 20);
        settings.commit_gate = Some(gate);
        let report = run(Job {
            settings,
            source: Arc::new(MemorySource::new(schema(), data(3, 4, 100, 8))),
            sink: Arc::new(sink.clone()),
        });
        (report, sink)
    };
    // Asked once, after all the data is staged: yes publishes.
    let (yes, asked) = gate(Ok(true));
    let (report, sink) = job(yes);
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(asked.load(SeqCst), 1);
    assert_eq!(sink.published_names().len(), 3);
    // No (the lease was lost): cancelled, nothing published, staged outputs removed.
    let (no, _) = gate(Ok(false));
    let (report, sink) = job(no);
    assert_eq!(report.status, JobStatus::Cancelled);
    let message = &report.error.as_ref().unwrap().message;
    assert!(message.contains("lost the job's lease"), "{message}");
    assert!(sink.published_names().is_empty() && sink.leftovers().is_empty());
    // The gate cannot answer: failed, nothing published.
    let (broken, _) = gate(Err(ferry_engine::Error::store("queue unreachable")));
    let (report, sink) = job(broken);
    assert_eq!(report.status, JobStatus::Failed);
    let message = &report.error.as_ref().unwrap().message;
    assert!(
        message.contains("cannot confirm the job's lease"),
        "{message}"
    );
    assert!(sink.published_names().is_empty() && sink.leftovers().is_empty());
}
