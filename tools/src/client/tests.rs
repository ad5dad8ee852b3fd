//! The client against a scripted fake server on loopback: login, completion rules,
//! pipelining, sequencing errors, resume. (Tests against the real gateway are in
//! `tools/tests/client.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use ringex_engine::{CancelReason, OrderRef, Side, TimeInForce};
use ringex_gateway::protocol::{
    decode_client, encode_server, login_flags, secret_hash, Cancelled, ClientMessage, FrameError,
    Liquidity, LoginAccepted, OrderAccepted, RequestDone, ServerMessage, FRAME_SIZE_MAX,
};

use super::*;

const SECRET: &str = "fake-secret";

/// One accepted connection of the fake server.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// The next client frame (5 s timeout: a test that hangs fails instead).
    fn recv(&mut self) -> ClientMessage {
        loop {
            match decode_client(&self.buf) {
                Ok((m, n)) => {
                    self.buf.drain(..n);
                    return m;
                }
                Err(FrameError::Incomplete) => {}
                Err(e) => panic!("client sent garbage: {e}"),
            }
            let mut tmp = [0u8; 4096];
            let n = self.stream.read(&mut tmp).expect("read within 5 s");
            assert!(n > 0, "client closed");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads until the client goes away.
    fn wait_close(&mut self) {
        let mut tmp = [0u8; 4096];
        while matches!(self.stream.read(&mut tmp), Ok(n) if n > 0) {}
    }

    /// The next client frame that is not a heartbeat.
    fn recv_request(&mut self) -> ClientMessage {
        loop {
            match self.recv() {
                ClientMessage::Heartbeat => {}
                m => return m,
            }
        }
    }

    /// Writes all messages in one write (as the gateway coalesces them).
    fn send(&mut self, msgs: &[ServerMessage]) {
        let mut out = Vec::new();
        for m in msgs {
            let mut buf = [0u8; FRAME_SIZE_MAX];
            let n = encode_server(m, &mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        self.stream.write_all(&out).unwrap();
    }

    /// Checks the Login and answers LoginAccepted; returns the Login.
    fn accept_login(&mut self, session_id: u64, last_request_id: u64) -> Login {
        self.accept_login_with(|a| {
            a.session_id = session_id;
            a.last_request_id = last_request_id;
        })
    }

    /// Like `accept_login`, with the LoginAccepted changed by `adjust`.
    fn accept_login_with(&mut self, adjust: impl FnOnce(&mut LoginAccepted)) -> Login {
        let ClientMessage::Login(login) = self.recv() else {
            panic!("expected Login")
        };
        assert!(login.verify(&secret_hash(SECRET.as_bytes())), "signature");
        let resumed = login.resume_session != 0;
        let mut accepted = LoginAccepted {
            session_id: 1,
            next_seq: if resumed { login.resume_from_seq } else { 1 },
            last_request_id: 0,
            account: 7,
            heartbeat_ms: if login.heartbeat_ms == 0 {
                1000
            } else {
                login.heartbeat_ms
            },
            flags: (login.flags & login_flags::CANCEL_ON_DISCONNECT)
                | if resumed { login_flags::RESUMED } else { 0 },
        };
        adjust(&mut accepted);
        self.send(&[ServerMessage::LoginAccepted(accepted)]);
        login
    }
}

/// A fake server that runs `script` on each accepted connection, in order.
type Script = Box<dyn FnOnce(&mut Conn) + Send>;

fn fake(scripts: Vec<Script>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for script in scripts {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut conn = Conn {
                stream,
                buf: Vec::new(),
            };
            script(&mut conn);
        }
    });
    (addr, handle)
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

/// For tests that wait out a blocking call's timeout.
fn options_timeout_300ms() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_millis(300),
        ..options()
    }
}

fn accepted(seq: u64, request_id: u64, order_id: u64) -> ServerMessage {
    ServerMessage::OrderAccepted(OrderAccepted {
        seq,
        request_id,
        order_id,
        client_order_id: 0,
        market: 1,
        side: Side::Buy,
        price: 100,
        qty: 10,
    })
}

