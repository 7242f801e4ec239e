//! The intake's logic on an in-memory channel in paused time: lease renewal, a lost lease,
//! cancellation, drain, hand-back, refused and malformed jobs, the memory limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr};
use ferry_engine::config::CommitGate;
use ferry_engine::report::{CountUnit, RunOutcome};
use ferry_engine::{Committed, Error, JobControl, JobReport, JobStatus, Result};
use futures::future::BoxFuture;
use tokio::time::Instant;

use super::admin::NodeView;
use super::memory::MemoryChannel;
use super::runner::{JobRunner, Observe};
use super::{Drain, IntakeConfig, JobIntake};
use ferry_connectors::control::membership::{
    AuthKey, Member, NodeKey, RuntimeKeys, Standing, answer_registrations, remove_node,
    rotate_auth_key,
};
use ferry_connectors::control::trust::{Signer, Verifier, init, read_identity};
use ferry_connectors::control::{Envelope, FinishedJob};

const LEASE: Duration = Duration::from_secs(30);

/// Runs jobs `{"name", "secs", "budget"}` by waiting `secs`, then asking the gate; the name
/// `refused` fails admission.
#[derive(Default)]
struct FakeRunner {
    /// Memory the node may hand out (`fits`).
    memory: u64,
    /// Each run's job name and start.
    started: Mutex<Vec<(String, Instant)>>,
}

impl FakeRunner {
    fn started(&self) -> Vec<(String, Instant)> {
        self.started.lock().unwrap().clone()
    }
}

impl JobRunner for FakeRunner {
    type Job = (String, Duration);

    fn admit(&self, job: &serde_json::Value) -> Result<(Self::Job, u64)> {
        let name = job["name"].as_str().unwrap_or("?").to_string();
        if name == "refused" {
            return Err(Error::forbidden(
                "node policy: this job is not allowed here",
            ));
        }
        let secs = Duration::from_secs(job["secs"].as_u64().unwrap_or(1));
        Ok(((name, secs), job["budget"].as_u64().unwrap_or(0)))
    }

    fn fits(&self, held: u64, budget: u64) -> bool {
        self.memory == 0 || held + budget <= self.memory
    }

    fn run(
        &self,
        (name, secs): Self::Job,
        gate: CommitGate,
        observe: Observe,
    ) -> BoxFuture<'static, Vec<JobReport>> {
        self.started
            .lock()
            .unwrap()
            .push((name.clone(), Instant::now()));
        Box::pin(async move {
            let control = JobControl::new();
            observe(&control);
            let started = Instant::now();
            let result = tokio::select! {
                _ = control.cancel.cancelled() => Err(Error::cancelled("the job was cancelled")),
                _ = tokio::time::sleep(secs) => gate.check().await.map(|()| Committed::default()),
            };
            let outcome = RunOutcome {
                job: name,
                kinds: ("memory", "memory"),
                secs: started.elapsed().as_secs_f64(),
                result,
                skipped_sample: Vec::new(),
                unit: CountUnit::Rows,
                figures: None,
            };
            vec![JobReport::build(outcome, &control.progress)]
        })
    }
}

/// Runs `test` on an actix system whose clock is paused (it jumps ahead whenever every task
/// waits).
fn paused<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) {
    actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    })
    .block_on(test());
}

/// Starts node `a` with `max_jobs` slots and a `grace` period.
fn start(
    channel: &Arc<MemoryChannel>,
    runner: &Arc<FakeRunner>,
    max_jobs: usize,
    grace: Duration,
) -> (
    Addr<JobIntake<FakeRunner>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    start_verified(channel, runner, max_jobs, grace, None, None)
}

/// [`start`], the node running only jobs that `verifier` accepts.
fn start_verified(
    channel: &Arc<MemoryChannel>,
    runner: &Arc<FakeRunner>,
    max_jobs: usize,
    grace: Duration,
    verifier: Option<Arc<Verifier>>,
    member: Option<Arc<Member>>,
) -> (
    Addr<JobIntake<FakeRunner>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let view = Arc::new(NodeView {
        node: "a".into(),
        max_concurrent_jobs: max_jobs,
        jobs: Mutex::default(),
        draining: Default::default(),
    });
    let config = IntakeConfig {
        node: "a".into(),
        max_jobs,
        poll: Duration::from_secs(1),
        grace,
        admin: None,
        verifier,
        member,
    };
    let (intake, stopped) = JobIntake::new(config, channel.clone(), runner.clone(), view);
    (intake.start(), stopped)
}

