//! The book's order-id index: order id -> slab handle, an open-addressing table with
//! Robin Hood linear probing and backward-shift deletion (no tombstones).
//!
//! Built for ids that the exchange hands out densely and in order:
//! - Ids are hashed by groups of eight: `id / 8` picks a cache line (eight 8-byte slots)
//!   by Fibonacci hashing, `id % 8` the slot in it. Eight consecutive ids share a line, so
//!   a book's recent orders touch an eighth of the lines that a per-id hash would, and
//!   the lines touched depend on the ids, not on the table's size. (A per-id hash over a
//!   table reserved for a million orders cost a cache miss per lookup: that made
//!   `OrderBook::with_capacity(1 << 20)` ~40% slower than `new()`.) The line is chosen by
//!   hash, not by `id % lines`: with the identity, a block of long-lived old ids and the
//!   new ids wrapping around onto it formed one probe run as long as the block.
//! - A slot is 8 bytes: a 32-bit tag (the line hash, with `id % 8` in its low bits) and
//!   the handle. The full id is not stored; a tag match is confirmed against the order
//!   itself (`id_of(handle)`), which the caller is about to read anyway.
//! - The table grows by doubling at 7/8 full. Memory is written when allocated, so a
//!   reservation takes its page faults up front, not on the hot path.
//!
//! Every probe loop is bounded by the table size.

const EMPTY_HANDLE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    tag: u32,
    handle: u32,
}

const EMPTY: Slot = Slot {
    tag: 0,
    handle: EMPTY_HANDLE,
};

/// Slots per 64-byte cache line.
const LINE: usize = 8;

