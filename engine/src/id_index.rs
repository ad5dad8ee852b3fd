//! The book's order-id index: order id -> slab handle, an open-addressing table with
//! Robin Hood linear probing and backward-shift deletion (no tombstones).
//!
//! - Ids are spread by Fibonacci hashing (`id ^ id >> 32` times 2^64 / phi, high half),
//!   the home slot by multiply-shift range reduction. (Placing ids at `id % slots` kept
//!   dense ids together but let a block of long-lived old ids and the new ids wrapping
//!   onto it form one probe run as long as the block; hashing them by groups of eight
//!   per cache line lengthened the runs at high load and measured ~20% slower.)
//! - A slot is 8 bytes: the 32-bit hash (tag) and the handle. The full id is not stored;
//!   a tag match is confirmed against the order itself (`id_of(handle)`), which the
//!   caller is about to read anyway.
//! - The table in use is always sized to its contents, reserved or not: a reservation
//!   ([`IdIndex::with_capacity`]) allocates and writes the memory for the largest table
//!   (and a second buffer to grow into) up front, and growth rehashes within it, so it
//!   neither allocates nor takes a page fault on the hot path, while lookups touch a
//!   table no larger than an unreserved one. (A hashbrown table reserved for 2^20 orders
//!   spread the live orders over ~34 MB, a cache and TLB miss per lookup: that made
//!   `OrderBook::with_capacity(1 << 20)` slower than `new()`.)
//! - The table grows by doubling at 7/8 full.
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

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The tag of `id`: the high half of a Fibonacci hash of the folded id.
fn tag_of(id: u64) -> u32 {
    ((id ^ (id >> 32)).wrapping_mul(MUL) >> 32) as u32
}

/// The smallest table.
const MIN_SLOTS: usize = 16;

#[derive(Debug, Default)]
pub struct IdIndex {
    /// The table in use (its length is a power of two, or zero).
    slots: Vec<Slot>,
    /// The buffer the next growth rehashes into; kept only when reserved.
    spare: Vec<Slot>,
    len: usize,
    /// Slots reserved by `with_capacity` (0: none).
    reserved: usize,
}

/// A vector of `capacity` slots, all written (so their pages are mapped), holding `len`
/// copies of `from` then empty slots.
fn touched(capacity: usize, from: &[Slot], len: usize) -> Vec<Slot> {
    let mut v = vec![EMPTY; capacity.max(len)];
    v[..from.len()].copy_from_slice(from);
    v.truncate(len);
    v
}

impl Clone for IdIndex {
    /// Keeps the reservation (a derived clone would drop the spare capacity).
    fn clone(&self) -> Self {
        IdIndex {
            slots: touched(self.slots.capacity(), &self.slots, self.slots.len()),
            spare: touched(self.spare.capacity(), &[], 0),
            len: self.len,
            reserved: self.reserved,
        }
    }
}

impl IdIndex {
    /// Room for `n` ids without allocating: memory for the largest table and for the
    /// buffer to grow into, both written now. The table in use starts small.
    pub fn with_capacity(n: usize) -> IdIndex {
        if n == 0 {
            return IdIndex::default();
        }
        let reserved = Self::slots_for(n);
        IdIndex {
            slots: touched(reserved, &[], MIN_SLOTS.min(reserved)),
            spare: touched(reserved, &[], 0),
            len: 0,
            reserved,
        }
    }

    fn slots_for(n: usize) -> usize {
        (n.saturating_mul(8) / 7 + 1)
            .next_power_of_two()
            .max(MIN_SLOTS)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn heap_bytes(&self) -> usize {
        (self.slots.capacity() + self.spare.capacity()) * std::mem::size_of::<Slot>()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The home slot of `tag`: multiply-shift range reduction.
    fn home(&self, tag: u32) -> usize {
        ((tag as u64 * self.slots.len() as u64) >> 32) as usize
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

    /// Rehashes into a table of `slots`: within the reserved buffer when it fits (no
    /// allocation), else into a new one.
    fn resize(&mut self, slots: usize) {
        assert!(slots.is_power_of_two() && slots > self.len);
        let mut table = std::mem::take(&mut self.spare);
        table.clear();
        table.resize(slots, EMPTY);
        let old = std::mem::replace(&mut self.slots, table);
        for &s in &old {
            if s.handle != EMPTY_HANDLE {
                self.place(s);
            }
        }
        if slots <= self.reserved {
            self.spare = old;
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
    fn a_reserved_index_works_in_a_table_sized_to_its_contents_without_allocating() {
        let ids: Vec<u64> = (0..100_000).collect();
        let mut index = IdIndex::with_capacity(100_000);
        let bytes = index.heap_bytes();
        assert!(bytes >= 2 * 100_000 * 8);
        for &id in &ids[..100] {
            index.insert(id, id as u32);
        }
        assert!(
            index.slots.len() <= 256,
            "table in use: {}",
            index.slots.len()
        );
        for &id in &ids[100..] {
            index.insert(id, id as u32);
        }
        assert_eq!(
            index.heap_bytes(),
            bytes,
            "no allocation up to the reservation"
        );
        let clone = index.clone();
        assert_eq!(clone.heap_bytes(), bytes);
        for id in [0, 50_000, 99_999] {
            assert_eq!(clone.get(id, lookup(&ids)), Some(id as u32));
        }
        index.check();
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
        // c folds to the multiplier's inverse modulo 2^64, whose product with it is 1:
        // a high half of 0, as for id 0.
        let mut inverse = MUL;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(MUL.wrapping_mul(inverse)));
        }
        assert_eq!(MUL.wrapping_mul(inverse), 1);
        let hi = inverse >> 32;
        let c = hi << 32 | ((inverse as u32) ^ hi as u32) as u64;
        let a = 0u64;
        let b = 1u64 << 32;
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
