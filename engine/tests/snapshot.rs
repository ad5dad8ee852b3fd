//! `Exchange::restore` accepts exactly what `Exchange::snapshot` wrote and refuses
//! anything else with an error, never a panic.

use ringex_engine::snapshot::{SnapshotError, SNAPSHOT_MAGIC, SNAPSHOT_VERSION};
use ringex_engine::*;

const HEADER: usize = 24;

/// A small but complete state: two assets, a market, two funded accounts, a fee tier,
/// an API key, resting orders on both sides, one trade, a suspended account.
fn small_exchange() -> Exchange {
    let mut ex = Exchange::new();
    ex.set_checked(true);
    let spec = MarketSpec {
        market: 1,
        symbol: Symbol::new("BTC-USD").unwrap(),
        base: 1,
        quote: 2,
        tick_size: 10,
        lot_size: 1_000,
        qty_min: 1,
        qty_max: 100,
        band_ppm: 100_000,
        reference_price: 100,
        maker_fee_ppm: 1_000,
        taker_fee_ppm: 2_500,
    };
    let place = |account, side, price, qty, cid| match limit(account, side, price, qty) {
        Command::Place(p) => Command::Place(PlaceOrder {
            client_order_id: cid,
            ..p
        }),
        _ => unreachable!(),
    };
    let cmds = [
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        },
        Command::CreateAsset {
            asset: 2,
            symbol: Symbol::new("USD").unwrap(),
            decimals: 2,
        },
        Command::CreateMarket(spec),
        Command::CreateAccount { account: 1 },
        Command::CreateAccount { account: 2 },
        Command::Deposit {
            account: 1,
            asset: 2,
            amount: 100_000,
            external_ref: 1,
        },
        Command::Deposit {
            account: 2,
            asset: 1,
            amount: 50_000,
            external_ref: 2,
        },
        Command::Withdraw {
            account: 2,
            asset: 1,
            amount: 1_000,
            external_ref: 1,
        },
        Command::SetFeeTier {
            account: 2,
            market: 1,
            fees: Some((0, 500)),
        },
        Command::AddApiKey {
            account: 1,
            key_id: 7,
            secret_hash: [0xAB; 32],
            permissions: 3,
        },
        place(1, Side::Buy, 98, 5, 11),
        place(1, Side::Buy, 99, 2, 12),
        place(2, Side::Sell, 102, 4, 21),
        place(2, Side::Sell, 99, 1, 22),
        Command::SuspendAccount { account: 2 },
    ];
    for cmd in &cmds {
        let mut out = Vec::new();
        ex.apply(cmd, &mut out);
        assert!(
            !out.iter().any(|e| matches!(e, Event::Rejected { .. })),
            "{cmd:?}: {out:?}"
        );
    }
    ex
}

fn limit(account: AccountId, side: Side, price: Price, qty: Qty) -> Command {
    Command::Place(PlaceOrder {
        account,
        market: 1,
        client_order_id: 0,
        side,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        price,
        qty,
        quote_budget: 0,
        stp: StpMode::None,
    })
}

fn restore_no_panic(bytes: &[u8]) -> Result<Exchange, SnapshotError> {
    match std::panic::catch_unwind(|| Exchange::restore(bytes)) {
        Ok(r) => r,
        Err(_) => panic!("restore panicked on {} bytes: {bytes:02x?}", bytes.len()),
    }
}

#[test]
fn restore_of_a_snapshot_reproduces_the_state_hash_and_the_bytes() {
    let ex = small_exchange();
    let snap = ex.snapshot();
    assert_eq!(&snap[..8], &SNAPSHOT_MAGIC);
    let back = Exchange::restore(&snap).expect("own snapshot restores");
    assert_eq!(back.state_hash(), ex.state_hash());
    assert_eq!(back.snapshot(), snap);
}

#[test]
fn restore_of_an_empty_exchange_round_trips() {
    let ex = Exchange::new();
    let back = Exchange::restore(&ex.snapshot()).expect("restores");
    assert_eq!(back.state_hash(), ex.state_hash());
}

#[test]
fn restore_rejects_every_truncation() {
    let snap = small_exchange().snapshot();
    for len in 0..snap.len() {
        assert!(
            restore_no_panic(&snap[..len]).is_err(),
            "a snapshot truncated to {len} of {} bytes was accepted",
            snap.len()
        );
    }
    assert!(matches!(
        Exchange::restore(&snap[..HEADER - 1]),
        Err(SnapshotError::Truncated { .. })
    ));
}

#[test]
fn restore_rejects_trailing_bytes() {
    let mut snap = small_exchange().snapshot();
    snap.push(0);
    assert!(restore_no_panic(&snap).is_err());
}