fn filled(seq: u64, request_id: u64, order_id: u64, remaining_qty: u64) -> ServerMessage {
    ServerMessage::Filled(ringex_gateway::protocol::Filled {
        seq,
        request_id,
        order_id,
        client_order_id: 0,
        match_id: seq,
        market: 1,
        side: Side::Buy,
        liquidity: Liquidity::Taker,
        price: 100,
        qty: 1,
        remaining_qty,
        fee: 0,
    })
}

fn done(seq: u64, request_id: u64, count: u32) -> ServerMessage {
    ServerMessage::RequestDone(RequestDone {
        seq,
        request_id,
        count,
    })
}

fn cancelled(seq: u64, request_id: u64, order_id: u64) -> ServerMessage {
    ServerMessage::Cancelled(Cancelled {
        seq,
        request_id,
        order_id,
        client_order_id: 0,
        market: 1,
        remaining_qty: 5,
        reason: CancelReason::ImmediateOrCancel,
    })
}

#[test]
fn blocking_orders_collect_their_messages() {
    let (addr, server) = fake(vec![Box::new(|c: &mut Conn| {
        c.accept_login(1, 0);
        // A GTC order that partly fills and rests.
        let ClientMessage::NewOrder(o) = c.recv_request() else {
            panic!()
        };
        assert_eq!(o.request_id, 1);
        c.send(&[accepted(1, 1, 50), filled(2, 1, 50, 9), done(3, 1, 2)]);
        // An IOC order whose answer comes in two writes, with an unsolicited maker fill
        // of order 50 in between: the client waits for RequestDone and keeps the fill.
        let ClientMessage::NewOrder(o) = c.recv_request() else {
            panic!()
        };
        assert_eq!(o.request_id, 2);
        c.send(&[accepted(4, 2, 51), filled(5, 2, 51, 5)]);
        std::thread::sleep(Duration::from_millis(30));
        c.send(&[filled(6, 0, 50, 8), cancelled(7, 2, 51), done(8, 2, 3)]);
        // A RequestDone whose count disagrees is a protocol error.
        let m = c.recv_request();
        c.send(&[accepted(9, m.request_id().unwrap(), 52), done(10, 3, 2)]);
        c.wait_close();
    })]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    assert_eq!(client.account(), 7);
    let r = client
        .new_order(&OrderParams::limit(1, Side::Buy, 100, 10))
        .unwrap();
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.order_id(), Some(50));
    assert_eq!(r.filled_qty(), 1);
    let r = client
        .new_order(&OrderParams::limit(1, Side::Buy, 100, 10).tif(TimeInForce::Ioc))
        .unwrap();
    assert_eq!(r.messages.len(), 3, "{r:?}");
    assert_eq!(r.cancelled().count(), 1);
    // The maker fill is kept for poll.
    let m = client.poll(Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!(m.request_id(), Some(0));
    assert_eq!(client.last_seq(), 8);
    assert_eq!(client.in_flight(), 0);
    assert!(matches!(
        client.new_order(&OrderParams::limit(1, Side::Buy, 100, 10)),
        Err(ClientError::Protocol(_))
    ));
    drop(client);
    server.join().unwrap();
}

#[test]
fn pipelined_requests_and_ids() {
    let (addr, server) = fake(vec![Box::new(|c: &mut Conn| {
        c.accept_login(1, 0);
        let ids: Vec<u64> = (0..3)
            .map(|_| c.recv_request().request_id().unwrap())
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
        // Answers split across writes, one frame cut in the middle.
        let mut bytes = Vec::new();
        for m in [accepted(1, 1, 10), accepted(2, 2, 11), accepted(3, 3, 12)] {
            let mut buf = [0u8; FRAME_SIZE_MAX];
            let n = encode_server(&m, &mut buf);
            bytes.extend_from_slice(&buf[..n]);
        }
        c.stream.write_all(&bytes[..100]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        c.stream.write_all(&bytes[100..]).unwrap();
        c.wait_close();
    })]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    for i in 0..3 {
        let id = client
            .send(&Request::NewOrder(OrderParams::limit(
                1,
                Side::Buy,
                100 + i,
                1,
            )))
            .unwrap();
        assert_eq!(id, i as u64 + 1);
    }
    assert_eq!(client.in_flight(), 3);
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Some(m) = client.poll(Duration::from_millis(500)).unwrap() {
            got.push(m.request_id().unwrap());
        }
    }
    assert_eq!(got, vec![1, 2, 3]);
    assert_eq!(client.in_flight(), 0);
    assert_eq!(client.poll(Duration::ZERO).unwrap(), None);
    drop(client);
    server.join().unwrap();
}

#[test]
fn sequence_gap_is_an_error_and_resume_replays() {
    let (addr, server) = fake(vec![
        Box::new(|c: &mut Conn| {
            c.accept_login(42, 0);
            for _ in 0..3 {
                c.recv_request();
            }
            // Seq 2 is lost.
            c.send(&[accepted(1, 1, 10), accepted(3, 3, 12)]);
            c.wait_close();
        }),
        Box::new(|c: &mut Conn| {
            let login = c.accept_login(42, 3);
            assert_eq!(login.resume_session, 42);
            assert_eq!(login.resume_from_seq, 2);
            c.send(&[accepted(2, 2, 11), accepted(3, 3, 12)]);
            // Request 4 was sent before the gap was noticed; it was never processed, so
            // the client resends it with its id.
            let m = c.recv_request();
            assert_eq!(m.request_id(), Some(4));
            c.send(&[accepted(4, 4, 13)]);
            c.wait_close();
        }),
    ]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    for _ in 0..4 {
        client.send(&Request::BalanceQuery).unwrap();
    }
    assert!(client.poll(Duration::from_secs(1)).unwrap().is_some());
    match client.poll(Duration::from_secs(1)) {
        Err(ClientError::SeqGap {
            expected: 2,
            got: 3,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(client.is_broken());
    assert!(matches!(
        client.send(&Request::BalanceQuery),
        Err(ClientError::Disconnected)
    ));
    let la = client.reconnect().unwrap();
    assert_eq!(la.flags & login_flags::RESUMED, login_flags::RESUMED);
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        if let Some(m) = client.poll(Duration::from_millis(500)).unwrap() {
            seqs.push(m.seq().unwrap());
        }
    }
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(client.next_request_id(), 5);
    drop(client);
    server.join().unwrap();
}

#[test]
fn bad_server_input_is_an_error_not_a_panic() {
    let (addr, server) = fake(vec![
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 0);
            c.stream.write_all(&[0xff; 16]).unwrap();
            c.wait_close();
        }),
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 0);
            // An answer to a request the client never sent.
            c.send(&[accepted(1, 99, 1)]);
            c.wait_close();
        }),
        Box::new(|c: &mut Conn| {
            let _ = c.recv();
            c.send(&[ServerMessage::LoginRejected {
                reason: LoginRejectReason::BadSignature,
            }]);
        }),
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 0);
            c.send(&[ServerMessage::Logout {
                reason: LogoutReason::SlowConsumer,
            }]);
        }),
    ]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    assert!(matches!(
        client.poll(Duration::from_secs(1)),
        Err(ClientError::Frame(FrameError::BadLength { .. }))
    ));
    drop(client);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    assert!(matches!(
        client.poll(Duration::from_secs(1)),
        Err(ClientError::Protocol(_))
    ));
    drop(client);
    let r = Client::connect(addr, 9, SECRET, options());
    assert!(
        matches!(
            r,
            Err(ClientError::LoginRejected(LoginRejectReason::BadSignature))
        ),
        "{r:?}"
    );
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    assert!(matches!(
        client.poll(Duration::from_secs(1)),
        Err(ClientError::LoggedOut(LogoutReason::SlowConsumer))
    ));
    server.join().unwrap();
}

