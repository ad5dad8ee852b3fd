//! Request rate limits and connection limits. Time comes from the caller (`now_ns`), so
//! the rules are tested without sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

/// A token bucket: `rate_per_s` tokens a second, at most one second's worth banked. It
/// also counts the requests it refused in the current one-second window, to tell a client
/// that overshoots now and then from one that ignores its rejects.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_s: u64,
    tokens: Budget,
    refused_window_start_ns: u64,
    refused_in_window: u64,
}

/// Refusals in one second beyond which a client is abusing its limit: it has sent, in
/// that second, its whole allowance and as much again after being told no.
pub const fn refusals_abusive_per_s(rate_per_s: u64) -> u64 {
    rate_per_s
}

const SCALE: i128 = 1_000_000_000;

impl TokenBucket {
    pub fn new(rate_per_s: u64, now_ns: u64) -> TokenBucket {
        TokenBucket {
            rate_per_s,
            tokens: Budget::new(rate_per_s, now_ns),
            refused_window_start_ns: now_ns,
            refused_in_window: 0,
        }
    }

    /// Counts a refused request; true when the refusals of the current one-second window
    /// are more than [`refusals_abusive_per_s`].
    pub fn refuse(&mut self, now_ns: u64) -> bool {
        if now_ns.saturating_sub(self.refused_window_start_ns) >= 1_000_000_000 {
            self.refused_window_start_ns = now_ns;
            self.refused_in_window = 0;
        }
        self.refused_in_window += 1;
        self.refused_in_window > refusals_abusive_per_s(self.rate_per_s)
    }

    /// True if [`TokenBucket::try_take`] at `now_ns` would take a token (nothing changes).
    pub fn has_token(&self, now_ns: u64) -> bool {
        self.tokens.available_scaled_at(now_ns) >= SCALE
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ns: u64) -> bool {
        self.tokens.refill(now_ns);
        if self.tokens.available_scaled >= SCALE {
            self.tokens.available_scaled -= SCALE;
            true
        } else {
            false
        }
    }
}

/// A budget: `rate_per_s` units a second, at most one second's worth banked. The token
/// bucket takes whole tokens from it; the inflate budget charges bytes after the fact
/// (the size of an inflated message is known only once inflated), so it may go into debt
/// by the last charge, and nothing more is allowed until the debt is refilled.
#[derive(Clone, Debug)]
pub struct Budget {
    rate_per_s: u64,
    /// Units scaled by 1e9 so refills in nanoseconds stay integers; negative in debt.
    available_scaled: i128,
    refilled_at_ns: u64,
}

impl Budget {
    pub fn new(rate_per_s: u64, now_ns: u64) -> Budget {
        assert!(rate_per_s > 0);
        Budget {
            rate_per_s,
            available_scaled: rate_per_s as i128 * SCALE,
            refilled_at_ns: now_ns,
        }
    }

    /// What is available at `now_ns` (nothing changes).
    fn available_scaled_at(&self, now_ns: u64) -> i128 {
        let elapsed_ns = now_ns.saturating_sub(self.refilled_at_ns) as i128;
        let capacity = self.rate_per_s as i128 * SCALE;
        (self.available_scaled + elapsed_ns * self.rate_per_s as i128).min(capacity)
    }

    fn refill(&mut self, now_ns: u64) {
        self.available_scaled = self.available_scaled_at(now_ns);
        self.refilled_at_ns = now_ns.max(self.refilled_at_ns);
    }

    /// True while the budget is not spent (or in debt).
    pub fn has_room(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.available_scaled > 0
    }

    /// Spends `units`, into debt if need be.
    pub fn charge(&mut self, units: u64, now_ns: u64) {
        self.refill(now_ns);
        self.available_scaled -= units as i128 * SCALE;
    }
}

/// Open connections per remote address, against a limit.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    per_ip: HashMap<IpAddr, u32>,
}

