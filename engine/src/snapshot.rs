//! Snapshot and state hash: one canonical serialization of the whole exchange state.
//!
//! File layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `RGXSNAP\0` |
//! | 8 | 4 | format version (2; 1 is read too) |
//! | 12 | 4 | CRC32 of the body |
//! | 16 | 8 | body length in bytes |
//! | 24 | n | body |
//!
//! The body lists every piece of state in a fixed order (ids ascending, accounts in
//! creation order, each book's orders bids then asks, best level first, each level in
//! time priority), so equal states give equal bytes. [`Exchange::state_hash`] is the
//! 128-bit XXH3 of the body. Derived indexes (id maps, client-id indexes) are not stored:
//! restore rebuilds them.
//!
//! Version 2 appends one optional section after the references: the markets whose
//! open-order caps differ from [`OpenOrderLimits::DEFAULT`] (a count of at least one,
//! then market id, per-account cap and per-market cap each, markets ascending). It is
//! absent when every market has the default caps, so the body (and the state hash) of
//! such a state is exactly what version 1 wrote. A version-1 body has no such section.

use std::collections::BTreeSet;

use crate::book::OrderBook;
use crate::command::MarketSpec;
use crate::exchange::*;
use crate::types::*;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RGXSNAP\0";
pub const SNAPSHOT_VERSION: u32 = 2;
const HEADER_SIZE: usize = 24;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    BadMagic,
    UnsupportedVersion(u32),
    Truncated {
        need: usize,
        have: usize,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    /// The body decoded but describes an impossible state.
    Invalid(&'static str),
    /// The body decoded into a state that breaks an invariant (see
    /// `Exchange::verify_invariants`).
    Inconsistent(String),
    /// Bytes left over after the body.
    TrailingBytes(usize),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::BadMagic => write!(f, "not a ringex snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported snapshot version {v} (this build reads 1 and {SNAPSHOT_VERSION})"
                )
            }
            SnapshotError::Truncated { need, have } => {
                write!(f, "snapshot truncated: need {need} bytes, have {have}")
            }
            SnapshotError::ChecksumMismatch { stored, computed } => write!(
                f,
                "snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            SnapshotError::Invalid(what) => {
                write!(f, "snapshot describes an invalid state: {what}")
            }
            SnapshotError::TrailingBytes(n) => write!(f, "snapshot has {n} trailing bytes"),
            SnapshotError::Inconsistent(why) => {
                write!(f, "snapshot describes an inconsistent state: {why}")
            }
        }
    }
}

impl std::error::Error for SnapshotError {}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("collection fits u32"));
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(SnapshotError::Truncated {
            need: self.pos.saturating_add(n),
            have: self.bytes.len(),
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(self.u64()? as i64)
    }
    fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(SnapshotError::Invalid("bool byte")),
        }
    }
    /// A collection length, bounded by the bytes left so a corrupt length cannot make
    /// us allocate without limit.
    fn len(&mut self, item_size_min: usize) -> Result<usize, SnapshotError> {
        let n = self.u32()? as usize;
        let left = self.bytes.len() - self.pos;
        if n.saturating_mul(item_size_min) > left {
            return Err(SnapshotError::Invalid("collection length beyond the body"));
        }
        Ok(n)
    }
}

fn check(ok: bool, what: &'static str) -> Result<(), SnapshotError> {
    if ok {
        Ok(())
    } else {
        Err(SnapshotError::Invalid(what))
    }
}