#[test]
fn heartbeats_when_idle_and_cancel_by_client_id() {
    let (heartbeat_seen, heartbeat_came) = std::sync::mpsc::channel::<()>();
    let (addr, server) = fake(vec![Box::new(move |c: &mut Conn| {
        let login = c.accept_login(1, 0);
        assert_eq!(login.heartbeat_ms, 100);
        assert_eq!(login.flags, login_flags::CANCEL_ON_DISCONNECT);
        // The idle client heartbeats by itself.
        assert_eq!(c.recv(), ClientMessage::Heartbeat);
        heartbeat_seen.send(()).unwrap();
        let ClientMessage::Cancel(cancel) = c.recv_request() else {
            panic!()
        };
        assert_eq!(cancel.order, OrderRef::Client(77));
        c.send(&[
            cancelled(1, cancel.request_id, 5),
            done(2, cancel.request_id, 1),
        ]);
        c.wait_close();
    })]);
    let opts = ClientOptions {
        heartbeat_ms: 100,
        cancel_on_disconnect: true,
        ..options()
    };
    let mut client = Client::connect(addr, 9, SECRET, opts).unwrap();
    assert_eq!(client.heartbeat_interval(), Duration::from_millis(100));
    // Idle (waiting in poll, where it keeps the session alive) until the server has had
    // a heartbeat; nothing else arrives meanwhile.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while heartbeat_came.try_recv().is_err() {
        assert!(std::time::Instant::now() < deadline, "no heartbeat");
        assert_eq!(client.poll(Duration::from_millis(50)).unwrap(), None);
    }
    let r = client.cancel(1, OrderRef::Client(77)).unwrap();
    assert_eq!(r.cancelled().count(), 1);
    drop(client);
    server.join().unwrap();
}

