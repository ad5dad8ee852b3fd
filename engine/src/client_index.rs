//! An account's client-order-id index: client order id -> the order's slot in the
//! account's open-order slab ([`crate::exchange::OpenOrders`]). It replaces one map for
//! all accounts: a lookup by (account, client id) then reads the account's own memory,
//! which the command touches anyway, and a market maker's thousands of orders do not
//! spread everyone's lookups over a large table.
//!
//! - An open-addressing table with Robin Hood linear probing and backward-shift deletion
//!   (no tombstones), like the book's id index ([`crate::id_index`]). An entry is 8
//!   bytes: a 32-bit hash of the client id (tag) and the slot. The client id itself is
//!   not stored: a tag match is confirmed against the slot (`client_id_of(slot)`), and a
//!   removal names the slot it frees, so it needs no confirmation.
//! - Client ids are spread by Fibonacci hashing of the folded id (high half), the home
//!   entry by multiply-shift range reduction.
//! - No allocation until the first client id; then at least 8 entries (one cache line).
//!   The table keeps no count of its own: it is sized for all of the account's open
//!   orders (`room_for` at each insertion), at most 7/8 of it, so that it is never
//!   fuller than that with the client ids among them. It grows by doubling and does not
//!   shrink (as the slab does not).
//!
//! Every probe loop is bounded by the table size.

const EMPTY_SLOT: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u32,
    slot: u32,
}

const EMPTY: Entry = Entry {
    tag: 0,
    slot: EMPTY_SLOT,
};

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The tag of a client id: the high half of a Fibonacci hash of the folded id.
fn tag_of(client_id: u64) -> u32 {
    ((client_id ^ (client_id >> 32)).wrapping_mul(MUL) >> 32) as u32
}

/// The smallest table: 8 entries, one cache line.
const MIN_ENTRIES: usize = 8;

/// See the module docs.
#[derive(Clone, Debug, Default)]
pub struct ClientIndex {
    /// A power-of-two number of entries, or none.
    table: Box<[Entry]>,
}

impl ClientIndex {
    /// Entries for `n` open orders: at most 7/8 full.
    fn entries_for(n: usize) -> usize {
        (n.saturating_mul(8) / 7 + 1)
            .next_power_of_two()
            .max(MIN_ENTRIES)
    }

    fn mask(&self) -> usize {
        self.table.len() - 1
    }

    /// The home entry of `tag`.
    fn home(&self, tag: u32) -> usize {
        ((tag as u64 * self.table.len() as u64) >> 32) as usize
    }

    /// How far entry `pos` holding `e` is from its home.
    fn distance(&self, pos: usize, e: Entry) -> usize {
        pos.wrapping_sub(self.home(e.tag)) & self.mask()
    }

    /// The position of the first entry with `tag` for which `is_it(slot)` holds.
    fn find(&self, tag: u32, is_it: impl Fn(u32) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mut pos = self.home(tag);
        for dist in 0..self.table.len() {
            let e = self.table[pos];
            if e.slot == EMPTY_SLOT || self.distance(pos, e) < dist {
                return None;
            }
            if e.tag == tag && is_it(e.slot) {
                return Some(pos);
            }
            pos = (pos + 1) & self.mask();
        }
        None
    }

    /// The slot of `client_id`; `client_id_of` gives the client id of the order in a slot.
    pub fn get(&self, client_id: u64, client_id_of: impl Fn(u32) -> u64) -> Option<u32> {
        self.find(tag_of(client_id), |s| client_id_of(s) == client_id)
            .map(|pos| self.table[pos].slot)
    }

    /// Indexes `client_id` (not present: the caller checks) at `slot`, in a table with
    /// room for `room_for` entries: the account's open orders, this one included.
    pub fn insert(&mut self, client_id: u64, slot: u32, room_for: usize) {
        assert!(slot != EMPTY_SLOT, "slot out of range");
        if room_for.saturating_mul(8) > self.table.len() * 7 {
            self.resize(Self::entries_for(room_for).max(self.table.len() * 2));
        }
        self.place(Entry {
            tag: tag_of(client_id),
            slot,
        });
    }

    /// Robin Hood insertion; the table has room.
    fn place(&mut self, mut cur: Entry) {
        let mask = self.mask();
        let mut pos = self.home(cur.tag);
        let mut dist = 0;
        for _ in 0..self.table.len() {
            let e = self.table[pos];
            if e.slot == EMPTY_SLOT {
                self.table[pos] = cur;
                return;
            }
            let d = self.distance(pos, e);
            if d < dist {
                self.table[pos] = cur;
                cur = e;
                dist = d;
            }
            pos = (pos + 1) & mask;
            dist += 1;
        }
        unreachable!("client index full");
    }

    /// Removes the entry of `client_id` at `slot`; whether there was one.
    pub fn remove(&mut self, client_id: u64, slot: u32) -> bool {
        let Some(mut pos) = self.find(tag_of(client_id), |s| s == slot) else {
            return false;
        };
        let mask = self.mask();
        // Shift the following displaced entries back by one, up to an empty entry or
        // one at its home.
        for _ in 0..self.table.len() {
            let next = (pos + 1) & mask;
            let e = self.table[next];
            if e.slot == EMPTY_SLOT || self.distance(next, e) == 0 {
                break;
            }
            self.table[pos] = e;
            pos = next;
        }
        self.table[pos] = EMPTY;
        true
    }

