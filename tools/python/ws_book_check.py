#!/usr/bin/env python3
"""A retail client of ringex's WebSocket API (docs/websocket.md) that checks it.

Written against the contract with the third-party `websockets` library, as a user would:
one connection watches a market (depth, trades, ticker, bbo) and rebuilds the book from
the snapshot and the diff stream, checking every update id (no gap: `first` is the
previous `last` + 1) and every checksum; two more authenticate as two accounts, place a
burst of crossing orders, and check that their private streams carry only their own
orders. At the end a marker order shows that every update before it arrived; the book,
the trade totals and the last ticker are printed as one JSON line for the caller to
compare with the engine's own.

When the edge falls behind the exchange (docs/websocket.md, "When the edge falls
behind"), a depth `snapshot` can arrive at any time: the book is replaced by it and the
diffs chain on from its `last`; a trades `gap` notice says trades up to its `seq` may be
missing, so the trade totals count from then on only (`gaps` in the output says how
many notices came; the totals are the engine's only when it is 0).

    python ws_book_check.py --url ws://127.0.0.1:9101/ws --compression on \\
        --maker 1:demo-secret-1001 --taker 2:demo-secret-1002 --orders 300

With `--watch-until PRICE` it only watches (no traders): it prints `{"subscribed": ...}`
once it holds the first snapshot, then, when a bid at PRICE is in its book, the same
JSON line as above, for a caller that drives the exchange itself.

Exit status 0 when every check passed; otherwise the first failure on stderr.
"""

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import struct
import sys
import time
import zlib
from decimal import Decimal

from websockets.asyncio.client import connect

DEADLINE_S = 60.0  # a failure bound, never the thing measured


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def signature(key, secret, ts, nonce):
    secret_hash = hashlib.sha256(secret.encode()).digest()
    signed = struct.pack("<QQQ", key, ts, nonce)
    return hmac.new(secret_hash, signed, hashlib.sha256).hexdigest()


def checksum_field(s):
    """A price or quantity as the checksum reads it: no point, no leading zeros."""
    return s.replace(".", "").lstrip("0")


class Book:
    """A local book from a depth snapshot and the diffs, keyed by exact decimals."""

    def __init__(self, snapshot):
        self.bids = {}
        self.asks = {}
        self.last = snapshot["last"]
        self.apply_levels(snapshot)
        self.verify(snapshot)

    def apply_levels(self, msg):
        for side, book in (("bids", self.bids), ("asks", self.asks)):
            for price, qty in msg[side]:
                if Decimal(qty) == 0:
                    book.pop(Decimal(price), None)
                else:
                    book[Decimal(price)] = (price, qty)

    def apply(self, diff):
        if diff["last"] <= self.last:
            return  # older than the snapshot
        check(diff["first"] == self.last + 1,
              f"gap: first {diff['first']} after last {self.last}")
        self.apply_levels(diff)
        self.last = diff["last"]
        self.verify(diff)

    def levels(self):
        bids = [self.bids[p] for p in sorted(self.bids, reverse=True)]
        asks = [self.asks[p] for p in sorted(self.asks)]
        return bids, asks

    def verify(self, msg):
        bids, asks = self.levels()
        text = "".join(checksum_field(p) + checksum_field(q) for p, q in asks[:10])
        text += "".join(checksum_field(p) + checksum_field(q) for p, q in bids[:10])
        mine = zlib.crc32(text.encode()) & 0xFFFFFFFF
        check(mine == msg["checksum"],
              f"checksum {msg['checksum']} != {mine} at {msg['last']}")
        if bids and asks:
            check(Decimal(bids[0][0]) < Decimal(asks[0][0]), "crossed book")


