//! The client library against the real gateway on loopback (engine inline behind it).

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringex_engine::{CancelReason, OrderRef, RejectReason, Side, TimeInForce};
use ringex_gateway::protocol::{
    login_flags, permission, Liquidity, LoginRejectReason, ServerMessage,
};
use ringex_tools::client::{Client, ClientError, ClientOptions, OrderParams, Request};

/// Polls until `pred` matches a message (others are collected too), or panics after 5 s.
fn wait_for(
    client: &mut Client,
    mut pred: impl FnMut(&ServerMessage) -> bool,
) -> Vec<ServerMessage> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(m) = client.poll(Duration::from_millis(100)).unwrap() {
            let hit = pred(&m);
            seen.push(m);
            if hit {
                return seen;
            }
        }
    }
    panic!("not seen; got {seen:?}");
}

#[test]
fn maker_quotes_taker_crosses_both_get_fills() {
    let server = serve();
    let mut maker = Client::connect(server.trading, KEY_1001, SECRET_1001, options()).unwrap();
    let mut taker = Client::connect(server.trading, KEY_1002, SECRET_1002, options()).unwrap();
    assert_eq!(maker.account(), 1001);
    assert_eq!(taker.account(), 1002);

    let bid = maker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 5_999_000, 5).client_order_id(1))
        .unwrap();
    let ask = maker
        .new_order(
            &OrderParams::limit(BTC_USDT, Side::Sell, 6_001_000, 5)
                .client_order_id(2)
                .tif(TimeInForce::PostOnly),
        )
        .unwrap();
    assert!(bid.rejected().is_none() && ask.rejected().is_none());
    assert_eq!(ask.messages.len(), 1, "a resting order: just the accept");
    assert_eq!(maker.open_orders(BTC_USDT).unwrap().len(), 2);

    // The taker lifts 3 of the 5 lots offered, IOC for 4: accept, fill, cancel of the rest.
    let r = taker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 6_001_000, 4).tif(TimeInForce::Ioc))
        .unwrap();
    let fills: Vec<_> = r.fills().copied().collect();
    assert_eq!(fills.len(), 1, "{r:?}");
    assert_eq!(fills[0].qty, 4);
    assert_eq!(fills[0].price, 6_001_000);
    assert_eq!(fills[0].liquidity, Liquidity::Taker);
    assert_eq!(
        r.cancelled().count(),
        0,
        "fully filled: nothing left to cancel"
    );

    let r = taker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 6_001_000, 4).tif(TimeInForce::Ioc))
        .unwrap();
    assert_eq!(r.filled_qty(), 1);
    let c: Vec<_> = r.cancelled().copied().collect();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].reason, CancelReason::ImmediateOrCancel);
    assert_eq!(c[0].remaining_qty, 3);

    // The maker hears about both trades, unsolicited (request id 0), with the same ids.
    let mut maker_fills = Vec::new();
    while maker_fills.len() < 2 {
        let m = maker.recv().unwrap();
        if let ServerMessage::Filled(f) = m {
            assert_eq!(f.request_id, 0);
            assert_eq!(f.client_order_id, 2);
            assert_eq!(f.liquidity, Liquidity::Maker);
            maker_fills.push(f);
        }
    }
    assert_eq!(maker_fills[0].match_id, fills[0].match_id);
    assert_eq!(maker_fills[1].remaining_qty, 0);

    // Cancel by client order id; a second cancel is an UnknownOrder reject.
    let r = maker.cancel(BTC_USDT, OrderRef::Client(1)).unwrap();
    assert_eq!(
        r.cancelled().next().unwrap().reason,
        CancelReason::Requested
    );
    let r = maker.cancel(BTC_USDT, OrderRef::Client(1)).unwrap();
    assert_eq!(r.rejected().unwrap().reason, RejectReason::UnknownOrder);
    assert!(maker.open_orders(0).unwrap().is_empty());

    let balances = taker.balances().unwrap();
    let btc = balances.iter().find(|b| b.asset == BTC).unwrap();
    assert_eq!(btc.available, 1_000_000_000 + 5 * 10_000);
    taker.logout().unwrap();
    maker.logout().unwrap();
}

