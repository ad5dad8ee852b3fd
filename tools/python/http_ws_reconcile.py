#!/usr/bin/env python3
"""Starts a book from ringex's REST depth snapshot and follows it with the WebSocket diff
stream (docs/http.md, "Depth snapshot, then the diff stream"), checking that they
reconcile exactly while orders flow.

The order a client follows: subscribe to `depth` over WebSocket first and buffer its
diffs (the WebSocket's own snapshot is not used), then GET /api/v1/depth, drop the
buffered diffs with `last` at or below the snapshot's `last`, and apply the rest: the
first applied must have `first` = snapshot `last` + 1, each next one `first` = previous
`last` + 1, and after each the local book's checksum must equal the diff's.

    python http_ws_reconcile.py --http 127.0.0.1:9102 --ws 127.0.0.1:9101 \\
        --market BTC-USDT --after 5

Prints `subscribed` once the subscription is acknowledged, takes the REST snapshot after
`--after` diffs arrived, then reads diffs until a line `done` comes on stdin. Then it
compares the book with a final REST snapshot once the diff stream reached that snapshot's
`last`, and prints one JSON line (diffs applied, dropped, levels). Exit status 0 when
every check passed; otherwise the first failure on stderr.
"""

import argparse
import asyncio
import json
import sys
import urllib.request
import zlib
from decimal import Decimal

from websockets.asyncio.client import connect

DEADLINE_S = 60.0  # a failure bound, never the thing measured


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def checksum_field(s):
    return s.replace(".", "").lstrip("0")


def rest_depth(http, market):
    url = f"http://{http}/api/v1/depth?market={market}&limit=5000"
    with urllib.request.urlopen(url, timeout=10) as r:
        check(r.status == 200, f"GET depth: {r.status}")
        return json.loads(r.read())


class Book:
    def __init__(self, snapshot):
        self.bids = {}
        self.asks = {}
        self.last = snapshot["last"]
        self.applied = 0
        self.dropped = 0
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
            self.dropped += 1
            return
        check(diff["first"] == self.last + 1,
              f"gap: first {diff['first']} after last {self.last}")
        self.apply_levels(diff)
        self.last = diff["last"]
        self.applied += 1
        self.verify(diff)

    def levels(self):
        bids = [list(self.bids[p]) for p in sorted(self.bids, reverse=True)]
        asks = [list(self.asks[p]) for p in sorted(self.asks)]
        return bids, asks

    def verify(self, msg):
        bids, asks = self.levels()
        text = "".join(checksum_field(p) + checksum_field(q) for p, q in asks[:10])
        text += "".join(checksum_field(p) + checksum_field(q) for p, q in bids[:10])
        mine = zlib.crc32(text.encode()) & 0xFFFFFFFF
        check(mine == msg["checksum"], f"checksum {msg['checksum']} != {mine} at {msg['last']}")


async def run(args):
    loop = asyncio.get_running_loop()
    async with connect(f"ws://{args.ws}/ws") as ws:
        await ws.send(json.dumps({"method": "subscribe", "id": 1,
                                  "params": {"channels": ["depth"], "markets": [args.market]}}))
        diffs = asyncio.Queue()
        acked = loop.create_future()

        async def reader():
            async for raw in ws:
                m = json.loads(raw)
                if m.get("id") == 1 and not acked.done():
                    acked.set_result(m)
                elif m.get("channel") == "depth" and m.get("type") == "update":
                    await diffs.put(m)

        task = asyncio.create_task(reader())
        reply = await asyncio.wait_for(acked, DEADLINE_S)
        check("result" in reply, f"subscribe refused: {reply}")
        print("subscribed", flush=True)
        done = loop.run_in_executor(None, sys.stdin.readline)
        buffered = []
        while len(buffered) < args.after and not done.done():
            try:
                buffered.append(await asyncio.wait_for(diffs.get(), 0.1))
            except asyncio.TimeoutError:
                pass
        book = Book(await loop.run_in_executor(None, rest_depth, args.http, args.market))
        for d in buffered:
            book.apply(d)
        while not done.done() or not diffs.empty():
            try:
                book.apply(await asyncio.wait_for(diffs.get(), 0.1))
            except asyncio.TimeoutError:
                pass
        check((await done).strip() == "done", "stdin ended without `done`")
        # The final snapshot may be ahead of the last diff read (or hold changes the next
        # diff brings): read diffs until the book reaches it, for a bounded time.
        final = None
        deadline = loop.time() + DEADLINE_S
        while loop.time() < deadline:
            final = await loop.run_in_executor(None, rest_depth, args.http, args.market)
            while book.last < final["last"]:
                book.apply(await asyncio.wait_for(diffs.get(), DEADLINE_S))
            bids, asks = book.levels()
            if book.last == final["last"] and bids == final["bids"] and asks == final["asks"]:
                break
            final = None
            try:
                book.apply(await asyncio.wait_for(diffs.get(), 0.2))
            except asyncio.TimeoutError:
                pass
        check(final is not None, f"the book never matched the REST snapshot: {book.levels()}")
        task.cancel()
        bids, asks = book.levels()
        print(json.dumps({"applied": book.applied, "dropped": book.dropped,
                          "last": book.last, "bids": len(bids), "asks": len(asks)}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--http", required=True)
    p.add_argument("--ws", required=True)
    p.add_argument("--market", default="BTC-USDT")
    p.add_argument("--after", type=int, default=5)
    args = p.parse_args()
    try:
        asyncio.run(asyncio.wait_for(run(args), 3 * DEADLINE_S))
    except Failed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
