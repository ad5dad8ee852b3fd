use proptest::prelude::*;
use ringex_engine::{
    CancelReason, Command, CommandKind, MarketSpec, MarketStatus, OrderKind, OrderRef,
    RejectReason, Side, StpMode, Symbol, TimeInForce,
};

use super::*;

const DOC: &str = include_str!("../../../docs/protocol.md");

// ---------------------------------------------------------------- strategies

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Buy), Just(Side::Sell)]
}
fn order_kind() -> impl Strategy<Value = OrderKind> {
    prop_oneof![Just(OrderKind::Limit), Just(OrderKind::Market)]
}
fn tif() -> impl Strategy<Value = TimeInForce> {
    (1u8..=4).prop_map(|v| TimeInForce::from_u8(v).unwrap())
}
fn stp() -> impl Strategy<Value = StpMode> {
    (0u8..=3).prop_map(|v| StpMode::from_u8(v).unwrap())
}
fn market_status() -> impl Strategy<Value = MarketStatus> {
    (1u8..=4).prop_map(|v| MarketStatus::from_u8(v).unwrap())
}
fn cancel_reason() -> impl Strategy<Value = CancelReason> {
    (1u8..=7).prop_map(|v| CancelReason::from_u8(v).unwrap())
}
fn reject_reason() -> impl Strategy<Value = RejectReason> {
    proptest::sample::select(RejectReason::ALL.to_vec())
}
fn order_ref() -> impl Strategy<Value = OrderRef> {
    prop_oneof![
        any::<u64>().prop_map(OrderRef::Exchange),
        any::<u64>().prop_map(OrderRef::Client),
    ]
}
fn symbol() -> impl Strategy<Value = Symbol> {
    any::<[u8; 16]>().prop_map(Symbol)
}
fn admin_kind() -> impl Strategy<Value = CommandKind> {
    proptest::sample::select(
        CommandKind::ALL
            .into_iter()
            .filter(|k| k.is_admin())
            .collect::<Vec<_>>(),
    )
}

fn admin_command() -> impl Strategy<Value = Command> {
    let spec = (
        (any::<u32>(), symbol(), any::<u32>(), any::<u32>()),
        (any::<i64>(), any::<i64>(), any::<u64>(), any::<u64>()),
        (any::<u32>(), any::<i64>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(|(a, b, c)| {
            Command::CreateMarket(MarketSpec {
                market: a.0,
                symbol: a.1,
                base: a.2,
                quote: a.3,
                tick_size: b.0,
                lot_size: b.1,
                qty_min: b.2,
                qty_max: b.3,
                band_ppm: c.0,
                reference_price: c.1,
                maker_fee_ppm: c.2,
                taker_fee_ppm: c.3,
            })
        });
    prop_oneof![
        (any::<u32>(), symbol(), any::<u8>()).prop_map(|(asset, symbol, decimals)| {
            Command::CreateAsset {
                asset,
                symbol,
                decimals,
            }
        }),
        spec,
        any::<u32>().prop_map(|account| Command::CreateAccount { account }),
        (
            any::<u32>(),
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(account, asset, amount, external_ref, deposit)| if deposit {
                    Command::Deposit {
                        account,
                        asset,
                        amount,
                        external_ref,
                    }
                } else {
                    Command::Withdraw {
                        account,
                        asset,
                        amount,
                        external_ref,
                    }
                }
            ),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(market, maker, taker)| {
            Command::SetMarketFees {
                market,
                maker_fee_ppm: maker,
                taker_fee_ppm: taker,
            }
        }),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::option::of((any::<u32>(), any::<u32>()))
        )
            .prop_map(|(account, market, fees)| Command::SetFeeTier {
                account,
                market,
                fees,
            }),
        (any::<u32>(), market_status(), any::<bool>()).prop_map(
            |(market, status, cancel_resting)| Command::SetMarketStatus {
                market,
                status,
                cancel_resting,
            }
        ),
        (any::<u32>(), any::<bool>()).prop_map(|(account, suspend)| if suspend {
            Command::SuspendAccount { account }
        } else {
            Command::ResumeAccount { account }
        }),
        (any::<u32>(), any::<u64>(), any::<[u8; 32]>(), any::<u32>()).prop_map(
            |(account, key_id, secret_hash, permissions)| Command::AddApiKey {
                account,
                key_id,
                secret_hash,
                permissions,
            }
        ),
        any::<u64>().prop_map(|key_id| Command::RevokeApiKey { key_id }),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(market, a, m)| {
            Command::SetMarketLimits {
                market,
                max_open_orders_per_account: a,
                max_open_orders: m,
            }
        }),
    ]
}

