//! The book's order-id index: order id -> slab handle, an open-addressing table with
//! Robin Hood linear probing and backward-shift deletion (no tombstones).
//!
//! Built for ids that the exchange hands out densely and in order:
//! - A slot's home is the folded id (`id ^ id >> 32`, truncated to 32 bits) modulo the
//!   table size, so consecutive ids sit in consecutive slots. The orders a book touches
//!   (recent ids) then share cache lines whatever the table's size: a table reserved for a
//!   million orders costs no more per lookup than one sized for the live orders. (A
//!   hashed table spreads the same orders over the whole reservation, one cache and TLB
//!   miss each: that made `OrderBook::with_capacity(1 << 20)` ~40% slower than `new()`.)
//! - A slot is 8 bytes: the folded id and the handle. The full id is not stored; a
//!   folded match is confirmed against the order itself (`id_of(handle)`), which the
//!   caller is about to read anyway.
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

fn fold(id: u64) -> u32 {
    (id ^ (id >> 32)) as u32
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

    /// How far slot `pos` holding `s` is from its home.
    fn distance(&self, pos: usize, s: Slot) -> usize {
        pos.wrapping_sub(s.tag as usize) & self.mask()
    }

    /// The position and handle of `id`; `id_of` gives the id of the order at a handle.
    fn find(&self, id: u64, id_of: impl Fn(u32) -> u64) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        let tag = fold(id);
        let mut pos = tag as usize & self.mask();
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
            tag: fold(id),
            handle,
        });
        self.len += 1;
    }

    /// Robin Hood insertion of a slot whose id is not present; the table has room.
    fn place(&mut self, mut cur: Slot) {
        let mask = self.mask();
        let mut pos = cur.tag as usize & mask;
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
    fn dense_ids_land_in_consecutive_slots() {
        let ids: Vec<u64> = (1000..1100).collect();
        let mut index = IdIndex::with_capacity(1 << 20);
        for (h, &id) in ids.iter().enumerate() {
            index.insert(id, h as u32);
        }
        let homes: Vec<usize> = index
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.handle != EMPTY_HANDLE)
            .map(|(pos, _)| pos)
            .collect();
        assert_eq!(homes, (1000..1100).collect::<Vec<_>>());
        assert_eq!(index.get(1050, lookup(&ids)), Some(50));
    }

    #[test]
    fn ids_equal_after_folding_are_told_apart_by_the_order() {
        // 5 and 5 << 32 fold to the same tag.
        let a = 5u64;
        let b = 1u64 << 32;
        let c = 5u64 << 32;
        assert_eq!(fold(a), fold(c));
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
