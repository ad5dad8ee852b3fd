//! Bounded retries: spin, then yield, then park briefly, until a deadline. For a
//! producer facing a full ring (it must not spin forever) and for control requests. Stage
//! threads waiting for work use the doorbell (`doorbell.rs`) instead.

use std::time::{Duration, Instant};

/// Spins before yielding.
const SPINS_MAX: u32 = 256;
/// Yields before parking.
const YIELDS_MAX: u32 = 64;
/// One park. Short: an idle stage wakes within this of new work.
const PARK: Duration = Duration::from_micros(50);

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