#[test]
fn pipelined_requests_and_mass_cancel() {
    let server = serve();
    let mut c = Client::connect(server.trading, KEY_1001, SECRET_1001, options()).unwrap();
    let mut ids = Vec::new();
    for i in 0..50 {
        let req = Request::NewOrder(
            OrderParams::limit(ETH_USDT, Side::Buy, 290_000 + i, 1).client_order_id(100 + i as u64),
        );
        ids.push(c.queue_request(&req).unwrap());
    }
    // One write for all 50.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.flush().unwrap() {
        assert!(Instant::now() < deadline);
    }
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    let mut accepted = 0;
    let mut done = 0;
    while done < 50 {
        match c.recv().unwrap() {
            ServerMessage::OrderAccepted(a) => {
                assert_eq!(a.request_id, a.client_order_id - 99);
                accepted += 1;
            }
            ServerMessage::RequestDone(d) => {
                done += 1;
                assert_eq!(d.request_id, done);
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(accepted, 50);
    assert_eq!(c.in_flight(), 0);
    let r = c.mass_cancel(0).unwrap();
    assert_eq!(r.mass_cancel_done().unwrap().count, 50);
    assert_eq!(r.cancelled().count(), 50);
    assert_eq!(c.last_seq(), 50 * 2 + 52);
}

#[test]
fn read_ready_under_edge_triggered_readiness_misses_no_answer() {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};

    let server = serve();
    let mut c = Client::connect(server.trading, KEY_1001, SECRET_1001, options()).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut SourceFd(&c.raw_fd()), Token(0), Interest::READABLE)
        .unwrap();
    // Far more answers than one read takes: they arrive in pieces, some reads fill the
    // buffer, frames straddle reads.
    const REQUESTS: u64 = 20_000;
    for _ in 0..REQUESTS {
        c.queue_request(&Request::BalanceQuery).unwrap();
    }
    let mut events = Events::with_capacity(4);
    let mut done = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while done < REQUESTS && Instant::now() < deadline {
        c.flush().unwrap();
        poll.poll(&mut events, Some(Duration::from_millis(20)))
            .unwrap();
        if events.is_empty() {
            continue;
        }
        // Only on a readiness edge: whatever read_ready leaves unread would wait for
        // the next edge, which might never come.
        loop {
            let (_, more) = c
                .read_ready(false, &mut |m| {
                    if let ServerMessage::RequestDone(d) = m {
                        done += 1;
                        assert_eq!(d.request_id, done, "answers in request order");
                    }
                })
                .unwrap();
            if !more {
                break;
            }
        }
    }
    assert_eq!(done, REQUESTS, "every request answered");
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn read_ready_reads_an_end_of_stream_that_came_with_the_last_bytes() {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use ringex_gateway::protocol::{
        decode_client, encode_server, ClientMessage, LoginAccepted, RequestDone, FRAME_SIZE_MAX,
    };

    // A bare server: accepts the login, then answers request 1 and closes without a
    // Logout (a cut connection), so the answer and the end of stream arrive together.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (answer_now, answer_when) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 4096];
        let mut have = 0;
        while !matches!(
            decode_client(&buf[..have]),
            Ok((ClientMessage::Login(_), _))
        ) {
            have += s.read(&mut buf[have..]).unwrap();
        }
        let mut frame = [0u8; FRAME_SIZE_MAX];
        let accepted = ServerMessage::LoginAccepted(LoginAccepted {
            session_id: 1,
            next_seq: 1,
            last_request_id: 0,
            account: 1001,
            heartbeat_ms: 1000,
            flags: 0,
        });
        let n = encode_server(&accepted, &mut frame);
        s.write_all(&frame[..n]).unwrap();
        answer_when.recv().unwrap();
        // Take the request, so that closing sends an end of stream, not a reset.
        let _ = s.read(&mut buf).unwrap();
        let done = ServerMessage::RequestDone(RequestDone {
            seq: 1,
            request_id: 1,
            count: 0,
        });
        let n = encode_server(&done, &mut frame);
        s.write_all(&frame[..n]).unwrap();
    });
    let mut c = Client::connect(addr, KEY_1001, SECRET_1001, options()).unwrap();
    c.queue_request(&Request::BalanceQuery).unwrap();
    while !c.flush().unwrap() {}
    let mut poll = Poll::new().unwrap();
    poll.registry()
        .register(&mut SourceFd(&c.raw_fd()), Token(0), Interest::READABLE)
        .unwrap();
    answer_now.send(()).unwrap();
    server.join().unwrap();
    // Wait until the end of stream is in the socket behind the answer (the kernel says
    // so without reading anything).
    let mut pfd = libc::pollfd {
        fd: c.raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    assert_eq!(ready, 1, "the end of stream arrives");

    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::from_secs(5)))
        .unwrap();
    let ev = events.iter().next().expect("a readiness event");
    assert!(ev.is_read_closed(), "the answer and the close in one event");
    let mut answers = Vec::new();
    let read = c.read_ready(ev.is_read_closed() || ev.is_error(), &mut |m| {
        answers.push(m)
    });
    assert!(matches!(answers[..], [ServerMessage::RequestDone(d)] if d.request_id == 1));
    // No further edge will come: the close must be seen now.
    assert!(matches!(read, Err(ClientError::Closed)), "{read:?}");
}

