//! Backpressure: bounded channels between stages and a byte budget per job.
//!
//! A batch takes a [`Reservation`] of the budget for its memory size when it is built (in a
//! source's [`ReadAhead`](crate::source::ReadAhead)) or read, and the reservation travels
//! with it, through the encoder (which keeps what it buffers) to the sink writer, which drops
//! it once the bytes are written. A slow sink therefore slows the reader:
//! memory never grows with the size of the data. As in Vector's limited queue, an item larger
//! than the whole budget still passes, alone, instead of deadlocking.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are counted in units of this many bytes, so that budgets of terabytes fit the
/// semaphore's `u32` acquisitions.
const UNIT: u64 = 1024;

/// A job's budget of in-flight bytes.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    semaphore: Arc<Semaphore>,
    units: u32,
}

impl ByteBudget {
    /// A budget of `bytes` (at least one unit of 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// A budget too large to bind, for reads outside a job (verification, benches, tests).
    pub fn unbounded() -> Self {
        Self::new(u64::MAX)
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.units) * UNIT
    }

    /// Bytes not reserved now.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// Reserves `bytes`, waiting until they are free. A request above the whole budget
    /// reserves the whole budget.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled call reserves nothing.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let units = self.units_for(bytes);
        match self.semaphore.clone().acquire_many_owned(units).await {
            Ok(permit) => Reservation {
                permit: Some(permit),
            },
            // The semaphore is never closed; an empty reservation is still correct.
            Err(_) => Reservation::empty(),
        }
    }

    /// Makes `held` cover `bytes` (at most the whole budget): keeps what it holds when that is
    /// enough and gives back any excess; else takes the difference if it is free now, and
    /// otherwise gives `held` back and waits for the whole amount in one request, so that
    /// no one holds part of the budget while waiting for more (two such holders could
    /// wait for each other forever).
    ///
    /// # Cancel safety
    /// Cancel safe in that a cancelled call holds nothing: `held` is then given back.
    pub async fn top_up(&self, mut held: Reservation, bytes: usize) -> Reservation {
        let need = u64::from(self.units_for(bytes)) * UNIT;
        if held.bytes() >= need {
            held.shrink_to(need as usize);
            return held;
        }
        if let Some(more) = self.try_reserve((need - held.bytes()) as usize) {
            held.merge(more);
            return held;
        }
        drop(held);
        self.reserve(bytes).await
    }

    /// Reserves `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let units = self.units_for(bytes);
        self.semaphore
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|permit| Reservation {
                permit: Some(permit),
            })
    }

    fn units_for(&self, bytes: usize) -> u32 {
        (bytes as u64)
            .div_ceil(UNIT)
            .clamp(1, u64::from(self.units)) as u32
    }
}

/// Bytes of the budget held by an item in flight; given back on drop.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// A reservation of nothing.
    pub fn empty() -> Self {
        Self { permit: None }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Adds `other`'s bytes to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.permit, other.permit) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// Takes up to `bytes` out of this reservation into a new one.
    pub fn split(&mut self, bytes: usize) -> Reservation {
        let Some(permit) = self.permit.as_mut() else {
            return Reservation::empty();
        };
        let units = ((bytes as u64).div_ceil(UNIT) as usize).min(permit.num_permits());
        if units == permit.num_permits() {
            return Reservation {
                permit: self.permit.take(),
            };
        }
        Reservation {
            permit: permit.split(units),
        }
    }

    /// Keeps at most `bytes` and gives the rest back to the budget.
    pub fn shrink_to(&mut self, bytes: usize) {
        let held = self.bytes();
        let keep = (bytes as u64).div_ceil(UNIT) * UNIT;
        if held > keep {
            drop(self.split((held - keep) as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_return_on_drop() {
        let budget = ByteBudget::new(10 * 1024);
        let a = budget.reserve(4 * 1024).await;
        assert_eq!(a.bytes(), 4 * 1024);
        assert_eq!(budget.available_bytes(), 6 * 1024);
        assert!(budget.try_reserve(7 * 1024).is_none());
        drop(a);
        assert_eq!(budget.available_bytes(), 10 * 1024);
    }

    #[tokio::test]
    async fn oversized_item_takes_the_whole_budget_and_passes() {
        let budget = ByteBudget::new(8 * 1024);
        let big = budget.reserve(1 << 20).await;
        assert_eq!(big.bytes(), 8 * 1024);
        assert!(budget.try_reserve(1).is_none());
        drop(big);
        assert!(budget.try_reserve(1).is_some());
    }

    #[tokio::test]
    async fn split_merge_and_shrink_keep_the_total() {
        let budget = ByteBudget::new(16 * 1024);
        let mut r = budget.reserve(8 * 1024).await;
        let part = r.split(3 * 1024);
        assert_eq!((r.bytes(), part.bytes()), (5 * 1024, 3 * 1024));
        r.merge(part);
        assert_eq!(r.bytes(), 8 * 1024);
        r.shrink_to(2 * 1024);
        assert_eq!(r.bytes(), 2 * 1024);
        assert_eq!(budget.available_bytes(), 14 * 1024);
        let all = r.split(1 << 30);
        assert_eq!((r.bytes(), all.bytes()), (0, 2 * 1024));
    }

    #[tokio::test]
    async fn top_up_takes_what_is_missing_or_waits_holding_nothing() {
        let budget = ByteBudget::new(16 * 1024);
        let held = budget.reserve(4 * 1024).await;
        let held = budget.top_up(held, 6 * 1024).await;
        assert_eq!(held.bytes(), 6 * 1024);
        let held = budget.top_up(held, 1024).await;
        assert_eq!(held.bytes(), 1024, "the excess goes back");
        assert_eq!(budget.available_bytes(), 15 * 1024);
        let all = budget.top_up(held, 1 << 30).await;
        assert_eq!(all.bytes(), 16 * 1024, "at most the whole budget");
    }

    #[tokio::test(start_paused = true)]
    async fn two_holders_that_both_need_more_do_not_wait_for_each_other() {
        // Each holds half of the budget and needs three quarters: had they kept their halves
        // while waiting, neither would ever get the quarter it lacks.
        let budget = ByteBudget::new(16 * 1024);
        let grow = |held: Reservation| {
            let budget = budget.clone();
            crate::task::spawn(async move { budget.top_up(held, 12 * 1024).await })
        };
        let a = grow(budget.reserve(8 * 1024).await);
        let b = grow(budget.reserve(8 * 1024).await);
        let deadline = std::time::Duration::from_secs(60);
        let first = tokio::time::timeout(deadline, a)
            .await
            .expect("a waited forever");
        assert_eq!(first.unwrap().bytes(), 12 * 1024);
        let second = tokio::time::timeout(deadline, b)
            .await
            .expect("b waited forever");
        assert_eq!(second.unwrap().bytes(), 12 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_resumes_when_bytes_come_back() {
        let budget = ByteBudget::new(4 * 1024);
        let held = budget.reserve(4 * 1024).await;
        let waiter = crate::task::spawn({
            let budget = budget.clone();
            async move { budget.reserve(2 * 1024).await.bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), 2 * 1024);
    }
}