impl ConnectionCounts {
    /// Counts a new connection from `ip` unless it would exceed `limit`.
    pub fn try_add(&mut self, ip: IpAddr, limit: u32) -> bool {
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            assert!(*n > 0);
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn count(&self, ip: IpAddr) -> u32 {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// The login nonces one key used recently, to refuse a replayed login. Nonces leave after
/// `keep_ns` (twice the login freshness window: a login older than that fails the
/// timestamp check anyway). Membership is a hash lookup, so a key that logs in very often
/// costs each login O(1), not a scan of everything it sent in the window.
#[derive(Debug, Default)]
pub struct NoncesSeen {
    by_time: VecDeque<(u64, u64)>,
    set: HashSet<u64>,
}

impl NoncesSeen {
    /// Records `nonce` at `now_ns`; false if it was seen within `keep_ns` (a replay).
    pub fn admit(&mut self, nonce: u64, now_ns: u64, keep_ns: u64) -> bool {
        while let Some(&(at, old)) = self.by_time.front() {
            if now_ns.saturating_sub(at) <= keep_ns {
                break;
            }
            self.by_time.pop_front();
            self.set.remove(&old);
        }
        if !self.set.insert(nonce) {
            return false;
        }
        self.by_time.push_back((now_ns, nonce));
        debug_assert_eq!(self.by_time.len(), self.set.len());
        true
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_refused_while_remembered_and_forgotten_after_the_window() {
        let mut seen = NoncesSeen::default();
        let keep_ns = 10;
        assert!(seen.admit(7, 100, keep_ns));
        assert!(seen.admit(8, 105, keep_ns));
        assert!(!seen.admit(7, 110, keep_ns), "a replay within the window");
        assert!(
            seen.admit(7, 111, keep_ns),
            "forgotten once older than the window"
        );
        assert_eq!(seen.len(), 2, "8 and the new 7; the old 7 left");
        assert!(seen.admit(9, 1_000, keep_ns));
        assert_eq!(seen.len(), 1, "everything older left");
    }

    const SECOND_NS: u64 = 1_000_000_000;

    #[test]
    fn a_bucket_allows_one_seconds_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 0);
        assert_eq!((0..20).filter(|_| b.try_take(0)).count(), 10);
        // A tenth of a second buys one more request.
        assert!(b.try_take(SECOND_NS / 10));
        assert!(!b.try_take(SECOND_NS / 10));
        // A long pause banks at most one second's worth.
        assert_eq!((0..20).filter(|_| b.try_take(100 * SECOND_NS)).count(), 10);
    }

    #[test]
    fn refusals_beyond_a_seconds_allowance_within_one_second_are_abuse() {
        let mut b = TokenBucket::new(10, 0);
        // Ten refusals in a second: tolerated; the eleventh is abuse.
        assert!((0..10).all(|i| !b.refuse(i * SECOND_NS / 20)));
        assert!(b.refuse(SECOND_NS / 2));
        // A new second starts a new count.
        let mut b = TokenBucket::new(10, 0);
        assert!((0..10).all(|_| !b.refuse(0)));
        assert!((0..10).all(|_| !b.refuse(SECOND_NS)));
        assert!(b.refuse(SECOND_NS + 1));
    }

    #[test]
    fn connection_counts_enforce_the_limit_per_address() {
        let mut c = ConnectionCounts::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(c.try_add(a, 2));
        assert!(c.try_add(a, 2));
        assert!(!c.try_add(a, 2));
        assert!(c.try_add(b, 2));
        c.remove(a);
        assert!(c.try_add(a, 2));
        assert_eq!(c.count(a), 2);
    }

    #[test]
    fn a_budget_allows_a_seconds_worth_then_refills_and_a_debt_must_be_repaid() {
        let mut b = Budget::new(1000, 0);
        assert!(b.has_room(0));
        // One message larger than the whole budget is allowed (its size is known only
        // after it), and leaves a debt.
        b.charge(3000, 0);
        assert!(!b.has_room(0));
        // The debt of 2,000 bytes takes two seconds to repay, at microsecond steps too.
        let mut t = 0;
        while t < 2 * SECOND_NS {
            assert!(!b.has_room(t), "room at {t} ns");
            t += 1000;
        }
        assert!(b.has_room(2 * SECOND_NS + 1_000_000));
        // At most one second's worth is banked, however long it was idle.
        b.charge(1000, 100 * SECOND_NS);
        assert!(!b.has_room(100 * SECOND_NS));
    }
}