impl Exchange {
    fn write_body(&self, w: &mut Writer) {
        w.u64(self.next_order_id);
        let assets: Vec<_> = self
            .assets
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| (i, a)))
            .collect();
        w.len(assets.len());
        for (id, a) in assets {
            w.u32(id as u32);
            w.0.extend_from_slice(&a.symbol.0);
            w.u8(a.decimals);
            w.i64(self.supply[id]);
        }
        w.len(self.accounts.len());
        for a in &self.accounts {
            w.u32(a.id);
            w.u8(a.suspended as u8);
            w.len(a.balances.len());
            for b in &a.balances {
                w.i64(b.available);
                w.i64(b.held);
            }
            w.len(a.fee_tiers.len());
            for (&m, &(maker, taker)) in a.fee_tiers.iter() {
                w.u32(m);
                w.u32(maker);
                w.u32(taker);
            }
        }
        let markets: Vec<&Market> = self.markets.iter().flatten().collect();
        w.len(markets.len());
        for m in markets {
            write_spec(w, &m.spec);
            w.u8(m.status as u8);
            w.i64(m.reference_price);
            w.u64(m.trade_count);
            w.u64(m.volume_lots);
            w.len(m.book.order_count());
            m.book.for_each_order(|n| {
                w.u64(n.id);
                w.u8(n.side as u8);
                w.i64(n.price);
                w.u64(n.qty);
                w.u32(n.owner);
                // Kept in the account's open-order slot; written where the node's
                // data held it before, so the bytes and the state hash are the same.
                w.u64(
                    self.accounts[n.owner as usize]
                        .open_orders
                        .client_order_id(n.data.open_slot),
                );
                w.i64(n.data.hold);
                w.u32(n.data.maker_fee_ppm);
                w.u32(n.data.taker_fee_ppm);
                w.u8(n.data.stp);
                w.u8(n.data.post_only as u8);
            });
        }
        w.len(self.api_keys.len());
        for (&id, k) in &self.api_keys {
            w.u64(id);
            w.u32(k.account);
            w.0.extend_from_slice(&k.secret_hash);
            w.u32(k.permissions);
        }
        for refs in [&self.deposit_refs, &self.withdraw_refs] {
            w.len(refs.len());
            for &r in refs {
                w.u64(r);
            }
        }
        let limited: Vec<&Market> = self
            .markets
            .iter()
            .flatten()
            .filter(|m| m.limits != OpenOrderLimits::DEFAULT)
            .collect();
        if !limited.is_empty() {
            w.len(limited.len());
            for m in limited {
                w.u32(m.spec.market);
                w.u32(m.limits.per_account);
                w.u32(m.limits.per_market);
            }
        }
    }

    /// The whole state as bytes: versioned, checksummed, canonical.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(4096));
        w.0.extend_from_slice(&SNAPSHOT_MAGIC);
        w.u32(SNAPSHOT_VERSION);
        w.u32(0); // CRC, patched below.
        w.u64(0); // Body length, patched below.
        self.write_body(&mut w);
        let body_len = w.0.len() - HEADER_SIZE;
        let crc = crc32fast::hash(&w.0[HEADER_SIZE..]);
        w.0[12..16].copy_from_slice(&crc.to_le_bytes());
        w.0[16..24].copy_from_slice(&(body_len as u64).to_le_bytes());
        w.0
    }

    /// The snapshot and the state hash from one serialization (the hash covers the same
    /// body bytes), for the node's periodic snapshots.
    pub fn snapshot_and_hash(&self) -> (Vec<u8>, u128) {
        let bytes = self.snapshot();
        let hash = xxhash_rust::xxh3::xxh3_128(&bytes[HEADER_SIZE..]);
        (bytes, hash)
    }

    /// A canonical hash of the whole state: equal for equal histories, on any machine.
    pub fn state_hash(&self) -> u128 {
        let mut w = Writer(Vec::with_capacity(4096));
        self.write_body(&mut w);
        xxhash_rust::xxh3::xxh3_128(&w.0)
    }

    /// Rebuilds an exchange from [`Exchange::snapshot`] bytes. Never panics on bad input.
    pub fn restore(bytes: &[u8]) -> Result<Exchange, SnapshotError> {
        if bytes.len() < HEADER_SIZE {
            return Err(SnapshotError::Truncated {
                need: HEADER_SIZE,
                have: bytes.len(),
            });
        }
        if bytes[0..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let mut r = Reader { bytes, pos: 8 };
        let version = r.u32()?;
        if version != 1 && version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        let stored = r.u32()?;
        let body_len = r.u64()?;
        let have = bytes.len() - HEADER_SIZE;
        if (have as u64) < body_len {
            return Err(SnapshotError::Truncated {
                need: HEADER_SIZE.saturating_add(body_len as usize),
                have: bytes.len(),
            });
        }
        if have as u64 > body_len {
            return Err(SnapshotError::TrailingBytes(have - body_len as usize));
        }
        let body = &bytes[HEADER_SIZE..];
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SnapshotError::ChecksumMismatch { stored, computed });
        }
        let mut r = Reader {
            bytes: body,
            pos: 0,
        };
        let ex = read_body(&mut r, version)?;
        if r.pos != body.len() {
            return Err(SnapshotError::TrailingBytes(body.len() - r.pos));
        }
        ex.verify_invariants()
            .map_err(SnapshotError::Inconsistent)?;
        Ok(ex)
    }
}