/// Waits (in virtual time) until `done` holds, for at most `within`.
async fn until(within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job(name: &str, secs: u64) -> serde_json::Value {
    serde_json::json!({"name": name, "secs": secs})
}

#[test]
fn a_job_longer_than_its_lease_keeps_it_and_reports_once() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        // Two slots: with one free, the node also puts back expired leases every tick.
        let _node = start(&channel, &runner, 2, Duration::from_secs(60));
        channel.submit("long", job("long", 10 * LEASE.as_secs()));
        until(Duration::from_secs(400), "the job finished", || {
            channel.finished("long").is_some()
        })
        .await;
        let finished = channel.finished("long").unwrap();
        assert_eq!(
            (finished.status, finished.attempt),
            (JobStatus::Succeeded, 1)
        );
        assert_eq!(channel.lease_count("long"), 1, "never leased again");
        assert_eq!(runner.started().len(), 1, "never run twice");
    });
}

#[test]
fn a_lost_lease_stops_the_job_and_the_node_reports_nothing() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let _node = start(&channel, &runner, 1, Duration::from_secs(60));
        channel.submit("taken", job("taken", 300));
        until(Duration::from_secs(10), "the job started", || {
            !runner.started().is_empty()
        })
        .await;
        channel.steal("taken", "b");
        until(Duration::from_secs(60), "the node let the job go", || {
            channel
                .last_heartbeat()
                .is_some_and(|h| h.running.is_empty())
        })
        .await;
        // Well past the job's own end: had it run on, it would have reported by now.
        tokio::time::sleep(Duration::from_secs(400)).await;
        assert!(
            channel.finished("taken").is_none(),
            "another node reports it"
        );
        assert_eq!(channel.holder("taken").as_deref(), Some("b"));
    });
}

#[test]
fn a_cancel_request_stops_the_job_and_reports_it_cancelled() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let _node = start(&channel, &runner, 1, Duration::from_secs(60));
        channel.submit("stop-me", job("stop-me", 300));
        until(Duration::from_secs(10), "the job started", || {
            !runner.started().is_empty()
        })
        .await;
        let asked = Instant::now();
        channel.request_cancel("stop-me");
        until(Duration::from_secs(10), "the job ended", || {
            channel.finished("stop-me").is_some()
        })
        .await;
        assert_eq!(
            channel.finished("stop-me").unwrap().status,
            JobStatus::Cancelled
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
    });
}

#[test]
fn a_drain_lets_running_jobs_finish_leases_nothing_more_and_stops() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let (node, stopped) = start(&channel, &runner, 2, Duration::from_secs(60));
        channel.submit("running", job("running", 20));
        until(Duration::from_secs(10), "the job started", || {
            !runner.started().is_empty()
        })
        .await;
        node.do_send(Drain);
        channel.submit("later", job("later", 1));
        tokio::time::timeout(Duration::from_secs(60), stopped)
            .await
            .expect("the node stopped once its job ended")
            .unwrap();
        assert_eq!(
            channel.finished("running").unwrap().status,
            JobStatus::Succeeded
        );
        assert_eq!(channel.queued_ids(), vec!["later".to_string()]);
        assert_eq!(runner.started().len(), 1);
        let last = channel.last_heartbeat().unwrap();
        assert!(last.stopped && last.draining, "{last:?}");
    });
}

#[test]
fn a_drain_hands_back_what_outlives_the_grace_period() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let grace = Duration::from_secs(5);
        let (node, stopped) = start(&channel, &runner, 1, grace);
        channel.submit("long", job("long", 300));
        until(Duration::from_secs(10), "the job started", || {
            !runner.started().is_empty()
        })
        .await;
        let draining = Instant::now();
        node.do_send(Drain);
        tokio::time::timeout(Duration::from_secs(30), stopped)
            .await
            .expect("the node stopped after its grace period")
            .unwrap();
        assert!(draining.elapsed() >= grace, "{:?}", draining.elapsed());
        assert!(
            channel.finished("long").is_none(),
            "handed back, not reported"
        );
        assert_eq!(channel.released(), vec!["long".to_string()]);
        assert_eq!(channel.queued_ids(), vec!["long".to_string()]);
    });
}