/// The tag of `id`: the high half of a Fibonacci hash of `id / 8`, with its low three
/// bits replaced by `id % 8`.
fn tag_of(id: u64) -> u32 {
    let line = ((id >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
    (line & !7) | (id & 7) as u32
}

#[derive(Clone, Debug, Default)]
pub struct IdIndex {
    slots: Vec<Slot>,
    len: usize,
}

impl IdIndex {
    /// Room for `n` ids without growing.
    pub fn with_capacity(n: usize) -> IdIndex {
        let mut index = IdIndex::default();
        if n > 0 {
            index.resize(Self::slots_for(n));
        }
        index
    }

    fn slots_for(n: usize) -> usize {
        (n.saturating_mul(8) / 7 + 1).next_power_of_two().max(16)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The home slot of `tag`: its line by multiply-shift range reduction of the tag's
    /// upper 29 bits, then `id % 8` within it.
    fn home(&self, tag: u32) -> usize {
        let lines = (self.slots.len() / LINE) as u64;
        ((((tag >> 3) as u64 * lines) >> 29) as usize) * LINE + (tag & 7) as usize
    }

    /// How far slot `pos` holding `s` is from its home.
    fn distance(&self, pos: usize, s: Slot) -> usize {
        pos.wrapping_sub(self.home(s.tag)) & self.mask()
    }

    /// The position and handle of `id`; `id_of` gives the id of the order at a handle.
    fn find(&self, id: u64, id_of: impl Fn(u32) -> u64) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        let tag = tag_of(id);
        let mut pos = self.home(tag);
        for dist in 0..self.slots.len() {
            let s = self.slots[pos];
            if s.handle == EMPTY_HANDLE || self.distance(pos, s) < dist {
                return None;
            }
            if s.tag == tag && id_of(s.handle) == id {
                return Some((pos, s.handle));
            }
            pos = (pos + 1) & self.mask();
        }
        None
    }

    pub fn get(&self, id: u64, id_of: impl Fn(u32) -> u64) -> Option<u32> {
        self.find(id, id_of).map(|(_, h)| h)
    }

    /// Adds an id that is not present (the caller checks).
    pub fn insert(&mut self, id: u64, handle: u32) {
        assert!(handle != EMPTY_HANDLE, "handle out of range");
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.resize(Self::slots_for(self.len + 1).max(self.slots.len() * 2));
        }
        self.place(Slot {
            tag: tag_of(id),
            handle,
        });
        self.len += 1;
    }

    /// Robin Hood insertion of a slot whose id is not present; the table has room.
    fn place(&mut self, mut cur: Slot) {
        let mask = self.mask();
        let mut pos = self.home(cur.tag);
        let mut dist = 0;
        for _ in 0..self.slots.len() {
            let s = self.slots[pos];
            if s.handle == EMPTY_HANDLE {
                self.slots[pos] = cur;
                return;
            }
            let d = self.distance(pos, s);
            if d < dist {
                self.slots[pos] = cur;
                cur = s;
                dist = d;
            }
            pos = (pos + 1) & mask;
            dist += 1;
        }
        unreachable!("id index full");
    }

    /// Removes `id`; returns its handle.
    pub fn remove(&mut self, id: u64, id_of: impl Fn(u32) -> u64) -> Option<u32> {
        let (mut pos, handle) = self.find(id, id_of)?;
        let mask = self.mask();
        // Shift the following displaced slots back by one, up to an empty slot or one
        // at its home.
        for _ in 0..self.slots.len() {
            let next = (pos + 1) & mask;
            let s = self.slots[next];
            if s.handle == EMPTY_HANDLE || self.distance(next, s) == 0 {
                break;
            }
            self.slots[pos] = s;
            pos = next;
        }
        self.slots[pos] = EMPTY;
        self.len -= 1;
        Some(handle)
    }

    fn resize(&mut self, slots: usize) {
        assert!(slots.is_power_of_two() && slots > self.len);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; slots]);
        for s in old {
            if s.handle != EMPTY_HANDLE {
                self.place(s);
            }
        }
    }

    /// Checks the Robin Hood order and the count; panics on a violation.
    pub fn check(&self) {
        let mut count = 0;
        for (pos, &s) in self.slots.iter().enumerate() {
            if s.handle == EMPTY_HANDLE {
                continue;
            }
            count += 1;
            // Every slot between the home and here is occupied.
            let d = self.distance(pos, s);
            for back in 1..=d {
                let p = pos.wrapping_sub(back) & self.mask();
                assert!(self.slots[p].handle != EMPTY_HANDLE, "hole in a probe run");
            }
        }
        assert_eq!(count, self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The handles of these tests are the ids' positions in a table of ids.
    fn lookup(ids: &[u64]) -> impl Fn(u32) -> u64 + '_ {
        move |h| ids[h as usize]
    }

    #[test]
    fn eight_consecutive_ids_share_a_cache_line() {
        let ids: Vec<u64> = (1000..1096).collect();
        let mut index = IdIndex::with_capacity(1 << 20);
        for (h, &id) in ids.iter().enumerate() {
            index.insert(id, h as u32);
        }
        let lines: std::collections::BTreeSet<usize> = index
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.handle != EMPTY_HANDLE)
            .map(|(pos, _)| pos / LINE)
            .collect();
        assert_eq!(lines.len(), 96 / LINE);
        assert_eq!(index.get(1050, lookup(&ids)), Some(50));
    }

    #[test]
    fn a_block_of_old_ids_does_not_lengthen_the_probes_of_new_ones() {
        // 40,000 long-lived ids, then 200,000 more arriving and leaving 10,000 behind:
        // with ids placed at `id % slots`, the new ids wrap onto the old block and each
        // probes through it.
        let ids: Vec<u64> = (0..240_000).collect();
        let mut index = IdIndex::default();
        for id in 0..40_000u64 {
            index.insert(id, id as u32);
        }
        let mut longest = 0;
        for id in 40_000..240_000u64 {
            index.insert(id, id as u32);
            if id >= 50_000 {
                assert_eq!(
                    index.remove(id - 10_000, lookup(&ids)),
                    Some(id as u32 - 10_000)
                );
            }
            let home = index.home(tag_of(id));
            let pos = (0..index.slots.len())
                .map(|d| (home + d) & index.mask())
                .find(|&p| index.slots[p].handle == id as u32)
                .expect("inserted");
            longest = longest.max(pos.wrapping_sub(home) & index.mask());
        }
        index.check();
        assert!(longest < 200, "longest probe {longest}");
    }

    #[test]
    fn ids_with_equal_tags_are_told_apart_by_the_order() {
        // c / 8 times the multiplier is below 2^32 (modulo 2^64), as 5 / 8 = 0 times it:
        // the same line hash, and both are 5 modulo 8.
        const MUL: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut inverse = MUL;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(MUL.wrapping_mul(inverse)));
        }
        assert_eq!(MUL.wrapping_mul(inverse), 1);
        let line = (1..1000u64)
            .map(|s| s.wrapping_mul(inverse))
            .find(|x| *x < 1 << 61)
            .expect("a small multiple");
        let a = 5u64;
        let b = 1u64 << 32;
        let c = line << 3 | 5;
        assert_eq!(tag_of(a), tag_of(c));
        let ids = vec![a, b, c];
        let mut index = IdIndex::default();
        for (h, &id) in ids.iter().enumerate() {
            index.insert(id, h as u32);
        }
        assert_eq!(index.get(c, lookup(&ids)), Some(2));
        assert_eq!(index.remove(a, lookup(&ids)), Some(0));
        assert_eq!(index.get(a, lookup(&ids)), None);
        assert_eq!(index.get(c, lookup(&ids)), Some(2));
        index.check();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a BTreeMap, over dense, strided and colliding ids.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(
            (any::<bool>(), prop_oneof![0u64..64, (0u64..64).prop_map(|x| x * 1024), any::<u64>(),
                (0u64..8).prop_map(|x| x << 32 | x)]),
            1..400,
        )) {
            let mut ids: Vec<u64> = Vec::new();
            let mut index = IdIndex::default();
            let mut model = BTreeMap::new();
            for (insert, id) in ops {
                if insert && !model.contains_key(&id) {
                    ids.push(id);
                    let h = (ids.len() - 1) as u32;
                    index.insert(id, h);
                    model.insert(id, h);
                } else if !insert {
                    prop_assert_eq!(index.remove(id, lookup(&ids)), model.remove(&id));
                }
                prop_assert_eq!(index.len(), model.len());
                prop_assert_eq!(index.get(id, lookup(&ids)), model.get(&id).copied());
            }
            index.check();
            for (&id, &h) in &model {
                prop_assert_eq!(index.get(id, lookup(&ids)), Some(h));
            }
        }
    }
}