fn login() -> impl Strategy<Value = Login> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<[u8; 32]>()),
        (any::<u64>(), any::<u64>(), any::<u32>(), 0u32..=1),
    )
        .prop_map(|(a, b)| Login {
            api_key_id: a.0,
            timestamp_ns: a.1,
            nonce: a.2,
            signature: a.3,
            resume_session: b.0,
            resume_from_seq: b.1,
            heartbeat_ms: b.2,
            flags: b.3,
        })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let new_order = (
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            side(),
            order_kind(),
        ),
        (tif(), stp(), any::<i64>(), any::<u64>(), any::<i64>()),
    )
        .prop_map(|(a, b)| {
            ClientMessage::NewOrder(NewOrder {
                request_id: a.0,
                market: a.1,
                client_order_id: a.2,
                side: a.3,
                kind: a.4,
                tif: b.0,
                stp: b.1,
                price: b.2,
                qty: b.3,
                quote_budget: b.4,
            })
        });
    prop_oneof![
        login().prop_map(ClientMessage::Login),
        Just(ClientMessage::Logout),
        Just(ClientMessage::Heartbeat),
        new_order,
        (any::<u64>(), any::<u32>(), order_ref()).prop_map(|(request_id, market, order)| {
            ClientMessage::Cancel(Cancel {
                request_id,
                market,
                order,
            })
        }),
        (
            any::<u64>(),
            any::<u32>(),
            order_ref(),
            any::<i64>(),
            any::<u64>()
        )
            .prop_map(|(request_id, market, order, price, qty)| {
                ClientMessage::Replace(Replace {
                    request_id,
                    market,
                    order,
                    price,
                    qty,
                })
            }),
        (any::<u64>(), any::<u32>()).prop_map(|(request_id, market)| {
            ClientMessage::MassCancel(MassCancel { request_id, market })
        }),
        any::<u64>()
            .prop_map(|request_id| ClientMessage::BalanceQuery(BalanceQuery { request_id })),
        (any::<u64>(), any::<u32>()).prop_map(|(request_id, market)| {
            ClientMessage::OpenOrdersQuery(OpenOrdersQuery { request_id, market })
        }),
        (any::<u64>(), admin_command()).prop_map(|(request_id, command)| {
            ClientMessage::Admin(AdminRequest {
                request_id,
                command,
            })
        }),
    ]
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let ids = (1u64..u64::MAX, any::<u64>(), any::<u64>(), any::<u64>());
    let filled = (
        ids.clone(),
        (any::<u64>(), any::<u32>(), side(), any::<bool>()),
        (any::<i64>(), any::<u64>(), any::<u64>(), any::<i64>()),
    )
        .prop_map(|(a, b, c)| {
            ServerMessage::Filled(Filled {
                seq: a.0,
                request_id: a.1,
                order_id: a.2,
                client_order_id: a.3,
                match_id: b.0,
                market: b.1,
                side: b.2,
                liquidity: if b.3 {
                    Liquidity::Maker
                } else {
                    Liquidity::Taker
                },
                price: c.0,
                qty: c.1,
                remaining_qty: c.2,
                fee: c.3,
            })
        });
    let accepted = (
        ids.clone(),
        any::<u32>(),
        side(),
        any::<i64>(),
        any::<u64>(),
    )
        .prop_map(|(a, market, side, price, qty)| {
            ServerMessage::OrderAccepted(OrderAccepted {
                seq: a.0,
                request_id: a.1,
                order_id: a.2,
                client_order_id: a.3,
                market,
                side,
                price,
                qty,
            })
        });
    let open_order = (
        ids.clone(),
        any::<u32>(),
        side(),
        any::<i64>(),
        any::<u64>(),
    )
        .prop_map(|(a, market, side, price, remaining_qty)| {
            ServerMessage::OpenOrder(OpenOrder {
                seq: a.0,
                request_id: a.1,
                order_id: a.2,
                client_order_id: a.3,
                market,
                side,
                price,
                remaining_qty,
            })
        });
    let rejected = (
        ids.clone(),
        proptest::sample::select(
            template::CLIENT_ALL
                .into_iter()
                .filter(|t| template::is_request(*t))
                .collect::<Vec<_>>(),
        ),
        proptest::option::of(order_ref()),
        reject_reason(),
    )
        .prop_map(|(a, request_template, order, reason)| {
            ServerMessage::OrderRejected(OrderRejected {
                seq: a.0,
                request_id: a.1,
                request_template,
                order,
                market: a.2 as u32,
                reason,
            })
        });
    let cancelled = (ids.clone(), any::<u32>(), cancel_reason()).prop_map(|(a, market, reason)| {
        ServerMessage::Cancelled(Cancelled {
            seq: a.0,
            request_id: a.1,
            order_id: a.2,
            client_order_id: a.3,
            market,
            remaining_qty: a.2 ^ a.3,
            reason,
        })
    });
    let replaced = (
        ids.clone(),
        any::<u32>(),
        any::<i64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(a, market, price, qty, priority_kept)| {
            ServerMessage::Replaced(Replaced {
                seq: a.0,
                request_id: a.1,
                order_id: a.2,
                client_order_id: a.3,
                market,
                price,
                qty,
                priority_kept,
            })
        });
    let small = (ids.clone(), any::<u32>(), any::<u32>(), 0u8..5).prop_map(|(a, x, y, which)| {
        let (seq, request_id) = (a.0, a.1);
        match which {
            0 => ServerMessage::MassCancelDone(MassCancelDone {
                seq,
                request_id,
                market: x,
                count: y,
            }),
            1 => ServerMessage::BalanceEnd(BalanceEnd {
                seq,
                request_id,
                count: x,
            }),
            2 => ServerMessage::OpenOrdersEnd(OpenOrdersEnd {
                seq,
                request_id,
                market: x,
                count: y,
            }),
            3 => ServerMessage::RequestDone(RequestDone {
                seq,
                request_id,
                count: x,
            }),
            _ => ServerMessage::Balance(Balance {
                seq,
                request_id,
                asset: x,
                available: a.2 as i64,
                held: a.3 as i64,
            }),
        }
    });
    let session = prop_oneof![
        (
            (any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u32>(), any::<u32>(), 0u32..=3)
        )
            .prop_map(|(a, b)| ServerMessage::LoginAccepted(LoginAccepted {
                session_id: a.0,
                next_seq: a.1,
                last_request_id: a.2,
                account: b.0,
                heartbeat_ms: b.1,
                flags: b.2,
            })),
        proptest::sample::select(LoginRejectReason::ALL.to_vec())
            .prop_map(|reason| ServerMessage::LoginRejected { reason }),
        proptest::sample::select(LogoutReason::ALL.to_vec())
            .prop_map(|reason| ServerMessage::Logout { reason }),
        Just(ServerMessage::Heartbeat),
    ];
    prop_oneof![
        session,
        accepted,
        rejected,
        filled,
        cancelled,
        replaced,
        small,
        open_order,
        (ids.clone(), any::<u32>(), market_status()).prop_map(|(a, market, status)| {
            ServerMessage::SystemEvent(SystemEvent {
                seq: a.0,
                request_id: a.1,
                market,
                status,
            })
        }),
        (ids, admin_kind(), any::<bool>()).prop_map(|(a, kind, duplicate)| {
            ServerMessage::AdminAck(AdminAck {
                seq: a.0,
                request_id: a.1,
                kind,
                id: a.2,
                duplicate,
            })
        }),
    ]
}

