#!/usr/bin/env python3
"""Subscribers that misbehave in every way a fan-out meets, beside a few that read well.

While something else drives a busy market (`ringex load`), this opens `--never`
connections that subscribe to every public channel of every market and never read,
`--slow` that read a few KiB now and then, and `--reset` that read for a moment and then
reset their connection (SO_LINGER 0, close) and connect again, over and over; and
`--good` readers that read everything and check the stream: each depth update's `first`
is the previous message's `last` + 1 (or a snapshot replaces the book), `seq` never goes
back on trades, bbo and ticker, and every frame is well formed. At the end it reads a
sample of the never-readers' sockets and counts how each ended (`never` in the output):
a slow consumer that still reads nothing 2 s after it was cut off is dropped, so these
show `no close` (their stream ends without the close frame, possibly inside a message;
docs/websocket.md, section 7); the node's `ringex_ws_slow_consumers_total` counts them.
Then it opens a fresh subscriber to show the node still serves, and prints one JSON
line. Plain Python (sockets, selectors, zlib): no dependencies.

    ws_fanout_attack.py --addr 127.0.0.1:9101 --seconds 20 --never 1000 --slow 300 \\
        --reset 300 --good 8

Exit status 0 when every good reader kept its chain and the node served a new
subscriber afterwards; 1 otherwise (the reasons on stderr). Run it against a node of its
own: it is an attack.
"""
import argparse
import json
import multiprocessing
import os
import random
import selectors
import socket
import struct
import sys
import time
import zlib

DEADLINE_S = 30.0  # a failure bound for one handshake or one reply
MARKETS = ["BTC-USDT", "ETH-USDT"]
CHANNELS = ["depth", "trades", "bbo", "ticker"]


def frame(op, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | op, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | op, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | op, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(payload))


def subscribe_frame():
    req = {"method": "subscribe", "id": 1,
           "params": {"channels": CHANNELS, "markets": MARKETS}}
    return frame(0x1, json.dumps(req).encode())


def connect(addr, compress):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
    req = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    if compress:
        req += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        if not b:
            raise EOFError("closed during the upgrade")
        head += b
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status:
        raise EOFError(f"upgrade refused: {status!r}")
    rest = head.split(b"\r\n\r\n", 1)[1]
    return s, rest


class Frames:
    """Splits a byte stream into server frames (unmasked)."""

    def __init__(self, buf=b""):
        self.buf = bytearray(buf)
        self.fragments = None

    def feed(self, data):
        self.buf += data

    def next(self):
        b = self.buf
        if len(b) < 2:
            return None
        if b[1] & 0x80:
            raise ValueError("a server frame is masked")
        n = b[1] & 0x7F
        at = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack(">H", b[2:4])[0]
            at = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack(">Q", b[2:10])[0]
            at = 10
        if len(b) < at + n:
            return None
        fin, rsv1, op = b[0] & 0x80, b[0] & 0x40, b[0] & 0x0F
        payload = bytes(b[at:at + n])
        del b[:at + n]
        if not fin:
            raise ValueError("the server fragments messages")
        if rsv1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        return op, payload


def close_of(payload):
    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
    return code, payload[2:].decode(errors="replace")


class Checker:
    """One good reader's view of the streams."""

    def __init__(self):
        self.depth_last = {}
        self.seq = {}
        self.messages = 0
        self.errors = []
        self.snapshots = 0
        self.closed = None

    def message(self, text):
        self.messages += 1
        m = json.loads(text)
        ch, mk = m.get("channel"), m.get("market")
        if ch == "depth":
            if m["type"] == "snapshot":
                self.snapshots += 1
                self.depth_last[mk] = m["last"]
            elif m["type"] == "update":
                last = self.depth_last.get(mk)
                if last is None:
                    self.errors.append(f"depth update before a snapshot: {mk}")
                elif m["last"] <= last:
                    pass
                elif m["first"] != last + 1:
                    self.errors.append(f"depth {mk}: first {m['first']} after last {last}")
                self.depth_last[mk] = max(m["last"], last or 0)
        elif ch in ("trades", "bbo", "ticker") and "seq" in m:
            key = (ch, mk)
            prev = self.seq.get(key, 0)
            if m["seq"] < prev:
                self.errors.append(f"{ch} {mk}: seq {m['seq']} after {prev}")
            self.seq[key] = m["seq"]


