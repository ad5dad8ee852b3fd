#!/usr/bin/env python3
"""A minimal, independent client of the ringex binary protocol (docs/protocol.md), in
plain Python: logs in with HMAC-SHA256 and sends one order at a time, timing each round
trip (request sent -> RequestDone received). Written from the protocol document alone,
it doubles as a cross-check that the document is enough to build a client.

Usage: probe.py [--addr 127.0.0.1:9100] [--key 1] [--secret demo-secret-1001] [--count N]
"""
import argparse, hashlib, hmac, socket, struct, time

HEADER = struct.Struct("<HHHBB")


def frame(template, body):
    return HEADER.pack(8 + len(body), len(body), template, 1, 1) + body


def login(key_id, secret):
    ts = time.time_ns()
    nonce = ts
    signed = struct.pack("<QQQ", key_id, ts, nonce)
    sig = hmac.new(hashlib.sha256(secret.encode()).digest(), signed, hashlib.sha256).digest()
    body = signed + sig + struct.pack("<QQII", 0, 0, 0, 0)
    return frame(1, body)


def new_order(request_id, cid, price, qty, side, market=1, kind=1, tif=1, stp=0):
    body = struct.pack("<QQqQqIBBBB", request_id, cid, price, qty, 0, market, side, kind, tif, stp)
    return frame(10, body)


def cancel_by_client_id(request_id, cid, market=1):
    # Cancel (template 11): request_id, order ref value, market, ref kind (2 = client id)
    body = struct.pack("<QQIB3x", request_id, cid, market, 2)
    return frame(11, body)


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def recv(self):
        while True:
            if len(self.buf) >= 8:
                length, _, template, _, _ = HEADER.unpack_from(self.buf)
                if len(self.buf) >= length:
                    f, self.buf = self.buf[:length], self.buf[length:]
                    return template, f
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:9100")
    ap.add_argument("--key", type=int, default=1)
    ap.add_argument("--secret", default="demo-secret-1001")
    ap.add_argument("--count", type=int, default=2000)
    a = ap.parse_args()
    c = Conn(a.addr)
    c.send(login(a.key, a.secret))
    template, f = c.recv()
    if template != 101:
        raise SystemExit(f"login refused: template {template}, frame {f.hex()}")
    lat = []
    request_id = 0
    for i in range(a.count):
        request_id += 1
        cid = 1_000_000 + i
        # A resting buy far below the market, then its cancel: two round trips per order.
        for msg in (new_order(request_id, cid, 5_500_000, 1, 1),
                    cancel_by_client_id(request_id + 1, cid)):
            t = time.perf_counter_ns()
            c.send(msg)
            while True:
                template, f = c.recv()
                if template == 122:  # RequestDone
                    break
            lat.append(time.perf_counter_ns() - t)
        request_id += 1
    lat.sort()
    n = len(lat)
    print("round trips %d: p50 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us" % (
        n, lat[n // 2] / 1e3, lat[int(n * 0.99)] / 1e3, lat[int(n * 0.999)] / 1e3, lat[-1] / 1e3))


if __name__ == "__main__":
    main()