#[test]
fn malformed_and_refused_jobs_fail_once_and_never_run() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let _node = start(&channel, &runner, 2, Duration::from_secs(60));
        channel.submit_malformed("garbage", "the message is not valid JSON");
        channel.submit("refused", job("refused", 1));
        until(Duration::from_secs(10), "both were recorded", || {
            channel.finished("garbage").is_some() && channel.finished("refused").is_some()
        })
        .await;
        for id in ["garbage", "refused"] {
            let f = channel.finished(id).unwrap();
            assert_eq!((f.status, f.attempt), (JobStatus::Failed, 1), "{f:?}");
        }
        let refused = channel.finished("refused").unwrap();
        let why = &refused.reports[0].error.as_ref().unwrap().message;
        assert!(
            why.contains("not allowed here") && why.contains("job refused"),
            "{why}"
        );
        assert!(runner.started().is_empty());
    });
}

#[test]
fn a_job_that_does_not_fit_in_memory_waits_for_a_running_one() {
    paused(|| async {
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner {
            memory: 100,
            ..FakeRunner::default()
        });
        let _node = start(&channel, &runner, 2, Duration::from_secs(60));
        for id in ["first", "second"] {
            channel.submit(
                id,
                serde_json::json!({"name": id, "secs": 10, "budget": 60}),
            );
        }
        until(Duration::from_secs(60), "both ran", || {
            channel.finished("first").is_some() && channel.finished("second").is_some()
        })
        .await;
        let started = runner.started();
        assert_eq!(started.len(), 2, "{started:?}");
        assert!(
            started[1].1 >= started[0].1 + Duration::from_secs(10),
            "the second started once the first ended: {started:?}"
        );
        assert_eq!(channel.released(), vec!["second".to_string()]);
        let second = channel.finished("second").unwrap();
        assert_eq!((second.status, second.attempt), (JobStatus::Succeeded, 1));
    });
}

#[test]
fn with_trust_only_signed_untampered_unreplayed_jobs_run() {
    paused(|| async {
        let keys = tempfile::tempdir().unwrap();
        let identity = init(keys.path()).unwrap();
        let signer = Signer::load(
            &keys.path().join("runtime.json"),
            &keys.path().join("signing.key"),
        )
        .unwrap();
        let verifier = Arc::new(
            Verifier::new(read_identity(&keys.path().join("runtime.json")).unwrap()).unwrap(),
        );
        assert_eq!(verifier.runtime(), identity.runtime);
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        let runner = Arc::new(FakeRunner::default());
        let _node = start_verified(
            &channel,
            &runner,
            2,
            Duration::from_secs(60),
            Some(verifier),
            None,
        );
        let signed = |id: &str| {
            let mut envelope = Envelope::new(id.to_string(), job(id, 1));
            signer.sign(&mut envelope, Duration::from_secs(3600));
            envelope
        };
        channel.submit_envelope(signed("good"));
        channel.submit("unsigned", job("unsigned", 1));
        let mut tampered = signed("tampered");
        tampered.job["secs"] = serde_json::json!(2);
        channel.submit_envelope(tampered);
        // A signed job that ran already, sent again as it was.
        channel.record(FinishedJob::failed(
            "replayed",
            "b",
            1,
            "the original run's record",
        ));
        channel.submit_envelope(signed("replayed"));
        until(Duration::from_secs(30), "every job was handled", || {
            ["good", "unsigned", "tampered"]
                .iter()
                .all(|id| channel.finished(id).is_some())
                && !channel.rejected().is_empty()
        })
        .await;
        assert_eq!(
            channel.finished("good").unwrap().status,
            JobStatus::Succeeded
        );
        for (id, why) in [("unsigned", "not signed"), ("tampered", "does not match")] {
            let f = channel.finished(id).unwrap();
            assert_eq!(f.status, JobStatus::Failed, "{id}");
            let message = &f.reports[0].error.as_ref().unwrap().message;
            assert!(message.contains(why), "{id}: {message}");
        }
        let rejected = channel.rejected();
        assert_eq!(rejected.len(), 1);
        assert!(
            rejected[0].0 == "replayed" && rejected[0].1.contains("replayed"),
            "{rejected:?}"
        );
        let record = channel.finished("replayed").unwrap();
        assert_eq!(record.node, "b", "the original record is untouched");
        let ran: Vec<String> = runner.started().into_iter().map(|(n, _)| n).collect();
        assert_eq!(ran, vec!["good".to_string()]);
    });
}