def good_readers(addr, count, seconds, compress_every, out):
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(count):
        s, rest = connect(addr, compress=(compress_every and i % compress_every == 0))
        s.sendall(subscribe_frame())
        s.setblocking(False)
        c = {"s": s, "frames": Frames(rest), "check": Checker(), "open": True}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.2):
            c = key.data
            try:
                data = c["s"].recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError as e:
                c["check"].errors.append(f"read failed: {e}")
                sel.unregister(c["s"])
                c["open"] = False
                continue
            if not data:
                if c["check"].closed is None:
                    c["check"].errors.append("the server ended the connection without a close")
                sel.unregister(c["s"])
                c["open"] = False
                continue
            c["frames"].feed(data)
            while True:
                f = c["frames"].next()
                if f is None:
                    break
                op, payload = f
                if op == 0x1:
                    c["check"].message(payload)
                elif op == 0x9:
                    c["s"].setblocking(True)
                    c["s"].sendall(frame(0xA, payload))
                    c["s"].setblocking(False)
                elif op == 0x8:
                    c["check"].closed = close_of(payload)
                    c["check"].errors.append(f"closed by the server: {c['check'].closed}")
    result = []
    for c in conns:
        k = c["check"]
        result.append({"messages": k.messages, "errors": k.errors[:5],
                       "closed": k.closed, "depth_last": k.depth_last})
        c["s"].close()
    out.put(("good", result))


def never_readers(addr, count, compress, out):
    socks = []
    refused = 0
    for i in range(count):
        try:
            s, _ = connect(addr, compress=compress and i % 2 == 0)
        except (OSError, EOFError):
            refused += 1
            continue
        s.sendall(subscribe_frame())
        socks.append(s)
    out.put(("never-open", len(socks), refused))
    # Waits for the parent's word, then reads what each socket holds: the last frame
    # the server sent should be its close.
    return socks


def never_main(addr, count, compress, out, go):
    socks = never_readers(addr, count, compress, out)
    go.wait()
    sample = socks[: min(len(socks), 100)]
    codes = {}
    for s in sample:
        s.settimeout(5)
        frames = Frames()
        last = None
        try:
            # Bounded: the server's unsent bound plus the socket buffers.
            for _ in range(10_000):
                data = s.recv(1 << 20)
                if not data:
                    break
                frames.feed(data)
                while True:
                    f = frames.next()
                    if f is None:
                        break
                    last = f
        except OSError:
            pass
        if last is not None and last[0] == 0x8:
            code, reason = close_of(last[1])
            key = f"{code} {reason.split(':')[0]}"
        else:
            key = "no close"
        codes[key] = codes.get(key, 0) + 1
    for s in socks:
        s.close()
    out.put(("never", codes))


def slow_main(addr, count, seconds, out):
    socks = []
    for i in range(count):
        try:
            s, _ = connect(addr, compress=i % 2 == 0)
        except (OSError, EOFError):
            continue
        s.sendall(subscribe_frame())
        s.setblocking(False)
        socks.append(s)
    end = time.monotonic() + seconds
    ended = 0
    while time.monotonic() < end and socks:
        for s in list(socks):
            try:
                data = s.recv(random.choice((512, 2048, 8192)))
                if not data:
                    socks.remove(s)
                    s.close()
                    ended += 1
            except BlockingIOError:
                pass
            except OSError:
                socks.remove(s)
                s.close()
                ended += 1
        time.sleep(0.05)  # the pace of a slow reader, not a synchronisation
    for s in socks:
        s.close()
    out.put(("slow", {"ended_by_server": ended, "still_open": len(socks)}))