fn write_spec(w: &mut Writer, s: &MarketSpec) {
    w.u32(s.market);
    w.0.extend_from_slice(&s.symbol.0);
    w.u32(s.base);
    w.u32(s.quote);
    w.i64(s.tick_size);
    w.i64(s.lot_size);
    w.u64(s.qty_min);
    w.u64(s.qty_max);
    w.u32(s.band_ppm);
    w.i64(s.reference_price);
    w.u32(s.maker_fee_ppm);
    w.u32(s.taker_fee_ppm);
}

fn read_spec(r: &mut Reader) -> Result<MarketSpec, SnapshotError> {
    Ok(MarketSpec {
        market: r.u32()?,
        symbol: Symbol(r.take(16)?.try_into().expect("16 bytes")),
        base: r.u32()?,
        quote: r.u32()?,
        tick_size: r.i64()?,
        lot_size: r.i64()?,
        qty_min: r.u64()?,
        qty_max: r.u64()?,
        band_ppm: r.u32()?,
        reference_price: r.i64()?,
        maker_fee_ppm: r.u32()?,
        taker_fee_ppm: r.u32()?,
    })
}

fn read_body(r: &mut Reader, version: u32) -> Result<Exchange, SnapshotError> {
    let mut ex = Exchange::new();
    // `new` created the fee account; the snapshot lists it again.
    ex.accounts.clear();
    ex.account_index.clear();
    ex.next_order_id = r.u64()?;
    check(ex.next_order_id >= 1, "next order id")?;
    let n = r.len(29)?;
    for _ in 0..n {
        let id = r.u32()?;
        check(id > 0 && id < ID_MAX, "asset id")?;
        let symbol = Symbol(r.take(16)?.try_into().expect("16 bytes"));
        let decimals = r.u8()?;
        let supply = r.i64()?;
        let i = id as usize;
        if ex.assets.len() <= i {
            ex.assets.resize(i + 1, None);
            ex.supply.resize(i + 1, 0);
        }
        check(ex.assets[i].is_none(), "duplicate asset")?;
        ex.assets[i] = Some(Asset { symbol, decimals });
        ex.supply[i] = supply;
    }
    let n = r.len(13)?;
    for i in 0..n {
        let id = r.u32()?;
        let suspended = r.bool()?;
        let nb = r.len(16)?;
        check(nb <= ex.assets.len(), "balances beyond the assets")?;
        let mut balances = Vec::with_capacity(nb);
        for _ in 0..nb {
            balances.push(Balance {
                available: r.i64()?,
                held: r.i64()?,
            });
        }
        let nt = r.len(12)?;
        let mut fee_tiers = FeeTiers::default();
        for _ in 0..nt {
            let (m, maker, taker) = (r.u32()?, r.u32()?, r.u32()?);
            fee_tiers.insert(m, (maker, taker));
        }
        check(
            ex.account_index.insert(id, i as u32).is_none(),
            "duplicate account",
        )?;
        ex.accounts.push(Account {
            id,
            suspended,
            balances: balances.into(),
            open_orders: OpenOrders::new(),
            fee_tiers,
        });
    }
    check(
        ex.account_index.get(&FEE_ACCOUNT) == Some(&0),
        "fee account first",
    )?;
    let n = r.len(100)?;
    for _ in 0..n {
        read_market(r, &mut ex)?;
    }
    let n = r.len(48)?;
    for _ in 0..n {
        let key_id = r.u64()?;
        let account = r.u32()?;
        let secret_hash = r.take(32)?.try_into().expect("32 bytes");
        let permissions = r.u32()?;
        check(ex.account_index.contains_key(&account), "api key account")?;
        let key = ApiKey {
            account,
            secret_hash,
            permissions,
        };
        check(
            ex.api_keys.insert(key_id, key).is_none(),
            "duplicate api key",
        )?;
    }
    for refs in 0..2 {
        let n = r.len(8)?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(r.u64()?);
        }
        if refs == 0 {
            ex.deposit_refs = set;
        } else {
            ex.withdraw_refs = set;
        }
    }
    if version >= 2 && r.pos < r.bytes.len() {
        // Present only when some market's caps are not the default: canonical.
        let n = r.len(12)?;
        check(n > 0, "empty limits section")?;
        let mut last = 0;
        for _ in 0..n {
            let (market, per_account, per_market) = (r.u32()?, r.u32()?, r.u32()?);
            check(market > last, "limits order")?;
            last = market;
            let limits = OpenOrderLimits {
                per_account,
                per_market,
            };
            check(limits != OpenOrderLimits::DEFAULT, "default limits listed")?;
            let m = ex.markets.get_mut(market as usize).and_then(|m| m.as_mut());
            m.ok_or(SnapshotError::Invalid("limits of an unknown market"))?
                .limits = limits;
        }
    }
    Ok(ex)
}