class Trader:
    """An authenticated connection that places orders and watches its own streams."""

    def __init__(self, ws, account):
        self.ws = ws
        self.account = account
        self.next_id = 1
        self.waiting = {}
        self.my_cids = set()
        self.private = 0
        self.reader = None

    async def request(self, method, params=None):
        rid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        await self.ws.send(json.dumps({"method": method, "params": params or {}, "id": rid}))
        return fut

    async def read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.waiting:
                self.waiting.pop(msg["id"]).set_result(msg)
                continue
            channel = msg.get("channel")
            if channel in ("orders", "fills"):
                self.private += 1
                # Each trader numbers its orders apart (clientOrderId), and names one
                # before it is sent: a message about any other is someone else's.
                check(msg["clientOrderId"] in self.my_cids,
                      f"account {self.account} saw order {msg} not its own")

    async def place(self, params):
        self.my_cids.add(params["clientOrderId"])
        return await self.request("order.place", params)


BACKGROUND = []  # the readers: a check that fails in one ends the run at once


async def wait(fut):
    """`fut`'s result; a failure in a reader is raised as soon as it happens."""
    fut = asyncio.ensure_future(fut)
    done, _ = await asyncio.wait([fut, *BACKGROUND], timeout=DEADLINE_S,
                                 return_when=asyncio.FIRST_COMPLETED)
    for task in BACKGROUND:
        if task in done and task.exception() is not None:
            raise task.exception()
    check(fut in done, f"nothing within {DEADLINE_S} s")
    return fut.result()


async def watch_only(args):
    compression = "deflate" if args.compression == "on" else None
    async with connect(args.url, compression=compression) as watch:
        negotiated = [str(e.name) for e in watch.protocol.extensions]
        await watch.send(json.dumps({"method": "subscribe", "id": 1, "params": {
            "channels": ["depth", "trades"], "markets": [args.market]}}))
        book = None
        snapshots = 0
        gaps = 0
        messages = 0
        target = Decimal(args.watch_until)
        deadline = time.monotonic() + DEADLINE_S
        while book is None or target not in book.bids:
            left = deadline - time.monotonic()
            check(left > 0, f"no bid at {args.watch_until} within {DEADLINE_S} s")
            msg = json.loads(await asyncio.wait_for(watch.recv(), left))
            messages += 1
            channel = msg.get("channel")
            if "id" in msg:
                check("result" in msg, f"subscribe refused: {msg}")
            elif channel == "depth" and msg["type"] == "snapshot":
                # The first one, or a fresh one after the edge fell behind: it
                # replaces the book.
                book = Book(msg)
                snapshots += 1
                if snapshots == 1:
                    print(json.dumps({"subscribed": book.last}), flush=True)
            elif channel == "depth":
                check(book is not None, "a diff before the snapshot")
                book.apply(msg)
            elif channel == "trades" and msg["type"] == "gap":
                check(msg["market"] == args.market, f"a gap of another market: {msg}")
                gaps += 1
        bids, asks = book.levels()
        print(json.dumps({
            "bids": [list(l) for l in bids],
            "asks": [list(l) for l in asks],
            "last": book.last,
            "snapshots": snapshots,
            "gaps": gaps,
            "messages": messages,
            "extensions": negotiated,
        }), flush=True)