// ---------------------------------------------------------------- helpers

fn enc_client(m: &ClientMessage) -> Vec<u8> {
    let mut buf = [0u8; FRAME_SIZE_MAX];
    let n = encode_client(m, &mut buf);
    assert_eq!(n, m.frame_len());
    buf[..n].to_vec()
}

fn enc_server(m: &ServerMessage) -> Vec<u8> {
    let mut buf = [0u8; FRAME_SIZE_MAX];
    let n = encode_server(m, &mut buf);
    assert_eq!(n, m.frame_len());
    buf[..n].to_vec()
}

/// Checks the properties every frame must have and the round trip.
fn check_client(m: &ClientMessage) {
    let bytes = enc_client(m);
    check_frame_shape(
        &bytes,
        m.template_id(),
        client_block_len(m.template_id()).unwrap(),
    );
    assert_eq!(decode_client(&bytes), Ok((*m, bytes.len())));
    // Trailing bytes of the next frame are not consumed.
    let mut two = bytes.clone();
    two.extend_from_slice(&bytes);
    assert_eq!(decode_client(&two), Ok((*m, bytes.len())));
    for cut in 0..bytes.len() {
        assert_eq!(
            decode_client(&bytes[..cut]),
            Err(FrameError::Incomplete),
            "cut {cut}"
        );
    }
}

fn check_server(m: &ServerMessage) {
    let bytes = enc_server(m);
    check_frame_shape(
        &bytes,
        m.template_id(),
        server_block_len(m.template_id()).unwrap(),
    );
    assert_eq!(decode_server(&bytes), Ok((*m, bytes.len())));
    for cut in 0..bytes.len() {
        assert_eq!(
            decode_server(&bytes[..cut]),
            Err(FrameError::Incomplete),
            "cut {cut}"
        );
    }
}

fn check_frame_shape(bytes: &[u8], template_id: u16, block_len: usize) {
    assert_eq!(bytes.len() % ALIGN, 0);
    assert!(bytes.len() <= FRAME_SIZE_MAX);
    let h = frame_header(bytes).unwrap();
    assert_eq!(h.frame_len as usize, bytes.len());
    assert_eq!(h.block_len as usize, block_len);
    assert_eq!(h.template_id, template_id);
    assert_eq!((h.schema_id, h.version), (SCHEMA_ID, VERSION));
}

/// The same frame as a newer version would send it: `extra` appended bytes.
fn with_appended(bytes: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.extend_from_slice(extra);
    let frame_len = out.len() as u16;
    out[0..2].copy_from_slice(&frame_len.to_le_bytes());
    out[2..4].copy_from_slice(&(frame_len - HEADER_SIZE as u16).to_le_bytes());
    out[7] = VERSION + 1;
    out
}

/// Decodes every frame of a stream until an error; never panics.
fn decode_stream(mut bytes: &[u8], client: bool) -> usize {
    let mut frames = 0;
    loop {
        let consumed = if client {
            decode_client(bytes).map(|(m, n)| {
                // Whatever decodes re-encodes to the same bytes (version 1, known length).
                let h = frame_header(bytes).unwrap();
                if h.version == VERSION && n == m.frame_len() {
                    assert_eq!(enc_client(&m), &bytes[..n]);
                }
                n
            })
        } else {
            decode_server(bytes).map(|(m, n)| {
                let h = frame_header(bytes).unwrap();
                if h.version == VERSION && n == m.frame_len() {
                    assert_eq!(enc_server(&m), &bytes[..n]);
                }
                n
            })
        };
        match consumed {
            Ok(n) => {
                assert!(n >= HEADER_SIZE && n <= bytes.len());
                bytes = &bytes[n..];
                frames += 1;
            }
            Err(e) => {
                let _ = e.to_string();
                if let FrameError::InvalidField { frame_len, .. } = e {
                    assert!(frame_len as usize <= bytes.len());
                }
                return frames;
            }
        }
    }
}

// ---------------------------------------------------------------- properties