#[test]
fn restore_rejects_any_single_flipped_bit() {
    let snap = small_exchange().snapshot();
    for pos in 0..snap.len() {
        for bit in 0..8 {
            let mut bad = snap.clone();
            bad[pos] ^= 1 << bit;
            assert!(
                restore_no_panic(&bad).is_err(),
                "a snapshot with bit {bit} of byte {pos} flipped was accepted"
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_the_body_is_a_checksum_mismatch() {
    let snap = small_exchange().snapshot();
    for pos in HEADER..snap.len() {
        let mut bad = snap.clone();
        bad[pos] ^= 0x10;
        assert!(
            matches!(
                Exchange::restore(&bad),
                Err(SnapshotError::ChecksumMismatch { .. })
            ),
            "byte {pos}"
        );
    }
}

#[test]
fn restore_rejects_a_wrong_magic() {
    let mut snap = small_exchange().snapshot();
    snap[0] = b'X';
    assert_eq!(
        Exchange::restore(&snap).err(),
        Some(SnapshotError::BadMagic)
    );
    assert_eq!(
        Exchange::restore(b"definitely not a snapshot at all").err(),
        Some(SnapshotError::BadMagic)
    );
}

#[test]
fn restore_rejects_a_wrong_version() {
    let mut snap = small_exchange().snapshot();
    for version in [0, SNAPSHOT_VERSION + 1, u32::MAX] {
        snap[8..12].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            Exchange::restore(&snap).err(),
            Some(SnapshotError::UnsupportedVersion(version))
        );
    }
}

/// A corrupted body whose checksum was recomputed (a bug in a writer, not a disk error)
/// passes the CRC: the decoder itself must still refuse it or decode it, never panic.
#[test]
fn restore_never_panics_on_a_corrupt_body_with_a_valid_checksum() {
    let snap = small_exchange().snapshot();
    let with_crc = |mut bytes: Vec<u8>| {
        let crc = crc32(&bytes[HEADER..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    assert_eq!(
        with_crc(snap.clone()),
        snap,
        "the test's CRC-32 is the snapshot's"
    );
    for pos in HEADER..snap.len() {
        for value in [0x00, 0x01, 0x7F, 0x80, 0xFF, snap[pos] ^ 0x01] {
            let mut bad = snap.clone();
            bad[pos] = value;
            if let Ok(ex) = restore_no_panic(&with_crc(bad)) {
                // Whatever it decoded must be usable.
                let _ = ex.state_hash();
                let _ = ex.snapshot();
            }
        }
    }
}

/// A body that decodes and passes the CRC but describes a state that breaks the
/// invariants (a hold that does not match its order, balances that do not sum to
/// deposits minus withdrawals, a negative balance, a quantity whose hold overflows) is
/// refused by `restore`, so no later command can trip over it.
#[test]
fn restore_refuses_a_checksummed_body_that_breaks_the_invariants() {
    let snap = small_exchange().snapshot();
    let (mut broken, mut panics_later) = (Vec::new(), Vec::new());
    for pos in HEADER..snap.len() {
        for value in [0x00, 0x01, 0x7F, 0x80, 0xFF, snap[pos] ^ 0x01] {
            let mut bad = snap.clone();
            bad[pos] = value;
            let crc = crc32(&bad[HEADER..]);
            bad[12..16].copy_from_slice(&crc.to_le_bytes());
            let Ok(ex) = Exchange::restore(&bad) else {
                continue;
            };
            if std::panic::catch_unwind(|| ex.check_invariants()).is_err() {
                broken.push((pos, value));
            }
            let later = std::panic::catch_unwind(move || {
                let mut ex = ex;
                let mut out = Vec::new();
                ex.apply(&Command::ResumeAccount { account: 2 }, &mut out);
                for (account, side, price) in [
                    (1, Side::Buy, 105),
                    (2, Side::Sell, 95),
                    (2, Side::Buy, 95),
                    (1, Side::Sell, 105),
                ] {
                    ex.apply(&limit(account, side, price, 3), &mut out);
                }
                ex.apply(
                    &Command::CancelAll {
                        account: 1,
                        market: None,
                    },
                    &mut out,
                );
                ex.apply(
                    &Command::SetMarketStatus {
                        market: 1,
                        status: MarketStatus::Halted,
                        cancel_resting: true,
                    },
                    &mut out,
                );
            });
            if later.is_err() {
                panics_later.push((pos, value));
            }
        }
    }
    assert!(
        broken.is_empty() && panics_later.is_empty(),
        "{} corrupt bodies restored into a state breaking the invariants, e.g. (byte, value) \
         {:?}; {} of them make later commands panic, e.g. {:?}",
        broken.len(),
        &broken[..broken.len().min(8)],
        panics_later.len(),
        &panics_later[..panics_later.len().min(8)],
    );
}

/// CRC-32 (IEEE), bit by bit: enough for a test, and independent of the engine's crate.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn open_order_caps_survive_a_snapshot_and_default_caps_add_nothing_to_it() {
    let mut ex = Exchange::new();
    let mut out = Vec::new();
    for c in [
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        },
        Command::CreateAsset {
            asset: 2,
            symbol: Symbol::new("USD").unwrap(),
            decimals: 2,
        },
        Command::CreateMarket(MarketSpec {
            market: 1,
            symbol: Symbol::new("BTC-USD").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 1,
            qty_min: 1,
            qty_max: 100,
            band_ppm: 0,
            reference_price: 100,
            maker_fee_ppm: 0,
            taker_fee_ppm: 0,
        }),
    ] {
        ex.apply(&c, &mut out);
    }
    let before = ex.snapshot();
    let hash = ex.state_hash();
    ex.apply(
        &Command::SetMarketLimits {
            market: 1,
            max_open_orders_per_account: 7,
            max_open_orders: 70,
        },
        &mut out,
    );
    let with_caps = ex.snapshot();
    assert_eq!(with_caps.len(), before.len() + 16);
    assert_ne!(ex.state_hash(), hash);
    let back = Exchange::restore(&with_caps).unwrap();
    let limits = back.market(1).unwrap().limits;
    assert_eq!((limits.per_account, limits.per_market), (7, 70));
    assert_eq!(back.state_hash(), ex.state_hash());
    // Back to the defaults: the body is the one without caps again.
    ex.apply(
        &Command::SetMarketLimits {
            market: 1,
            max_open_orders_per_account: ringex_engine::exchange::DEFAULT_OPEN_ORDERS_PER_ACCOUNT,
            max_open_orders: ringex_engine::exchange::DEFAULT_OPEN_ORDERS_PER_MARKET,
        },
        &mut out,
    );
    assert_eq!(ex.snapshot(), before);
    assert_eq!(ex.state_hash(), hash);
}

/// [`small_exchange`] plus a second market in which account 1 rests a buy with client id
/// `0xC1D0_0000_0000_0002` beside its buy with `0xC1D0_0000_0000_0001` in market 1.
fn two_markets_with_client_ids() -> Exchange {
    let mut ex = small_exchange();
    let mut out = Vec::new();
    let second = MarketSpec {
        market: 2,
        symbol: Symbol::new("BTC-USD2").unwrap(),
        ..ex.market(1).unwrap().spec
    };
    ex.apply(&Command::CreateMarket(second), &mut out);
    for (market, cid, price) in [
        (1, 0xC1D0_0000_0000_0001, 97),
        (2, 0xC1D0_0000_0000_0002, 96),
    ] {
        if let Command::Place(p) = limit(1, Side::Buy, price, 1) {
            out.clear();
            ex.apply(
                &Command::Place(PlaceOrder {
                    market,
                    client_order_id: cid,
                    ..p
                }),
                &mut out,
            );
            assert!(matches!(out[0], Event::Accepted { .. }), "{out:?}");
        }
    }
    ex
}

#[test]
fn a_restored_exchange_finds_orders_by_client_id_in_every_market() {
    let ex = two_markets_with_client_ids();
    let mut back = Exchange::restore(&ex.snapshot()).unwrap();
    back.set_checked(true);
    assert_eq!(back.state_hash(), ex.state_hash());
    let mut out = Vec::new();
    for (market, cid) in [
        (1, 11),
        (1, 0xC1D0_0000_0000_0001),
        (2, 0xC1D0_0000_0000_0002),
    ] {
        out.clear();
        back.apply(
            &Command::Cancel {
                account: 1,
                market,
                order: OrderRef::Client(cid),
            },
            &mut out,
        );
        assert!(matches!(out[0], Event::Cancelled { .. }), "{out:?}");
    }
}

#[test]
fn restore_refuses_one_accounts_client_id_on_two_orders_in_two_markets() {
    let snap = two_markets_with_client_ids().snapshot();
    let (first, second) = (
        0xC1D0_0000_0000_0001u64.to_le_bytes(),
        0xC1D0_0000_0000_0002u64.to_le_bytes(),
    );
    let at = snap
        .windows(8)
        .position(|w| w == second)
        .expect("the second client id is in the body");
    let mut bad = snap.clone();
    bad[at..at + 8].copy_from_slice(&first);
    let crc = crc32(&bad[HEADER..]);
    bad[12..16].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        restore_no_panic(&bad).err(),
        Some(SnapshotError::Invalid("duplicate client id"))
    );
}
