//! An ordered map from price keys to level handles, built for the way books are used:
//! nearly all levels sit within a few thousand ticks of the touch, levels appear and
//! vanish constantly, and the questions are "what is the best level" and "what is at
//! this price".
//!
//! - Exact lookups go through a hash map (keys are integers; the map is never iterated).
//! - Order comes from a three-level 64-ary bitmap over a window of [`WINDOW_KEYS`]
//!   consecutive keys: setting, clearing and finding the highest key are a few word
//!   operations, independent of the number of levels.
//! - Keys outside the window live in a `BTreeMap`. They are rare (far from the touch), so
//!   its O(log n) cost is paid rarely. The window is placed around the first key inserted
//!   into an empty index, and moves when the index empties.
//!
//! Measured on exchange-core's load (docs/benchmarks.md): a `BTreeMap` alone spent about a
//! third of the book's time creating and removing levels; a sorted `Vec` of levels spent
//! 45% shifting memory.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

/// Keys covered by the bitmap window: 64^3 / 4 = 65,536.
pub const WINDOW_KEYS: i64 = 1 << 16;
const L0_WORDS: usize = (WINDOW_KEYS / 64) as usize;
const L1_WORDS: usize = L0_WORDS / 64;
const _: () = assert!(L1_WORDS <= 64, "the top summary must fit one word");
const _: () = assert!(L1_WORDS * 64 * 64 == WINDOW_KEYS as usize);

#[derive(Clone, Debug)]
pub struct PriceIndex {
    handles: FxHashMap<i64, u32>,
    /// First key of the window; `None` until the first insert.
    base: Option<i64>,
    /// Bit `k - base` set for each key in the window.
    l0: Box<[u64]>,
    /// Bit `i` set when `l0[i] != 0`.
    l1: [u64; L1_WORDS],
    /// Bit `i` set when `l1[i] != 0`.
    l2: u64,
    /// Keys outside the window.
    outside: BTreeMap<i64, u32>,
}

impl Default for PriceIndex {
    fn default() -> Self {
        PriceIndex {
            handles: FxHashMap::default(),
            base: None,
            l0: Vec::new().into_boxed_slice(),
            l1: [0; L1_WORDS],
            l2: 0,
            outside: BTreeMap::new(),
        }
    }
}

fn top_bit(word: u64) -> usize {
    debug_assert!(word != 0);
    63 - word.leading_zeros() as usize
}

impl PriceIndex {
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn get(&self, key: i64) -> Option<u32> {
        self.handles.get(&key).copied()
    }

    /// Heap bytes held (ordered-map entries outside the window at their key and value).
    pub fn heap_bytes(&self) -> usize {
        self.handles.capacity() * (std::mem::size_of::<(i64, u32)>() + 1)
            + self.l0.len() * 8
            + self.outside.len() * std::mem::size_of::<(i64, u32)>()
    }

    /// Offset of `key` in the window, if it falls inside.
    fn slot(&self, key: i64) -> Option<usize> {
        let base = self.base?;
        let offset = key.checked_sub(base)?;
        (0..WINDOW_KEYS)
            .contains(&offset)
            .then_some(offset as usize)
    }

    /// Inserts a key that is not present.
    pub fn insert(&mut self, key: i64, handle: u32) {
        let previous = self.handles.insert(key, handle);
        assert!(previous.is_none(), "key already indexed");
        if self.handles.len() == 1 {
            // The index was empty: centre the window on this key.
            assert!(self.outside.is_empty() && self.l2 == 0);
            if self.l0.is_empty() {
                self.l0 = vec![0u64; L0_WORDS].into_boxed_slice();
            }
            self.base = Some(key.saturating_sub(WINDOW_KEYS / 2));
        }
        match self.slot(key) {
            Some(slot) => {
                let (w0, w1) = (slot / 64, slot / 4096);
                self.l0[w0] |= 1 << (slot % 64);
                self.l1[w1] |= 1 << (w0 % 64);
                self.l2 |= 1 << w1;
            }
            None => {
                self.outside.insert(key, handle);
            }
        }
    }

    /// Removes a present key.
    pub fn remove(&mut self, key: i64) -> u32 {
        let handle = self.handles.remove(&key).expect("key indexed");
        match self.slot(key) {
            Some(slot) => {
                let (w0, w1) = (slot / 64, slot / 4096);
                assert!(self.l0[w0] & (1 << (slot % 64)) != 0);
                self.l0[w0] &= !(1 << (slot % 64));
                if self.l0[w0] == 0 {
                    self.l1[w1] &= !(1 << (w0 % 64));
                    if self.l1[w1] == 0 {
                        self.l2 &= !(1 << w1);
                    }
                }
            }
            None => {
                let removed = self.outside.remove(&key);
                assert_eq!(removed, Some(handle));
            }
        }
        handle
    }