type BlockLenFn = fn(u16) -> Option<usize>;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn client_messages_round_trip(m in client_message()) {
        check_client(&m);
    }

    #[test]
    fn server_messages_round_trip(m in server_message()) {
        check_server(&m);
    }

    #[test]
    fn appended_fields_are_skipped(
        m in client_message(),
        s in server_message(),
        extra in proptest::collection::vec(any::<u8>(), 1..=6usize),
    ) {
        let mut tail = extra.repeat(8);
        tail.truncate(8 * extra.len());
        let c = with_appended(&enc_client(&m), &tail);
        prop_assert_eq!(decode_client(&c), Ok((m, c.len())));
        let v = with_appended(&enc_server(&s), &tail);
        prop_assert_eq!(decode_server(&v), Ok((s, v.len())));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        decode_stream(&bytes, true);
        decode_stream(&bytes, false);
    }

    /// Random bodies behind valid headers reach the field validation code, which random
    /// headers almost never do.
    #[test]
    fn random_bodies_never_panic_and_canonical(
        pick in any::<prop::sample::Index>(),
        body in proptest::collection::vec(any::<u8>(), 96),
        sparse in any::<bool>(),
    ) {
        for client in [true, false] {
            let (templates, len_of): (&[u16], BlockLenFn) = if client {
                (&template::CLIENT_ALL, client_block_len)
            } else {
                (&template::SERVER_ALL, server_block_len)
            };
            let id = templates[pick.index(templates.len())];
            let block = len_of(id).unwrap();
            let mut frame = vec![0u8; HEADER_SIZE + block];
            frame[0..2].copy_from_slice(&((HEADER_SIZE + block) as u16).to_le_bytes());
            frame[2..4].copy_from_slice(&(block as u16).to_le_bytes());
            frame[4..6].copy_from_slice(&id.to_le_bytes());
            frame[6] = SCHEMA_ID;
            frame[7] = VERSION;
            for (i, b) in frame[HEADER_SIZE..].iter_mut().enumerate() {
                // Sparse bodies (mostly zero, small values) decode far more often.
                *b = if sparse { if body[i] < 200 { 0 } else { body[i] % 4 } } else { body[i] };
            }
            decode_stream(&frame, client);
        }
    }

    #[test]
    fn stream_of_frames_decodes_in_order(ms in proptest::collection::vec(client_message(), 1..20)) {
        let mut stream = Vec::new();
        for m in &ms {
            stream.extend_from_slice(&enc_client(m));
        }
        let mut at = 0;
        for m in &ms {
            let (d, n) = decode_client(&stream[at..]).unwrap();
            prop_assert_eq!(&d, m);
            at += n;
        }
        prop_assert_eq!(at, stream.len());
        prop_assert_eq!(decode_client(&stream[at..]), Err(FrameError::Incomplete));
    }
}

// ---------------------------------------------------------------- samples

/// One message of every client template, with distinct non-zero field values.
fn client_samples() -> Vec<ClientMessage> {
    let mut v = vec![
        ClientMessage::Login(golden_login()),
        ClientMessage::Logout,
        ClientMessage::Heartbeat,
        ClientMessage::NewOrder(golden_new_order()),
        ClientMessage::Cancel(Cancel {
            request_id: 2,
            market: 1,
            order: OrderRef::Client(42),
        }),
        ClientMessage::Replace(Replace {
            request_id: 3,
            market: 1,
            order: OrderRef::Exchange(7),
            price: 6_500_100,
            qty: 20,
        }),
        ClientMessage::MassCancel(MassCancel {
            request_id: 4,
            market: 0,
        }),
        ClientMessage::BalanceQuery(BalanceQuery { request_id: 5 }),
        ClientMessage::OpenOrdersQuery(OpenOrdersQuery {
            request_id: 6,
            market: 2,
        }),
    ];
    let commands = [
        Command::CreateAsset {
            asset: 1,
            symbol: Symbol::new("BTC").unwrap(),
            decimals: 8,
        },
        Command::CreateMarket(MarketSpec {
            market: 1,
            symbol: Symbol::new("BTC-USDT").unwrap(),
            base: 1,
            quote: 2,
            tick_size: 1,
            lot_size: 100_000,
            qty_min: 1,
            qty_max: 1_000_000,
            band_ppm: 100_000,
            reference_price: 6_500_000,
            maker_fee_ppm: 100,
            taker_fee_ppm: 200,
        }),
        Command::CreateAccount { account: 7 },
        Command::Deposit {
            account: 7,
            asset: 2,
            amount: 1_000_000,
            external_ref: 9,
        },
        Command::Withdraw {
            account: 7,
            asset: 2,
            amount: 5,
            external_ref: 10,
        },
        Command::SetMarketFees {
            market: 1,
            maker_fee_ppm: 50,
            taker_fee_ppm: 150,
        },
        Command::SetFeeTier {
            account: 7,
            market: 1,
            fees: None,
        },
        Command::SetMarketStatus {
            market: 1,
            status: MarketStatus::Halted,
            cancel_resting: true,
        },
        Command::SuspendAccount { account: 7 },
        Command::ResumeAccount { account: 7 },
        Command::AddApiKey {
            account: 7,
            key_id: 1001,
            secret_hash: [0xAB; 32],
            permissions: permission::TRADE,
        },
        Command::RevokeApiKey { key_id: 1001 },
        Command::SetMarketLimits {
            market: 1,
            max_open_orders_per_account: 500,
            max_open_orders: 100_000,
        },
    ];
    for (i, command) in commands.into_iter().enumerate() {
        v.push(ClientMessage::Admin(AdminRequest {
            request_id: 100 + i as u64,
            command,
        }));
    }
    v.push(ClientMessage::Promote { request_id: 200 });
    v
}