def reset_main(addr, count, seconds, out):
    rng = random.Random(count)
    end = time.monotonic() + seconds
    resets = 0
    failures = 0
    linger = struct.pack("ii", 1, 0)
    while time.monotonic() < end:
        batch = []
        for i in range(count):
            try:
                s, _ = connect(addr, compress=rng.random() < 0.5)
            except (OSError, EOFError):
                failures += 1
                continue
            s.sendall(subscribe_frame())
            batch.append(s)
        # Read a little from some, nothing from others, then reset them all.
        for s in batch:
            if rng.random() < 0.5:
                s.settimeout(0.01)
                try:
                    s.recv(rng.choice((100, 4096, 65536)))
                except OSError:
                    pass
        for s in batch:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.close()
            resets += 1
    out.put(("reset", {"resets": resets, "connect_failures": failures}))


def fresh_subscriber(addr):
    s, rest = connect(addr, compress=False)
    s.settimeout(DEADLINE_S)
    s.sendall(subscribe_frame())
    frames = Frames(rest)
    got = {}
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        f = frames.next()
        if f is None:
            frames.feed(s.recv(65536))
            continue
        if f[0] == 0x1:
            m = json.loads(f[1])
            if m.get("id") == 1:
                got["reply"] = m.get("result")
            if m.get("type") == "snapshot":
                got.setdefault("snapshots", 0)
                got["snapshots"] += 1
                if got["snapshots"] == len(MARKETS) * 3:
                    break
    s.close()
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:9101")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--good", type=int, default=8)
    ap.add_argument("--never", type=int, default=1000)
    ap.add_argument("--slow", type=int, default=300)
    ap.add_argument("--reset", type=int, default=100, help="connections per reset round")
    args = ap.parse_args()

    out = multiprocessing.Queue()
    go = multiprocessing.Event()
    procs = [
        multiprocessing.Process(target=never_main, args=(args.addr, args.never, True, out, go)),
        multiprocessing.Process(target=slow_main, args=(args.addr, args.slow, args.seconds, out)),
        multiprocessing.Process(target=reset_main, args=(args.addr, args.reset, args.seconds, out)),
    ]
    half = (args.good + 1) // 2
    for n, every in ((half, 0), (args.good - half, 1)):
        if n:
            procs.append(multiprocessing.Process(
                target=good_readers, args=(args.addr, n, args.seconds, every, out)))
    for p in procs:
        p.start()
    results = {"good": []}
    expected = len(procs) + 1  # never_main reports twice
    got = 0
    deadline = time.monotonic() + args.seconds + 120
    while got < expected and time.monotonic() < deadline:
        try:
            item = out.get(timeout=1)
        except Exception:
            if all(not p.is_alive() for p in procs) and out.empty():
                break
            continue
        got += 1
        if item[0] == "good":
            results["good"].extend(item[1])
            if sum(1 for _ in results["good"]) >= args.good:
                go.set()
        elif item[0] == "never-open":
            results["never_open"], results["never_refused"] = item[1], item[2]
        else:
            results[item[0]] = item[1]
        if all(k in results for k in ("slow", "reset")) and len(results["good"]) >= args.good:
            go.set()
    go.set()
    for p in procs:
        p.join(timeout=60)
    failures = []
    for i, g in enumerate(results["good"]):
        if g["errors"]:
            failures.append(f"good reader {i}: {g['errors']}")
        if g["messages"] == 0:
            failures.append(f"good reader {i} received nothing")
    try:
        results["fresh"] = fresh_subscriber(args.addr)
        if results["fresh"].get("snapshots", 0) < len(MARKETS) * 3:
            failures.append(f"a fresh subscriber got {results['fresh']}")
    except (OSError, EOFError) as e:
        failures.append(f"a fresh subscriber could not connect: {e}")
    results["good"] = [{"messages": g["messages"], "errors": len(g["errors"]),
                        "closed": g["closed"]} for g in results["good"]]
    print(json.dumps(results))
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