#[test]
fn invalid_admin_request_is_refused_locally() {
    let (addr, server) = fake(vec![Box::new(|c: &mut Conn| {
        c.accept_login(1, 0);
        c.wait_close();
    })]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    assert!(matches!(
        client.admin(ringex_engine::Command::CancelAll {
            account: 1,
            market: None
        }),
        Err(ClientError::InvalidRequest)
    ));
    assert_eq!(client.next_request_id(), 1);
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_blocking_call_that_fails_part_way_leaves_what_arrived_for_poll() {
    let (timed_out, after_timeout) = std::sync::mpsc::channel::<()>();
    let (addr, server) = fake(vec![Box::new(move |c: &mut Conn| {
        c.accept_login(1, 0);
        c.recv_request();
        c.send(&[accepted(1, 1, 500), filled(2, 1, 500, 7)]);
        // The RequestDone only once the call has given up.
        after_timeout
            .recv_timeout(Duration::from_secs(30))
            .expect("the call timed out");
        c.send(&[done(3, 1, 2)]);
        c.wait_close();
    })]);
    let mut client = Client::connect(addr, 9, SECRET, options_timeout_300ms()).unwrap();
    let r = client.new_order(&OrderParams::limit(1, Side::Buy, 100, 10));
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    timed_out.send(()).unwrap();
    // The accept and the fill were received (their seqs are counted, a resume would not
    // replay them): poll hands them over, then the late RequestDone.
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = client
            .poll(Duration::from_secs(2))
            .unwrap()
            .expect("a message");
        seqs.push(m.seq().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_blocking_call_returns_at_its_timeout_even_while_reports_stream_in() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streaming = std::sync::Arc::clone(&stop);
    let (addr, server) = fake(vec![Box::new(move |c: &mut Conn| {
        c.accept_login(1, 0);
        c.recv_request();
        // Unsolicited reports, never the answer, in batches of 4,096 frames (one frame's
        // bytes repeated, only the seq patched in) every 5 ms, so one arrives at least
        // every few milliseconds: only the call's own deadline can end it. The pace (at
        // most ~0.8 M/s) keeps the 300 ms call far below the client's bound of 2^20
        // messages held during one call, which a fast machine reading an unpaced stream
        // reaches first. Until the call has returned (or, for a call that never does,
        // well past the test's deadline).
        const MARK: u64 = 0x0807_0605_0403_0201;
        let ServerMessage::Filled(mut report) = filled(MARK, 0, 9, 1) else {
            unreachable!()
        };
        report.match_id = 1;
        let mut frame = [0u8; FRAME_SIZE_MAX];
        let n = encode_server(&ServerMessage::Filled(report), &mut frame);
        let at = frame[..n]
            .windows(8)
            .position(|w| w == MARK.to_le_bytes())
            .expect("the seq in the frame");
        const BATCH: usize = 4096;
        let mut out = frame[..n].repeat(BATCH);
        let mut seq = 1u64;
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while !streaming.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < until
        {
            for frame in out.chunks_exact_mut(n) {
                frame[at..at + 8].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
            }
            if c.stream.write_all(&out).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })]);
    let mut client = Client::connect(addr, 9, SECRET, options_timeout_300ms()).unwrap();
    let (returned, result) = std::sync::mpsc::channel();
    let call = std::thread::spawn(move || {
        let r = client.balances();
        let _ = returned.send(r.map(|_| ()));
        client
    });
    // The stream never ends while the call runs: returning at all is returning at the
    // timeout. The deadline only turns a call that never returns into a failure.
    let r = result
        .recv_timeout(Duration::from_secs(30))
        .expect("the call returns while reports still stream in");
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(call.join().unwrap());
    server.join().unwrap();
}

#[test]
fn a_login_accepted_with_values_the_protocol_never_grants_is_an_error() {
    let (addr, server) = fake(vec![
        // A new session that claims to have processed requests.
        Box::new(|c: &mut Conn| {
            c.accept_login_with(|a| a.last_request_id = u64::MAX);
            c.wait_close();
        }),
        // A heartbeat interval of 0 (granted: 100-1000 ms).
        Box::new(|c: &mut Conn| {
            c.accept_login_with(|a| a.heartbeat_ms = 0);
            c.wait_close();
        }),
    ]);
    for _ in 0..2 {
        let r = Client::connect(addr, 9, SECRET, options());
        assert!(matches!(r, Err(ClientError::Protocol(_))), "{r:?}");
    }
    server.join().unwrap();
}

#[test]
fn a_resume_claiming_requests_never_sent_is_an_error_not_a_silent_loss() {
    let (received, both_received) = std::sync::mpsc::channel::<()>();
    let (addr, server) = fake(vec![
        Box::new(move |c: &mut Conn| {
            c.accept_login(1, 0);
            c.recv_request();
            c.recv_request();
            received.send(()).unwrap();
        }),
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 1_000);
            c.wait_close();
        }),
    ]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    client.send(&Request::BalanceQuery).unwrap();
    client.send(&Request::BalanceQuery).unwrap();
    both_received
        .recv_timeout(Duration::from_secs(30))
        .expect("the server has both requests");
    let r = client.reconnect();
    assert!(matches!(r, Err(ClientError::Protocol(_))), "{r:?}");
    assert_eq!(client.in_flight(), 2, "nothing dropped from the outbox");
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_reconnect_whose_login_goes_unanswered_leaves_the_client_broken() {
    let (addr, server) = fake(vec![
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 0);
            c.wait_close();
        }),
        Box::new(|c: &mut Conn| {
            let _login = c.recv();
            c.wait_close();
        }),
    ]);
    let mut client = Client::connect(addr, 9, SECRET, options_timeout_300ms()).unwrap();
    client.disconnect();
    assert!(matches!(client.reconnect(), Err(ClientError::Timeout)));
    assert!(client.is_broken());
    assert!(matches!(
        client.send(&Request::BalanceQuery),
        Err(ClientError::Disconnected)
    ));
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_replay_that_starts_early_skips_what_was_already_received() {
    let (addr, server) = fake(vec![
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 0);
            c.recv_request();
            c.send(&[accepted(1, 1, 500), done(2, 1, 1)]);
            // Closed by the client's reconnect.
            c.wait_close();
        }),
        Box::new(|c: &mut Conn| {
            c.accept_login(1, 1);
            // Replays from seq 1 although the client asked for 3, then goes on.
            c.send(&[accepted(1, 1, 500), done(2, 1, 1), filled(3, 0, 500, 9)]);
            c.wait_close();
        }),
    ]);
    let mut client = Client::connect(addr, 9, SECRET, options()).unwrap();
    client
        .new_order(&OrderParams::limit(1, Side::Buy, 100, 10))
        .unwrap();
    client.reconnect().unwrap();
    let m = client
        .poll(Duration::from_secs(2))
        .unwrap()
        .expect("the new message");
    assert_eq!(m.seq(), Some(3));
    drop(client);
    server.join().unwrap();
}