fn server_samples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::LoginAccepted(LoginAccepted {
            session_id: 0x1234,
            next_seq: 1,
            last_request_id: 0,
            account: 7,
            heartbeat_ms: 1000,
            flags: login_flags::CANCEL_ON_DISCONNECT,
        }),
        ServerMessage::LoginRejected {
            reason: LoginRejectReason::BadSignature,
        },
        ServerMessage::Logout {
            reason: LogoutReason::SlowConsumer,
        },
        ServerMessage::Heartbeat,
        ServerMessage::OrderAccepted(OrderAccepted {
            seq: 1,
            request_id: 1,
            order_id: 7,
            client_order_id: 42,
            market: 1,
            side: Side::Buy,
            price: 6_500_000,
            qty: 25,
        }),
        ServerMessage::OrderRejected(OrderRejected {
            seq: 2,
            request_id: 2,
            request_template: template::CANCEL,
            order: Some(OrderRef::Client(43)),
            market: 1,
            reason: RejectReason::UnknownOrder,
        }),
        ServerMessage::Filled(Filled {
            seq: 3,
            request_id: 0,
            order_id: 7,
            client_order_id: 42,
            match_id: 99,
            market: 1,
            side: Side::Buy,
            liquidity: Liquidity::Maker,
            price: 6_500_000,
            qty: 5,
            remaining_qty: 20,
            fee: 3,
        }),
        ServerMessage::Cancelled(Cancelled {
            seq: 4,
            request_id: 3,
            order_id: 7,
            client_order_id: 42,
            market: 1,
            remaining_qty: 20,
            reason: CancelReason::Requested,
        }),
        ServerMessage::Replaced(Replaced {
            seq: 5,
            request_id: 4,
            order_id: 8,
            client_order_id: 44,
            market: 1,
            price: 6_499_900,
            qty: 10,
            priority_kept: true,
        }),
        ServerMessage::MassCancelDone(MassCancelDone {
            seq: 6,
            request_id: 5,
            market: 0,
            count: 3,
        }),
        ServerMessage::Balance(Balance {
            seq: 7,
            request_id: 6,
            asset: 2,
            available: 1_000,
            held: 250,
        }),
        ServerMessage::BalanceEnd(BalanceEnd {
            seq: 8,
            request_id: 6,
            count: 1,
        }),
        ServerMessage::OpenOrder(OpenOrder {
            seq: 9,
            request_id: 7,
            order_id: 8,
            client_order_id: 44,
            market: 1,
            side: Side::Sell,
            price: 6_600_000,
            remaining_qty: 10,
        }),
        ServerMessage::OpenOrdersEnd(OpenOrdersEnd {
            seq: 10,
            request_id: 7,
            market: 0,
            count: 1,
        }),
        ServerMessage::SystemEvent(SystemEvent {
            seq: 11,
            request_id: 0,
            market: 1,
            status: MarketStatus::Halted,
        }),
        ServerMessage::AdminAck(AdminAck {
            seq: 12,
            request_id: 100,
            kind: CommandKind::Deposit,
            id: 9,
            duplicate: true,
        }),
        ServerMessage::RequestDone(RequestDone {
            seq: 7,
            request_id: 5,
            count: 4,
        }),
        ServerMessage::Promoted(Promoted {
            seq: 8,
            request_id: 200,
            epoch_seq: 1_000_001,
            epoch: 2,
            node_id: 2,
        }),
    ]
}

#[test]
fn samples_cover_every_template_and_round_trip() {
    let client: Vec<u16> = client_samples().iter().map(|m| m.template_id()).collect();
    assert_eq!(client, template::CLIENT_ALL);
    let server: Vec<u16> = server_samples().iter().map(|m| m.template_id()).collect();
    assert_eq!(server, template::SERVER_ALL);
    for m in client_samples() {
        check_client(&m);
    }
    for m in server_samples() {
        check_server(&m);
    }
}

#[test]
fn template_ids_are_disjoint_and_named() {
    for id in template::CLIENT_ALL {
        assert!(client_block_len(id).is_some());
        assert!(server_block_len(id).is_none());
        assert_ne!(template::name(id), "unknown");
    }
    for id in template::SERVER_ALL {
        assert!(server_block_len(id).is_some());
        assert!(client_block_len(id).is_none());
        assert_ne!(template::name(id), "unknown");
    }
    for kind in CommandKind::ALL.into_iter().filter(|k| k.is_admin()) {
        let id = kind as u16 + template::ADMIN_OFFSET;
        assert!(template::is_admin(id) && template::is_request(id));
    }
}

// ---------------------------------------------------------------- framing errors

#[test]
fn bad_lengths_are_refused_early() {
    assert_eq!(decode_client(&[]), Err(FrameError::Incomplete));
    assert_eq!(decode_client(&[16]), Err(FrameError::Incomplete));
    for frame_len in [0u16, 1, 7, 12, 513, 520, 0xFFFF] {
        // Two bytes are enough to refuse: no waiting for a frame that cannot be valid.
        let b = frame_len.to_le_bytes();
        assert_eq!(decode_client(&b), Err(FrameError::BadLength { frame_len }));
        assert_eq!(decode_server(&b), Err(FrameError::BadLength { frame_len }));
        assert_eq!(
            FrameError::BadLength { frame_len }.logout_reason(),
            Some(LogoutReason::MalformedFrame)
        );
    }
    // An HTTP request on the binary port: "GE" is 17735.
    assert!(matches!(
        decode_client(b"GET / HTTP/1.1\r\n"),
        Err(FrameError::BadLength { frame_len: 0x4547 })
    ));
}