    /// Highest window key at or below `slot_max`.
    fn window_max_at_or_below(&self, slot_max: usize) -> Option<i64> {
        let base = self.base?;
        let (mut w0, mut w1) = (slot_max / 64, slot_max / 4096);
        // In the word holding `slot_max`, only bits at or below it count.
        let word = self.l0[w0] & (u64::MAX >> (63 - slot_max % 64));
        if word != 0 {
            return Some(base + (w0 * 64 + top_bit(word)) as i64);
        }
        // Then the lower l0 words of the same l1 word.
        let below = if w0 % 64 == 0 {
            0
        } else {
            self.l1[w1] & (u64::MAX >> (64 - w0 % 64))
        };
        if below != 0 {
            w0 = w1 * 64 + top_bit(below);
        } else {
            let below = if w1 == 0 {
                0
            } else {
                self.l2 & (u64::MAX >> (64 - w1))
            };
            if below == 0 {
                return None;
            }
            w1 = top_bit(below);
            w0 = w1 * 64 + top_bit(self.l1[w1]);
        }
        Some(base + (w0 * 64 + top_bit(self.l0[w0])) as i64)
    }

    /// The highest key and its handle.
    pub fn max(&self) -> Option<(i64, u32)> {
        let key = match self.outside.last_key_value() {
            Some((&k, _)) if self.slot(k).is_none() && self.base.is_some_and(|b| k > b) => k,
            _ => match self.window_max_at_or_below(WINDOW_KEYS as usize - 1) {
                Some(k) => k,
                None => *self.outside.last_key_value()?.0,
            },
        };
        Some((key, self.handles[&key]))
    }

    /// The highest key below `key`.
    fn next_below(&self, key: i64) -> Option<i64> {
        let base = self.base?;
        let outside = self.outside.range(..key).next_back().map(|(&k, _)| k);
        let window = if key <= base {
            None
        } else {
            let slot_max = (key.saturating_sub(base) - 1).min(WINDOW_KEYS - 1) as usize;
            self.window_max_at_or_below(slot_max)
        };
        match (outside, window) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Keys and handles from highest to lowest.
    pub fn iter_desc(&self) -> impl Iterator<Item = (i64, u32)> + '_ {
        let mut next = self.max().map(|(k, _)| k);
        std::iter::from_fn(move || {
            let key = next?;
            next = self.next_below(key);
            Some((key, self.handles[&key]))
        })
    }

    /// Checks the structure against the hash map; panics on a violation.
    pub fn check(&self) {
        let mut count = self.outside.len();
        for (i, &word) in self.l0.iter().enumerate() {
            count += word.count_ones() as usize;
            assert_eq!(word != 0, self.l1[i / 64] & (1 << (i % 64)) != 0);
        }
        for (i, &word) in self.l1.iter().enumerate() {
            assert_eq!(word != 0, self.l2 & (1 << i) != 0);
        }
        assert_eq!(count, self.handles.len());
        let mut previous = None;
        let mut seen = 0;
        for (k, h) in self.iter_desc() {
            assert_eq!(self.handles.get(&k), Some(&h));
            if let Some(p) = previous {
                assert!(k < p, "keys strictly descending");
            }
            previous = Some(k);
            seen += 1;
        }
        assert_eq!(seen, self.handles.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn max_and_descending_order_span_the_window_and_outside() {
        let mut idx = PriceIndex::default();
        let keys = [
            1_000_000,
            1_000_001,
            999_999,
            1_000_000 + WINDOW_KEYS,
            1_000_000 - WINDOW_KEYS,
            5,
        ];
        for (h, k) in keys.iter().enumerate() {
            idx.insert(*k, h as u32);
            idx.check();
        }
        let got: Vec<i64> = idx.iter_desc().map(|(k, _)| k).collect();
        let mut want = keys.to_vec();
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(got, want);
        assert_eq!(idx.max(), Some((1_000_000 + WINDOW_KEYS, 3)));
        idx.remove(1_000_000 + WINDOW_KEYS);
        assert_eq!(idx.max(), Some((1_000_001, 1)));
        idx.check();
    }

    #[test]
    fn negative_keys_work_like_any_other() {
        let mut idx = PriceIndex::default();
        for (h, k) in [-100i64, -5, -70_000, -3].iter().enumerate() {
            idx.insert(*k, h as u32);
        }
        idx.check();
        assert_eq!(idx.max(), Some((-3, 3)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a BTreeMap: the same max and the same descending order after every
        /// insert or remove, keys spread around and across the window's edges.
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec(
            (any::<bool>(), prop_oneof![-40i64..40, -70_000i64..70_000, any::<i64>()]),
            1..300,
        )) {
            let mut idx = PriceIndex::default();
            let mut model = BTreeMap::new();
            for (n, (insert, key)) in ops.into_iter().enumerate() {
                if insert && !model.contains_key(&key) {
                    idx.insert(key, n as u32);
                    model.insert(key, n as u32);
                } else if !insert {
                    if let Some(&k) = model.range(key..).next().map(|(k, _)| k) {
                        prop_assert_eq!(idx.remove(k), model.remove(&k).unwrap());
                    }
                }
                prop_assert_eq!(idx.max(), model.last_key_value().map(|(&k, &h)| (k, h)));
                prop_assert_eq!(idx.len(), model.len());
            }
            idx.check();
            let got: Vec<_> = idx.iter_desc().collect();
            let want: Vec<_> = model.iter().rev().map(|(&k, &h)| (k, h)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