#[test]
fn reconnect_resumes_and_resends() {
    let server = serve();
    let mut maker = Client::connect(server.trading, KEY_1001, SECRET_1001, options()).unwrap();
    let mut taker = Client::connect(server.trading, KEY_1002, SECRET_1002, options()).unwrap();
    let session = maker.session_id();
    let r = maker
        .new_order(&OrderParams::limit(BTC_USDT, Side::Sell, 6_000_000, 2).client_order_id(9))
        .unwrap();
    assert!(r.accepted().is_some());

    // The maker's connection drops with a request written nowhere yet.
    let pending = maker
        .queue_request(&Request::OpenOrdersQuery { market: BTC_USDT })
        .unwrap();
    maker.disconnect();
    assert!(matches!(
        maker.poll(Duration::ZERO),
        Err(ClientError::Disconnected)
    ));

    // Meanwhile its order trades.
    let r = taker
        .new_order(&OrderParams::market(BTC_USDT, Side::Buy, 2))
        .unwrap();
    assert_eq!(r.filled_qty(), 2);

    let la = maker.reconnect().unwrap();
    assert_eq!(la.session_id, session);
    assert_ne!(la.flags & login_flags::RESUMED, 0);
    assert_eq!(la.last_request_id, pending - 1);
    // Replayed: the fill that happened while away. Then the resent query's answer.
    let seen = wait_for(
        &mut maker,
        |m| matches!(m, ServerMessage::RequestDone(d) if d.request_id == pending),
    );
    assert!(matches!(seen[0], ServerMessage::Filled(f) if f.client_order_id == 9 && f.qty == 2));
    assert!(seen
        .iter()
        .any(|m| matches!(m, ServerMessage::OpenOrdersEnd(e) if e.count == 0)));
    // Requests go on with fresh ids in the same session.
    let r = maker.balances().unwrap();
    assert!(!r.is_empty());

    // A resume point too old or a foreign session is refused.
    let bad = ClientOptions {
        resume: Some(ringex_tools::client::Resume {
            session_id: session,
            from_seq: 1,
        }),
        ..options()
    };
    match Client::connect(server.trading, KEY_1002, SECRET_1002, bad) {
        Err(ClientError::LoginRejected(LoginRejectReason::ResumeImpossible)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_on_disconnect() {
    let server = serve();
    let opts = ClientOptions {
        cancel_on_disconnect: true,
        ..options()
    };
    let mut c = Client::connect(server.trading, KEY_1001, SECRET_1001, opts).unwrap();
    assert_ne!(
        c.login_accepted().flags & login_flags::CANCEL_ON_DISCONNECT,
        0
    );
    c.new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 5_990_000, 1))
        .unwrap();
    c.disconnect();
    let mut other = Client::connect(server.trading, KEY_1001, SECRET_1001, options()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !other.open_orders(BTC_USDT).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "orders not cancelled");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn admin_helpers_fund_a_new_trader() {
    let server = serve();
    let mut admin = Client::connect(server.admin, ADMIN_KEY, ADMIN_SECRET, options()).unwrap();
    admin.create_account(5000).unwrap();
    match admin.create_account(5000) {
        Err(ClientError::Rejected(r)) => assert_eq!(r.reason, RejectReason::AccountExists),
        other => panic!("{other:?}"),
    }
    let ack = admin.deposit(5000, USDT, 1_000_000_000, 77).unwrap();
    assert!(!ack.duplicate);
    assert!(
        admin
            .deposit(5000, USDT, 1_000_000_000, 77)
            .unwrap()
            .duplicate
    );
    admin
        .add_api_key(5000, 5001, "new-secret", permission::TRADE)
        .unwrap();

    // Trading keys cannot log in on the admin listener, nor admin keys on trading.
    assert!(matches!(
        Client::connect(server.trading, ADMIN_KEY, ADMIN_SECRET, options()),
        Err(ClientError::LoginRejected(LoginRejectReason::WrongListener))
    ));
    assert!(matches!(
        Client::connect(server.trading, 5001, "wrong", options()),
        Err(ClientError::LoginRejected(LoginRejectReason::BadSignature))
    ));
    let mut t = Client::connect(server.trading, 5001, "new-secret", options()).unwrap();
    assert_eq!(t.account(), 5000);
    let b = t.balances().unwrap();
    let usdt = b.iter().find(|b| b.asset == USDT).unwrap();
    assert_eq!(usdt.available, 1_000_000_000);
    assert!(b.iter().all(|b| b.asset == USDT || b.available == 0));
    let r = t
        .new_order(&OrderParams::limit(BTC_USDT, Side::Buy, 6_000_000, 1))
        .unwrap();
    assert!(r.accepted().is_some());
    t.logout().unwrap();
    assert!(matches!(
        t.send(&Request::BalanceQuery),
        Err(ClientError::Disconnected)
    ));
    admin.logout().unwrap();
}
