//! A real gateway on ephemeral loopback ports with an engine applied inline behind it,
//! set up like the embedded default config (config/single.toml): BTC, ETH, USDT;
//! markets 1 BTC-USDT and 2 ETH-USDT; operator account 1 with admin key 100; funded
//! traders 1001 (key 1) and 1002 (key 2).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringex_engine::{Command, Event, Exchange, MarketSpec, Symbol};
use ringex_gateway::backend::{Backend, InlineBackend};
use ringex_gateway::protocol::{permission, secret_hash};
use ringex_gateway::server::{Gateway, GatewayConfig};
use ringex_tools::client::ClientOptions;

pub const ADMIN_KEY: u64 = 100;
pub const ADMIN_SECRET: &str = "demo-admin-secret";
pub const KEY_1001: u64 = 1;
pub const SECRET_1001: &str = "demo-secret-1001";
pub const KEY_1002: u64 = 2;
pub const SECRET_1002: &str = "demo-secret-1002";
pub const BTC: u32 = 1;
pub const ETH: u32 = 2;
pub const USDT: u32 = 3;
pub const BTC_USDT: u32 = 1;
pub const ETH_USDT: u32 = 2;

fn market(market: u32, symbol: &str, base: u32, tick: i64, lot: i64, price: i64) -> Command {
    Command::CreateMarket(MarketSpec {
        market,
        symbol: Symbol::new(symbol).unwrap(),
        base,
        quote: USDT,
        tick_size: tick,
        lot_size: lot,
        qty_min: 1,
        qty_max: 1_000_000,
        band_ppm: 100_000,
        reference_price: price,
        maker_fee_ppm: 200,
        taker_fee_ppm: 500,
    })
}

pub fn exchange() -> Exchange {
    let mut ex = Exchange::new();
    let mut cmds = Vec::new();
    for (asset, symbol, decimals) in [(BTC, "BTC", 8), (ETH, "ETH", 8), (USDT, "USDT", 6)] {
        cmds.push(Command::CreateAsset {
            asset,
            symbol: Symbol::new(symbol).unwrap(),
            decimals,
        });
    }
    cmds.push(market(BTC_USDT, "BTC-USDT", BTC, 1, 10_000, 6_000_000));
    cmds.push(market(ETH_USDT, "ETH-USDT", ETH, 10, 100_000, 300_000));
    for (account, key, secret, perms) in [
        (1, ADMIN_KEY, ADMIN_SECRET, permission::ADMIN),
        (1001, KEY_1001, SECRET_1001, permission::TRADE),
        (1002, KEY_1002, SECRET_1002, permission::TRADE),
    ] {
        cmds.push(Command::CreateAccount { account });
        cmds.push(Command::AddApiKey {
            account,
            key_id: key,
            secret_hash: secret_hash(secret.as_bytes()),
            permissions: perms,
        });
        if account != 1 {
            for (asset, amount) in [
                (BTC, 1_000_000_000),
                (ETH, 10_000_000_000),
                (USDT, 1_000_000_000_000),
            ] {
                cmds.push(Command::Deposit {
                    account,
                    asset,
                    amount,
                    external_ref: u64::from(account) * 10 + u64::from(asset),
                });
            }
        }
    }
    let mut out = Vec::new();
    for c in &cmds {
        out.clear();
        ex.apply(c, &mut out);
        assert!(!matches!(out[0], Event::Rejected { .. }), "{c:?}: {out:?}");
    }
    ex
}

pub struct Server {
    pub trading: SocketAddr,
    pub admin: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn serve_with(config: GatewayConfig) -> Server {
    serve_backend(config, |inline| inline)
}

/// As [`serve_with`], behind the backend `make` builds (on the server's thread) around the
/// inline engine: a server that answers late or not at all, for instance.
pub fn serve_backend<B: Backend>(
    config: GatewayConfig,
    make: impl FnOnce(InlineBackend) -> B + Send + 'static,
) -> Server {
    let mut gateway = Gateway::bind(config).unwrap();
    let trading = gateway.trading_addr().unwrap();
    let admin = gateway.admin_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut backend = make(InlineBackend::new(exchange()));
        gateway.run(&mut backend, &flag).unwrap();
    });
    Server {
        trading,
        admin,
        stop,
        thread: Some(thread),
    }
}

pub fn serve() -> Server {
    serve_with(GatewayConfig::loopback())
}

/// Every socket wait in the tests is bounded by this.
pub fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}