fn read_market(r: &mut Reader, ex: &mut Exchange) -> Result<(), SnapshotError> {
    let spec = read_spec(r)?;
    check(spec.market > 0 && spec.market < ID_MAX, "market id")?;
    check(
        ex.asset(spec.base).is_some() && ex.asset(spec.quote).is_some(),
        "market assets",
    )?;
    check(spec.tick_size > 0 && spec.lot_size > 0, "market sizes")?;
    let status = MarketStatus::from_u8(r.u8()?).ok_or(SnapshotError::Invalid("market status"))?;
    let reference_price = r.i64()?;
    let trade_count = r.u64()?;
    let volume_lots = r.u64()?;
    let n = r.len(55)?;
    let mut book = OrderBook::with_capacity(n);
    for _ in 0..n {
        let id = r.u64()?;
        let side = Side::from_u8(r.u8()?).ok_or(SnapshotError::Invalid("order side"))?;
        let price = r.i64()?;
        let qty = r.u64()?;
        let owner = r.u32()?;
        let client_order_id = r.u64()?;
        let mut meta = OrderMeta {
            open_slot: NO_SLOT,
            hold: r.i64()?,
            maker_fee_ppm: r.u32()?,
            taker_fee_ppm: r.u32()?,
            stp: r.u8()?,
            post_only: r.bool()?,
            has_client_id: client_order_id != 0,
        };
        check(StpMode::from_u8(meta.stp).is_some(), "order stp")?;
        check(
            qty > 0 && price > 0 && id < ex.next_order_id,
            "order fields",
        )?;
        check((owner as usize) < ex.accounts.len(), "order account")?;
        check(!book.contains(id), "duplicate order")?;
        // Orders arrive level by level in time priority, best level first per side.
        if let Some(best) = book.best_price(side) {
            let worse_or_same = match side {
                Side::Buy => price <= best,
                Side::Sell => price >= best,
            };
            check(worse_or_same, "order sequence")?;
        }
        // A level's total must fit its counter.
        check(
            book.qty_at(side, price).checked_add(qty).is_some(),
            "level total",
        )?;
        // Ids are unique across books (checked by `verify_invariants`), so each order
        // takes a slot of its own.
        // Client ids are unique among an account's open orders, in every market.
        let open = &mut ex.accounts[owner as usize].open_orders;
        check(
            open.find_client(client_order_id).is_none(),
            "duplicate client id",
        )?;
        meta.open_slot = open.insert(id, spec.market, client_order_id);
        book.insert(id, side, price, qty, owner, meta);
        if client_order_id != 0 {
            let handle = book.find_handle(id).expect("just inserted");
            open.set_handle(meta.open_slot, handle);
        }
    }
    check(!book.is_crossed(), "crossed book")?;
    let i = spec.market as usize;
    if ex.markets.len() <= i {
        ex.markets.resize(i + 1, None);
    }
    check(ex.markets[i].is_none(), "duplicate market")?;
    ex.markets[i] = Some(Market {
        spec,
        status,
        reference_price,
        limits: OpenOrderLimits::DEFAULT,
        book,
        trade_count,
        volume_lots,
    });
    Ok(())
}
