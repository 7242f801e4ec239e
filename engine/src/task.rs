//! Spawning work that something owns: the one place ferry spawns tokio tasks and blocking
//! work (clippy's `disallowed-methods` bans the bare calls everywhere else).
//!
//! [`spawn`] returns an [`OwnedTask`] that aborts the task when dropped, so a stream that
//! holds its tasks cancels them when it is dropped. [`spawn_blocking`] cannot stop a running
//! thread: the closure must end when the channel it feeds closes; dropping its handle only
//! detaches it. [`spawn_detached`] is for work that ends by itself (a connection's driver,
//! which ends with its client).
//!
//! Every piece of work is counted in the [`LiveWork`] scope of the thread that spawned it,
//! if any: the conformance suites run a store on a current-thread runtime inside a scope and
//! check that dropping a stream leaves nothing running.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

thread_local! {
    static SCOPE: RefCell<Option<Arc<AtomicUsize>>> = const { RefCell::new(None) };
}

/// Counts the tasks and blocking closures spawned on this thread while it is entered, until
/// each of them ends.
#[derive(Debug, Clone, Default)]
pub struct LiveWork(Arc<AtomicUsize>);

/// Leaves a [`LiveWork`] scope when dropped.
#[must_use = "the scope ends when this guard is dropped"]
pub struct Entered(Option<Arc<AtomicUsize>>);

impl LiveWork {
    /// A new scope with nothing in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts what this thread spawns from now until the guard is dropped.
    pub fn enter(&self) -> Entered {
        Entered(SCOPE.with(|s| s.borrow_mut().replace(self.0.clone())))
    }

    /// Tasks and blocking closures of this scope that have not ended.
    pub fn running(&self) -> usize {
        self.0.load(SeqCst)
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let previous = self.0.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// One counted piece of work; uncounted when dropped.
struct Counted(Option<Arc<AtomicUsize>>);

impl Counted {
    fn here() -> Self {
        let scope = SCOPE.with(|s| s.borrow().clone());
        if let Some(count) = &scope {
            count.fetch_add(1, SeqCst);
        }
        Counted(scope)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, SeqCst);
        }
    }
}

/// A spawned task that is aborted when its handle is dropped.
#[derive(Debug)]
pub struct OwnedTask<T>(JoinHandle<T>);

impl<T> OwnedTask<T> {
    /// Aborts the task now.
    pub fn abort(&self) {
        self.0.abort();
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// The items of `rx` as a stream that owns `work`, which feeds it: dropping the stream
/// aborts the work (a source's read ends with its stream).
pub fn owning_stream<T, W>(
    rx: tokio::sync::mpsc::Receiver<T>,
    work: OwnedTask<W>,
) -> futures::stream::BoxStream<'static, T>
where
    T: Send + 'static,
    W: Send + 'static,
{
    use futures::StreamExt;
    futures::stream::unfold((rx, work), |(mut rx, work)| async move {
        rx.recv().await.map(|item| (item, (rx, work)))
    })
    .boxed()
}

/// Spawns `future` on the current runtime; the task is aborted when the handle is dropped.
#[allow(clippy::disallowed_methods)]
pub fn spawn<F>(future: F) -> OwnedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let counted = Counted::here();
    OwnedTask(tokio::spawn(async move {
        let _counted = counted;
        future.await
    }))
}

/// Spawns `future` on the runtime of `handle` (from a blocking thread); the task is aborted
/// when the returned handle is dropped.
#[allow(clippy::disallowed_methods)]
pub fn spawn_on<F>(handle: &tokio::runtime::Handle, future: F) -> OwnedTask<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let counted = Counted::here();
    OwnedTask(handle.spawn(async move {
        let _counted = counted;
        future.await
    }))
}

/// Spawns `future` to run until it ends by itself (a connection's driver, which ends when
/// its client is dropped).
#[allow(clippy::disallowed_methods)]
pub fn spawn_detached<F>(future: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let counted = Counted::here();
    tokio::spawn(async move {
        let _counted = counted;
        future.await
    });
}

/// Runs `f` on the blocking pool. A running closure cannot be stopped: it must return when
/// the channel it feeds or reads closes.
#[allow(clippy::disallowed_methods)]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let counted = Counted::here();
    tokio::task::spawn_blocking(move || {
        // What the closure spawns counts in the same scope.
        let _entered = counted.0.clone().map(|c| LiveWork(c).enter());
        let _counted = counted;
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_handle_aborts_its_task_and_the_scope_sees_it_end() {
        let live = LiveWork::new();
        let _entered = live.enter();
        let task = spawn(std::future::pending::<()>());
        tokio::task::yield_now().await;
        assert_eq!(live.running(), 1);
        drop(task);
        for _ in 0..100 {
            if live.running() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(live.running(), 0, "the aborted task is gone");
    }

    #[tokio::test]
    async fn blocking_work_is_counted_until_it_returns() {
        let live = LiveWork::new();
        let _entered = live.enter();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = spawn_blocking(move || rx.recv().is_err());
        assert_eq!(live.running(), 1);
        drop(tx);
        assert!(handle.await.unwrap(), "the closure saw its channel close");
        assert_eq!(live.running(), 0);
        let outside = LiveWork::new();
        drop(_entered);
        let _ = spawn_blocking(|| ()).await;
        assert_eq!(outside.running(), 0, "work outside a scope is not counted");
    }
}