#[test]
fn a_registered_node_takes_work_only_while_the_runtime_s_grant_holds() {
    paused(|| async {
        let keys = tempfile::tempdir().unwrap();
        init(keys.path()).unwrap();
        let signer = Signer::load(
            &keys.path().join("runtime.json"),
            &keys.path().join("signing.key"),
        )
        .unwrap();
        let verifier = Arc::new(
            Verifier::new(read_identity(&keys.path().join("runtime.json")).unwrap()).unwrap(),
        );
        let node_key = NodeKey::load_or_create(&keys.path().join("node/node.key")).unwrap();
        let auth = AuthKey::load(&keys.path().join("auth.key")).unwrap();
        let member = Arc::new(Member::new("a", verifier.clone(), node_key, Some(auth)));
        let channel = Arc::new(MemoryChannel::new(LEASE, 3));
        member.register(channel.as_ref()).await.unwrap();
        let runner = Arc::new(FakeRunner::default());
        let _node = start_verified(
            &channel,
            &runner,
            2,
            Duration::from_secs(60),
            Some(verifier),
            Some(member.clone()),
        );
        let signed = |id: &str| {
            let mut envelope = Envelope::new(id.to_string(), job(id, 1));
            signer.sign(&mut envelope, Duration::from_secs(3600));
            envelope
        };
        channel.submit_envelope(signed("first"));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            runner.started().is_empty() && channel.finished("first").is_none(),
            "no work before the runtime's grant"
        );

        let runtime = RuntimeKeys::load(keys.path()).unwrap();
        let answers = answer_registrations(channel.as_ref(), &runtime)
            .await
            .unwrap();
        assert_eq!(answers.len(), 1);
        assert!(answers[0].to_string().contains("granted"), "{answers:?}");
        until(
            Duration::from_secs(30),
            "the granted node ran the job",
            || channel.finished("first").is_some(),
        )
        .await;
        assert!(member.granted());

        // A rotated authentication key cuts the node off at the next sync.
        rotate_auth_key(keys.path()).unwrap();
        let runtime = RuntimeKeys::load(keys.path()).unwrap();
        let answers = answer_registrations(channel.as_ref(), &runtime)
            .await
            .unwrap();
        assert!(
            answers[0]
                .to_string()
                .contains("current authentication key"),
            "{answers:?}"
        );
        channel.submit_envelope(signed("second"));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!member.granted());
        assert!(
            channel.finished("second").is_none(),
            "a cut-off node takes no work"
        );

        // The node registers again with the new key (as `ferry node register` does beside
        // the running node) and works again; then an operator removes it.
        let again = Member::new(
            "a",
            Arc::new(
                Verifier::new(read_identity(&keys.path().join("runtime.json")).unwrap()).unwrap(),
            ),
            NodeKey::load_or_create(&keys.path().join("node/node.key")).unwrap(),
            Some(AuthKey::load(&keys.path().join("auth.key")).unwrap()),
        );
        again.register(channel.as_ref()).await.unwrap();
        answer_registrations(channel.as_ref(), &runtime)
            .await
            .unwrap();
        until(Duration::from_secs(30), "the node works again", || {
            channel.finished("second").is_some()
        })
        .await;
        assert!(remove_node(channel.as_ref(), "a").await.unwrap());
        answer_registrations(channel.as_ref(), &runtime)
            .await
            .unwrap();
        channel.submit_envelope(signed("third"));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!member.granted());
        assert!(matches!(
            again.refresh(channel.as_ref()).await,
            Standing::Refused(why) if why.contains("ferry node remove")
        ));
        // Registering again with the same key does not undo the operator's decision.
        again.register(channel.as_ref()).await.unwrap();
        answer_registrations(channel.as_ref(), &runtime)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            channel.finished("third").is_none(),
            "a removed node takes no work"
        );
        let ran: Vec<String> = runner.started().into_iter().map(|(n, _)| n).collect();
        assert_eq!(ran, vec!["first".to_string(), "second".to_string()]);
    });
}