#[test]
fn header_errors() {
    let good = enc_client(&ClientMessage::NewOrder(golden_new_order()));

    let mut b = good.clone();
    b[6] = 2;
    assert_eq!(
        decode_client(&b),
        Err(FrameError::BadSchema { schema_id: 2 })
    );

    let mut b = good.clone();
    b[7] = 0;
    assert_eq!(
        decode_client(&b),
        Err(FrameError::BadVersion { version: 0 })
    );

    // block_len must be frame_len - 8.
    let mut b = good.clone();
    b[2] = 40;
    assert_eq!(
        decode_client(&b),
        Err(FrameError::BadBlockLength {
            template_id: template::NEW_ORDER,
            block_len: 40
        })
    );

    // A block shorter than the one we know is refused.
    let mut b = good[..good.len() - 8].to_vec();
    b[0] = (good.len() - 8) as u8;
    b[2] = (good.len() - 16) as u8;
    assert_eq!(
        decode_client(&b),
        Err(FrameError::BadBlockLength {
            template_id: template::NEW_ORDER,
            block_len: 40
        })
    );

    // Server templates are unknown to the client decoder and vice versa.
    let s = enc_server(&ServerMessage::Heartbeat);
    assert_eq!(
        decode_client(&s),
        Err(FrameError::UnknownTemplate {
            template_id: template::SERVER_HEARTBEAT
        })
    );
    assert_eq!(
        decode_server(&good),
        Err(FrameError::UnknownTemplate {
            template_id: template::NEW_ORDER
        })
    );
    assert_eq!(
        FrameError::UnknownTemplate { template_id: 9 }.logout_reason(),
        Some(LogoutReason::UnknownTemplate)
    );
    assert_eq!(FrameError::Incomplete.logout_reason(), None);
}

#[test]
fn invalid_fields_name_the_offset_and_request() {
    let good = enc_client(&ClientMessage::NewOrder(golden_new_order()));
    for (offset, bad) in [(52usize, 3u8), (53, 0), (54, 5), (55, 4)] {
        let mut b = good.clone();
        b[offset] = bad;
        let e = decode_client(&b).unwrap_err();
        assert_eq!(
            e,
            FrameError::InvalidField {
                template_id: template::NEW_ORDER,
                offset: offset as u16,
                frame_len: 56,
                request_id: 1,
            }
        );
        // A bad field in a request costs that request, not the session.
        assert_eq!(e.logout_reason(), None);
        assert!(e.to_string().contains("NewOrder"), "{e}");
    }
    // In a session message it ends the session.
    let mut login = enc_client(&ClientMessage::Login(golden_login()));
    login[84] |= 0x80;
    let e = decode_client(&login).unwrap_err();
    assert!(matches!(
        e,
        FrameError::InvalidField {
            offset: 84,
            request_id: 0,
            ..
        }
    ));
    assert_eq!(e.logout_reason(), Some(LogoutReason::InvalidField));

    // Canonical option encodings: a cleared fee tier carries no fees.
    let tier = ClientMessage::Admin(AdminRequest {
        request_id: 5,
        command: Command::SetFeeTier {
            account: 1,
            market: 1,
            fees: None,
        },
    });
    let mut b = enc_client(&tier);
    b[24] = 1;
    assert!(matches!(
        decode_client(&b),
        Err(FrameError::InvalidField { offset: 24, .. })
    ));
    // And an absent order ref in a reject carries no value.
    let mut b = enc_server(&ServerMessage::OrderRejected(OrderRejected {
        seq: 1,
        request_id: 1,
        request_template: template::BALANCE_QUERY,
        order: None,
        market: 0,
        reason: RejectReason::RateLimited,
    }));
    b[24] = 1;
    assert!(matches!(
        decode_server(&b),
        Err(FrameError::InvalidField { offset: 24, .. })
    ));
    // Cancel needs a reference: tag 0 is invalid there.
    let mut b = enc_client(&client_samples()[4]);
    b[28] = 0;
    assert!(matches!(
        decode_client(&b),
        Err(FrameError::InvalidField { offset: 28, .. })
    ));
}

// ---------------------------------------------------------------- the document

/// One message section of docs/protocol.md: `### Name (template T, block B, frame F)`
/// followed by a table of `| offset | size | type | field |` rows.
struct DocMessage {
    name: String,
    template_id: u16,
    block_len: usize,
    frame_len: usize,
    rows: Vec<(usize, usize, String, String)>,
}

