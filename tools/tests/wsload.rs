//! `ringex load --ws` against a WebSocket listener that refuses every upgrade (as the
//! edge does past `connections_per_ip`): the run reports them and does not wait for
//! subscriptions that cannot come.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::*;
use ringex_tools::load::LoadArgs;
use ringex_tools::wsload::{run, WsLoadArgs};

#[test]
fn connections_refused_at_the_upgrade_are_reported_and_not_waited_for() {
    let server = serve();
    let refuser = TcpListener::bind("127.0.0.1:0").unwrap();
    let ws_addr = refuser.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in refuser.incoming() {
            let Ok(mut s) = stream else { return };
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head);
            let _ = s.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let mut args = LoadArgs::new(server.trading, server.admin);
    args.rate = 1_000;
    args.duration = 0.5;
    args.users = 10;
    args.account_base = 810_000;
    args.key_base = 8_100_000;
    let ws = WsLoadArgs {
        ws_connections: 5,
        ws_addr: ws_addr.to_string(),
        ws_idle_s: 0.0,
        ws_no_baseline: true,
        ..WsLoadArgs::default()
    };
    // The subscribers' own deadline is 120 s: a run that waited for them would miss this.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(run(&args, &ws));
    });
    let (_, with_ws, report) = result
        .recv_timeout(Duration::from_secs(60))
        .expect("the run ends without waiting for refused connections")
        .unwrap();
    assert_eq!((report.refused, report.subscribed, report.held), (5, 0, 0));
    assert!(with_ws.answered > 0);
}