    fn resize(&mut self, entries: usize) {
        assert!(entries.is_power_of_two());
        let old = std::mem::replace(&mut self.table, vec![EMPTY; entries].into_boxed_slice());
        for &e in old.iter() {
            if e.slot != EMPTY_SLOT {
                self.place(e);
            }
        }
    }

    /// Client ids indexed (counted: the table keeps no count).
    pub fn count(&self) -> usize {
        self.table.iter().filter(|e| e.slot != EMPTY_SLOT).count()
    }

    /// Whether the table is at most 7/8 full, every entry lies after an unbroken run
    /// from its home (the Robin Hood order lookups rely on), and no two entries name one
    /// slot.
    pub fn is_well_formed(&self) -> bool {
        if self.table.is_empty() {
            return true;
        }
        if !self.table.len().is_power_of_two() || self.count() * 8 > self.table.len() * 7 {
            return false;
        }
        let mut slots = Vec::new();
        for (pos, &e) in self.table.iter().enumerate() {
            if e.slot == EMPTY_SLOT {
                continue;
            }
            slots.push(e.slot);
            let d = self.distance(pos, e);
            let run = (1..=d).all(|back| {
                let p = pos.wrapping_sub(back) & self.mask();
                self.table[p].slot != EMPTY_SLOT && self.distance(p, self.table[p]) + back >= d
            });
            if !run {
                return false;
            }
        }
        slots.sort_unstable();
        slots.windows(2).all(|w| w[0] != w[1])
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.table.len() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn holds_no_table_until_the_first_client_id_then_one_cache_line() {
        let mut index = ClientIndex::default();
        assert_eq!(index.heap_bytes(), 0);
        assert_eq!(index.get(5, |_| 5), None);
        index.insert(5, 0, 1);
        assert_eq!(index.heap_bytes(), 64);
        assert_eq!(index.get(5, |_| 5), Some(0));
    }

    #[test]
    fn is_sized_for_every_open_order_with_or_without_a_client_id() {
        // 100 open orders, one of them with a client id: the table has room for all.
        let mut index = ClientIndex::default();
        index.insert(9, 99, 100);
        assert!(index.table.len() * 7 >= 100 * 8);
        assert!(index.is_well_formed());
    }

    #[test]
    fn client_ids_with_equal_tags_are_told_apart_by_their_slots() {
        // c folds to the multiplier's inverse modulo 2^64, whose product with it is 1:
        // a high half of 0, as for id 0.
        let mut inverse = MUL;
        for _ in 0..6 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(MUL.wrapping_mul(inverse)));
        }
        let hi = inverse >> 32;
        let c = hi << 32 | ((inverse as u32) ^ hi as u32) as u64;
        let a = 0u64;
        assert_eq!(tag_of(a), tag_of(c));
        let ids = [a, 7, c];
        let of = |s: u32| ids[s as usize];
        let mut index = ClientIndex::default();
        for (slot, &id) in ids.iter().enumerate() {
            index.insert(id, slot as u32, ids.len());
        }
        assert_eq!(index.get(c, of), Some(2));
        assert!(index.remove(a, 0));
        assert!(!index.remove(a, 0));
        assert_eq!(index.get(a, of), None);
        assert_eq!(index.get(c, of), Some(2));
        assert!(index.is_well_formed());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a BTreeMap, over dense, strided, colliding and arbitrary client ids,
        /// with slots reused as orders leave (as the open-order slab reuses them).
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(
            (any::<bool>(), prop_oneof![1u64..64, (1u64..64).prop_map(|x| x * 1024), any::<u64>(),
                (1u64..8).prop_map(|x| x << 32 | x)]),
            1..400,
        )) {
            // slot -> client id (0: free), and the free slots.
            let mut slots: Vec<u64> = Vec::new();
            let mut free: Vec<u32> = Vec::new();
            let mut index = ClientIndex::default();
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            for (insert, id) in ops {
                if insert && !model.contains_key(&id) {
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(0);
                        (slots.len() - 1) as u32
                    });
                    slots[slot as usize] = id;
                    index.insert(id, slot, model.len() + 1);
                    model.insert(id, slot);
                } else if !insert {
                    match model.remove(&id) {
                        Some(s) => {
                            prop_assert!(index.remove(id, s));
                            prop_assert!(!index.remove(id, s));
                            slots[s as usize] = 0;
                            free.push(s);
                        }
                        None => prop_assert_eq!(index.get(id, |s| slots[s as usize]), None),
                    }
                }
                prop_assert_eq!(index.count(), model.len());
                prop_assert_eq!(index.get(id, |s| slots[s as usize]), model.get(&id).copied());
                prop_assert!(index.is_well_formed());
            }
            for (&id, &s) in &model {
                prop_assert_eq!(index.get(id, |x| slots[x as usize]), Some(s));
            }
        }
    }
}