fn doc_messages() -> Vec<DocMessage> {
    let mut out: Vec<DocMessage> = Vec::new();
    // Rows belong to the last message heading until any other heading.
    let mut in_message = false;
    for line in DOC.lines() {
        if line.starts_with('#') {
            in_message = false;
            let Some(rest) = line.strip_prefix("### ") else {
                continue;
            };
            let Some((name, spec)) = rest.split_once(" (template ") else {
                continue;
            };
            let nums: Vec<usize> = spec
                .trim_end_matches(')')
                .split(", ")
                .map(|p| p.rsplit(' ').next().unwrap().parse().unwrap())
                .collect();
            out.push(DocMessage {
                name: name.to_string(),
                template_id: nums[0] as u16,
                block_len: nums[1],
                frame_len: nums[2],
                rows: Vec::new(),
            });
            in_message = true;
        } else if in_message && line.starts_with("| ") {
            let m = out.last_mut().unwrap();
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() == 4 {
                if let (Ok(offset), Ok(size)) = (cells[0].parse(), cells[1].parse()) {
                    m.rows
                        .push((offset, size, cells[2].to_string(), cells[3].to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn doc_tables_match_the_codec() {
    let doc = doc_messages();
    let mut seen: Vec<u16> = doc.iter().map(|m| m.template_id).collect();
    seen.sort_unstable();
    let mut all: Vec<u16> = template::CLIENT_ALL
        .into_iter()
        .chain(template::SERVER_ALL)
        .collect();
    all.sort_unstable();
    assert_eq!(seen, all, "every template documented exactly once");

    for m in &doc {
        let block = client_block_len(m.template_id)
            .or_else(|| server_block_len(m.template_id))
            .unwrap();
        assert_eq!(m.block_len, block, "{}", m.name);
        assert_eq!(m.frame_len, HEADER_SIZE + block, "{}", m.name);
        let name = template::name(m.template_id);
        assert!(name.starts_with(m.name.as_str()), "{} vs {}", m.name, name);
        // Rows tile the body from offset 8, each naturally aligned.
        let mut at = HEADER_SIZE;
        for (offset, size, ty, field) in &m.rows {
            assert_eq!(*offset, at, "{}: {field}", m.name);
            let align = match ty.as_str() {
                "u16" => 2,
                "u32" => 4,
                "u64" | "i64" => 8,
                _ => 1,
            };
            assert_eq!(offset % align, 0, "{}: {field} misaligned", m.name);
            at += size;
        }
        assert_eq!(at, HEADER_SIZE + block, "{}: rows cover the body", m.name);
    }
}

/// Every byte the document calls reserved is rejected when non-zero, at that offset; no
/// other byte is rejected as reserved. Ties the tables to the decoders.
#[test]
fn doc_reserved_bytes_are_checked_by_the_decoders() {
    let doc = doc_messages();
    let client = client_samples()
        .into_iter()
        .map(|m| (m.template_id(), enc_client(&m)));
    let server = server_samples()
        .into_iter()
        .map(|m| (m.template_id(), enc_server(&m)));
    for (id, frame) in client.chain(server) {
        let m = doc.iter().find(|m| m.template_id == id).unwrap();
        let decode = |b: &[u8]| {
            if client_block_len(id).is_some() {
                decode_client(b).map(|_| ())
            } else {
                decode_server(b).map(|_| ())
            }
        };
        for (offset, size, _, field) in &m.rows {
            if field != "reserved" {
                continue;
            }
            for at in *offset..offset + size {
                let mut b = frame.clone();
                b[at] = 0x5A;
                match decode(&b) {
                    Err(FrameError::InvalidField { offset, .. }) => {
                        assert_eq!(offset as usize, at, "{}", m.name)
                    }
                    other => panic!("{}: reserved byte {at} not checked: {other:?}", m.name),
                }
            }
        }
    }
}

// ---------------------------------------------------------------- golden bytes

/// The key and secret of the worked example in docs/protocol.md: the demo config's key 1.
const GOLDEN_KEY: u64 = 1;
const GOLDEN_SECRET: &str = "demo-secret-1001";
/// The default config `ringex start` embeds.
const DEFAULT_CONFIG: &str = include_str!("../../../config/single.toml");

fn golden_login() -> Login {
    let mut login = Login {
        api_key_id: GOLDEN_KEY,
        timestamp_ns: 1_767_225_600_000_000_000, // 2026-01-01T00:00:00Z
        nonce: 1,
        signature: [0; 32],
        resume_session: 0,
        resume_from_seq: 0,
        heartbeat_ms: 1000,
        flags: login_flags::CANCEL_ON_DISCONNECT,
    };
    login.sign(&secret_hash(GOLDEN_SECRET.as_bytes()));
    login
}

fn golden_new_order() -> NewOrder {
    NewOrder {
        request_id: 1,
        market: 1,
        client_order_id: 42,
        side: Side::Buy,
        kind: OrderKind::Limit,
        tif: TimeInForce::Gtc,
        stp: StpMode::CancelNewest,
        price: 6_500_000,
        qty: 25,
        quote_budget: 0,
    }
}

/// The bytes of the hex dump that follows `<!-- golden:NAME -->` in the document:
/// lines `OFFSET  XX XX ...` inside the next code block.
fn doc_hex(name: &str) -> Vec<u8> {
    let marker = format!("<!-- golden:{name} -->");
    let at = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} missing"));
    let mut lines = DOC[at..].lines().skip(1);
    assert!(lines.next().unwrap().starts_with("```"));
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with("```") {
            break;
        }
        let (offset, hex) = line.split_once("  ").unwrap();
        assert_eq!(
            usize::from_str_radix(offset, 16).unwrap(),
            out.len(),
            "{line}"
        );
        for h in hex.split_whitespace() {
            out.push(u8::from_str_radix(h, 16).unwrap());
        }
    }
    out
}

/// The document's dump format, for regenerating it.
fn hex_dump(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        s.push_str(&format!("{:04x} ", i * 16));
        for (j, b) in chunk.iter().enumerate() {
            if j == 8 {
                s.push(' ');
            }
            s.push_str(&format!(" {b:02x}"));
        }
        s.push('\n');
    }
    s
}

#[test]
fn golden_login_bytes() {
    let bytes = enc_client(&ClientMessage::Login(golden_login()));
    assert_eq!(bytes, doc_hex("login"), "\n{}", hex_dump(&bytes));
    // The signed bytes are frame bytes 8..32.
    let signed = &bytes[8..8 + LOGIN_SIGNED_SIZE];
    assert_eq!(signed[..8], GOLDEN_KEY.to_le_bytes());
    // Independent of our HMAC code: the value Python's hmac module computes for
    // hmac.new(sha256(b"demo-secret-1001").digest(), signed, sha256).
    let python = "c71f7d535c4513969d4ffc4403236dae3432df05d701b280245e5d943ac2b6c8";
    let hex: String = bytes[32..64].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, python);
    assert!(golden_login().verify(&secret_hash(GOLDEN_SECRET.as_bytes())));
}

/// The worked example logs in with a key the default config really has, so a reader can
/// replay it against `ringex start`.
#[test]
fn golden_login_key_is_the_default_configs_demo_key() {
    let entry = format!("key_id = {GOLDEN_KEY}, secret = \"{GOLDEN_SECRET}\"");
    assert!(
        DEFAULT_CONFIG.lines().any(|l| l.contains(&entry)),
        "config/single.toml has no key {entry}"
    );
}

#[test]
fn golden_new_order_bytes() {
    let bytes = enc_client(&ClientMessage::NewOrder(golden_new_order()));
    assert_eq!(bytes, doc_hex("new_order"), "\n{}", hex_dump(&bytes));
}

// ---------------------------------------------------------------- signatures

#[test]
fn sign_and_verify() {
    let key = secret_hash(b"s3cret");
    let sig = sign_login(&key, 7, 1_000, 99);
    assert!(verify_login(&key, 7, 1_000, 99, &sig));
    // Wrong secret.
    assert!(!verify_login(&secret_hash(b"s3creT"), 7, 1_000, 99, &sig));
    // Each signed field tampered.
    assert!(!verify_login(&key, 8, 1_000, 99, &sig));
    assert!(!verify_login(&key, 7, 1_001, 99, &sig));
    assert!(!verify_login(&key, 7, 1_000, 98, &sig));
    // Any bit of the signature flipped.
    for i in 0..32 * 8 {
        let mut bad = sig;
        bad[i / 8] ^= 1 << (i % 8);
        assert!(!verify_login(&key, 7, 1_000, 99, &bad));
    }
    // Deterministic, and keyed by the hash (not the secret).
    assert_eq!(sig, sign_login(&key, 7, 1_000, 99));
    assert_ne!(sig, sign_login(&[0; 32], 7, 1_000, 99));
}

#[test]
fn login_sign_and_verify_through_the_frame() {
    let key = secret_hash(GOLDEN_SECRET.as_bytes());
    let bytes = enc_client(&ClientMessage::Login(golden_login()));
    let Ok((ClientMessage::Login(login), _)) = decode_client(&bytes) else {
        panic!()
    };
    assert!(login.verify(&key));
    // Unsigned fields may change (resume, heartbeat, flags); signed ones may not.
    for offset in [8usize, 16, 24, 32] {
        let mut b = bytes.clone();
        b[offset] ^= 1;
        let Ok((ClientMessage::Login(login), _)) = decode_client(&b) else {
            panic!()
        };
        assert!(!login.verify(&key), "offset {offset}");
    }
}

#[test]
fn to_command_uses_the_session_account() {
    let m = ClientMessage::NewOrder(golden_new_order());
    let Some(Command::Place(p)) = m.to_command(7) else {
        panic!()
    };
    assert_eq!(
        (p.account, p.market, p.client_order_id, p.price, p.qty),
        (7, 1, 42, 6_500_000, 25)
    );
    assert_eq!(
        ClientMessage::MassCancel(MassCancel {
            request_id: 1,
            market: 0
        })
        .to_command(7),
        Some(Command::CancelAll {
            account: 7,
            market: None
        })
    );
    assert_eq!(
        ClientMessage::MassCancel(MassCancel {
            request_id: 1,
            market: 3
        })
        .to_command(7),
        Some(Command::CancelAll {
            account: 7,
            market: Some(3)
        })
    );
    for m in client_samples() {
        let c = m.to_command(7);
        match m {
            ClientMessage::Admin(a) => {
                assert_eq!(c, Some(a.command));
                assert_eq!(
                    c.unwrap().kind() as u16 + template::ADMIN_OFFSET,
                    m.template_id()
                );
            }
            ClientMessage::Login(_)
            | ClientMessage::Logout
            | ClientMessage::Heartbeat
            | ClientMessage::BalanceQuery(_)
            | ClientMessage::OpenOrdersQuery(_)
            | ClientMessage::Promote { .. } => assert_eq!(c, None),
            _ => assert!(!c.unwrap().kind().is_admin()),
        }
        assert_eq!(
            m.request_id().is_some(),
            template::is_request(m.template_id())
        );
    }
}

#[test]
fn server_seq_accessors() {
    for mut m in server_samples() {
        let session = m.template_id() < template::ORDER_ACCEPTED;
        assert_eq!(m.is_sequenced(), !session);
        if !session {
            m.set_seq(77);
            assert_eq!(m.seq(), Some(77));
            let b = enc_server(&m);
            assert_eq!(b[8..16], 77u64.to_le_bytes());
            assert_eq!(b[16..24], m.request_id().unwrap().to_le_bytes());
        }
    }
}

#[test]
fn reason_codes_round_trip() {
    for (i, r) in LoginRejectReason::ALL.iter().enumerate() {
        assert_eq!(*r as u16, i as u16 + 1);
        assert_eq!(LoginRejectReason::from_u16(*r as u16), Some(*r));
    }
    for (i, r) in LogoutReason::ALL.iter().enumerate() {
        assert_eq!(*r as u16, i as u16 + 1);
        assert_eq!(LogoutReason::from_u16(*r as u16), Some(*r));
    }
    assert_eq!(LoginRejectReason::from_u16(0), None);
    assert_eq!(LogoutReason::from_u16(0), None);
}

/// Prints the document's dumps: `cargo test -p ringex-gateway print_golden -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn print_golden() {
    println!(
        "login:\n{}",
        hex_dump(&enc_client(&ClientMessage::Login(golden_login())))
    );
    println!(
        "new_order:\n{}",
        hex_dump(&enc_client(&ClientMessage::NewOrder(golden_new_order())))
    );
}

/// Writes one seed frame per template for the fuzzer (`gateway/fuzz/seeds/`):
/// `cargo test -p ringex-gateway write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/frame_decoder");
    std::fs::create_dir_all(dir).unwrap();
    let client = client_samples()
        .into_iter()
        .map(|m| (m.template_id(), enc_client(&m)));
    let server = server_samples()
        .into_iter()
        .map(|m| (m.template_id(), enc_server(&m)));
    for (id, bytes) in client.chain(server) {
        let name = format!(
            "{dir}/seed-{id:03}-{}",
            template::name(id).replace(['(', ')'], "_")
        );
        std::fs::write(name, bytes).unwrap();
    }
}
