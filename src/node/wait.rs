//! Waiting without burning a shared core.
//!
//! Measured on this kind of machine (`shared/research/rust-ecosystem.md` §2.3): with more
//! busy-spinning threads than cores, throughput falls 40x and latency reaches scheduler
//! time slices. So stages on shared cores spin briefly, then yield, then park for a short,
//! bounded time.

use std::cell::Cell;
use std::time::{Duration, Instant};

use disruptor::wait_strategies::WaitStrategy;
use disruptor::Sequence;

/// Spins before yielding.
const SPINS_MAX: u32 = 256;
/// Yields before parking.
const YIELDS_MAX: u32 = 64;
/// One park. Short: an idle stage wakes within this of new work.
const PARK: Duration = Duration::from_micros(50);

/// Spin, then yield, then park: for consumers on shared cores. The `disruptor` crate's
/// strategies are `Copy` and get `&self`, so the backoff counter lives in a thread-local,
/// reset whenever the awaited sequence moves on (the consumer made progress).
#[derive(Clone, Copy, Debug, Default)]
pub struct Backoff;

thread_local! {
    static STATE: Cell<(Sequence, u32)> = const { Cell::new((-1, 0)) };
}

impl WaitStrategy for Backoff {
    fn wait_for(&self, sequence: Sequence) {
        let (last, waits) = STATE.with(Cell::get);
        let waits = if last == sequence { waits } else { 0 };
        STATE.with(|s| s.set((sequence, waits.saturating_add(1))));
        pause(waits);
    }
}

/// One step of the spin-yield-park ladder; `waits` counts the steps taken so far.
pub fn pause(waits: u32) {
    if waits < SPINS_MAX {
        std::hint::spin_loop();
    } else if waits < SPINS_MAX + YIELDS_MAX {
        std::thread::yield_now();
    } else {
        std::thread::sleep(PARK);
    }
}

/// Retries `attempt` with the backoff ladder until it succeeds or `timeout` passes.
/// Returns `None` on timeout. The bound keeps a full ring from spinning forever.
pub fn retry_until<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    // The common case succeeds at once, before any clock read.
    if let Some(v) = attempt() {
        return Some(v);
    }
    let deadline = Instant::now() + timeout;
    // Each step lasts at most one park, so this bound exceeds any timeout we use.
    let steps_max = SPINS_MAX + YIELDS_MAX + (timeout.as_micros() / PARK.as_micros()) as u32 + 2;
    for waits in 0..steps_max {
        if let Some(v) = attempt() {
            return Some(v);
        }
        if waits >= SPINS_MAX && Instant::now() >= deadline {
            return None;
        }
        pause(waits);
    }
    attempt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_until_gives_up_after_the_timeout() {
        let start = Instant::now();
        let got: Option<()> = retry_until(Duration::from_millis(20), || None);
        assert!(got.is_none());
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }

    #[test]
    fn retry_until_returns_the_first_success() {
        let mut n = 0;
        let got = retry_until(Duration::from_secs(1), || {
            n += 1;
            (n == 300).then_some(n)
        });
        assert_eq!(got, Some(300));
    }
}