async def run(args):
    compression = "deflate" if args.compression == "on" else None
    market = args.market
    async with connect(args.url, compression=compression) as watch, \
            connect(args.url, compression=compression) as maker_ws, \
            connect(args.url, compression=compression) as taker_ws:
        negotiated = [str(e.name) for e in watch.protocol.extensions]
        check(bool(negotiated) == (compression is not None),
              f"compression {args.compression} but extensions {negotiated}")

        await watch.send(json.dumps({"method": "subscribe", "id": 1, "params": {
            "channels": ["depth", "trades", "ticker", "bbo"], "markets": [market]}}))
        book = None
        trades = 0
        gaps = 0
        volume = Decimal(0)
        ticker = None
        messages = 0
        marker_price = None
        marker_seen = asyncio.get_running_loop().create_future()

        async def watch_loop():
            nonlocal book, trades, gaps, volume, ticker, messages
            async for raw in watch:
                msg = json.loads(raw)
                messages += 1
                channel = msg.get("channel")
                if "id" in msg:
                    check("result" in msg, f"subscribe refused: {msg}")
                elif channel == "depth" and msg["type"] == "snapshot":
                    # The first one, or a fresh one after the edge fell behind: it
                    # replaces the book.
                    book = Book(msg)
                elif channel == "depth":
                    check(book is not None, "a diff before the snapshot")
                    book.apply(msg)
                    if marker_price and Decimal(marker_price) in book.bids \
                            and not marker_seen.done():
                        marker_seen.set_result(True)
                elif channel == "trades" and msg["type"] == "gap":
                    gaps += 1
                elif channel == "trades" and msg["type"] == "update":
                    for t in msg["trades"]:
                        trades += 1
                        volume += Decimal(t["qty"])
                elif channel == "ticker":
                    ticker = msg

        watcher = asyncio.create_task(watch_loop())
        BACKGROUND.append(watcher)
        traders = []
        for ws, spec in ((maker_ws, args.maker), (taker_ws, args.taker)):
            key, secret = spec.split(":", 1)
            t = Trader(ws, None)
            t.reader = asyncio.create_task(t.read())
            BACKGROUND.append(t.reader)
            ts = time.time_ns()
            nonce = random.getrandbits(63)
            r = await wait(await t.request("auth", {
                "key": int(key), "timestamp": ts, "nonce": nonce,
                "signature": signature(int(key), secret, ts, nonce)}))
            check("result" in r, f"auth refused: {r}")
            t.account = r["result"]["account"]
            r = await wait(await t.request("subscribe", {"channels": ["orders", "fills"]}))
            check("result" in r, f"private subscribe refused: {r}")
            traders.append(t)

        rng = random.Random(args.seed)
        mid = Decimal(args.mid)
        pending = []
        for i in range(args.orders):
            t = traders[i % 2]
            side = rng.choice(("buy", "sell"))
            offset = Decimal(rng.randint(-20, 20)) / 100 * 10
            price = mid + offset
            qty = Decimal(rng.randint(1, 50)) / 10000
            pending.append(await t.place({
                "market": market, "side": side, "price": f"{price:.2f}",
                "qty": f"{qty:.4f}", "clientOrderId": i + 1}))
        for fut in pending:
            r = await wait(fut)
            check("result" in r or r["error"]["msg"] in ("insufficient_balance",),
                  f"order refused: {r}")
            if "result" in r:
                for f in r["result"]["fills"]:
                    check(f["liquidity"] == "taker", f"a reply's fill is the taker's: {f}")

        # Every update before the marker arrives before it (one ordered stream).
        marker_price = f"{mid - 1000:.2f}"
        r = await wait(await traders[0].place({
            "market": market, "side": "buy", "price": marker_price, "qty": "0.0001",
            "clientOrderId": args.orders + 1}))
        check("result" in r, f"marker refused: {r}")
        await wait(marker_seen)
        for t in traders:
            check(t.private > 0, f"account {t.account} saw no private messages")
        bids, asks = book.levels()
        print(json.dumps({
            "bids": [list(l) for l in bids],
            "asks": [list(l) for l in asks],
            "last": book.last,
            "trades": trades,
            "gaps": gaps,
            "volume": str(volume),
            "ticker": ticker,
            "messages": messages,
            "extensions": negotiated,
        }))
        watcher.cancel()
        for t in traders:
            t.reader.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--compression", choices=("on", "off"), default="on")
    p.add_argument("--market", default="BTC-USDT")
    p.add_argument("--mid", default="60000.00")
    p.add_argument("--maker", help="KEY:SECRET")
    p.add_argument("--taker", help="KEY:SECRET")
    p.add_argument("--watch-until", metavar="PRICE",
                   help="only watch, until a bid at PRICE is in the book")
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    if args.watch_until is None and (args.maker is None or args.taker is None):
        p.error("--maker and --taker are needed unless --watch-until is given")
    try:
        asyncio.run(watch_only(args) if args.watch_until else run(args))
    except Failed as e:
        print(f"ws_book_check: FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
