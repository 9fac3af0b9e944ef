//! The clock a replay waits on: real time ([`RealClock`], tokio's timer) or a virtual
//! clock ([`VirtualClock`]) that jumps to each due time at once, so schedules are
//! tested exactly and instantly.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Time since the replay started, and waiting for a later time.
pub trait Clock {
    /// Time elapsed since the clock started.
    fn elapsed(&self) -> Duration;
    /// Returns once [`Clock::elapsed`] is at least `offset` (at once if it already is).
    fn sleep_until(&self, offset: Duration) -> impl Future<Output = ()> + Send;
}

/// Real time, from the moment the clock is made.
#[derive(Debug, Clone, Copy)]
pub struct RealClock {
    start: tokio::time::Instant,
}

impl RealClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for RealClock {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep_until(&self, offset: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(self.start + offset)
    }
}

/// A clock that only moves when told: [`Clock::sleep_until`] jumps to the due time,
/// [`VirtualClock::advance`] models time spent working (for example a slow sink).
#[derive(Debug, Default)]
pub struct VirtualClock {
    nanos: AtomicU64,
}

impl VirtualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }
}

impl Clock for VirtualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, offset: Duration) -> impl Future<Output = ()> + Send {
        let target = offset.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.nanos.fetch_max(target, Ordering::SeqCst);
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn virtual_clock_jumps_forward_never_back() {
        let c = VirtualClock::new();
        c.sleep_until(Duration::from_secs(5)).await;
        assert_eq!(c.elapsed(), Duration::from_secs(5));
        c.sleep_until(Duration::from_secs(2)).await;
        assert_eq!(c.elapsed(), Duration::from_secs(5));
        c.advance(Duration::from_millis(250));
        assert_eq!(c.elapsed(), Duration::from_millis(5250));
    }
}
