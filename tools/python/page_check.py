#!/usr/bin/env python3
"""Checks ringex's live page (docs/http.md) in headless Chromium, over the DevTools
protocol on a pipe (stdlib only: no driver, no debugging port).

    python3 page_check.py --url http://127.0.0.1:9102/ [--screenshot page.png]

Opens the page, then reads JavaScript expressions from stdin, one per line; for each it
evaluates the expression in the page until it is true (then prints `ok`) or the deadline
passes (then prints the page's text on stderr and exits 1). At the end of stdin it fails
if the page threw an uncaught error or logged one, and exits 0 otherwise.
"""

import argparse
import base64
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 20.0  # a failure bound, never the thing measured
POLL_S = 0.1


class Failed(Exception):
    pass


class Browser:
    """Chromium with --remote-debugging-pipe: commands on its fd 3, replies on fd 4,
    each message JSON ending with a NUL byte."""

    def __init__(self, binary, log):
        self.profile = tempfile.mkdtemp(prefix="ringex-page.")
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def child():
            # The pipe fds may be 3 or 4 themselves: copy them away first.
            a, b = os.dup(cmd_r), os.dup(out_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--window-size=1200,800",
             f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            pass_fds=(3, 4), preexec_fn=child, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self.w = cmd_w
        self.r = out_r
        self.buf = b""
        self.next_id = 1
        self.errors = []

    def call(self, method, params=None, session=None):
        mid = self.next_id
        self.next_id += 1
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE_S
        while True:
            for m in self.messages(deadline):
                if m.get("id") == mid:
                    if "error" in m:
                        raise Failed(f"{method}: {m['error']}")
                    return m.get("result", {})
                self.event(m)

    def messages(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise Failed("the browser did not answer in time")
        ready, _, _ = select.select([self.r], [], [], left)
        if not ready:
            raise Failed("the browser did not answer in time")
        chunk = os.read(self.r, 1 << 20)
        if not chunk:
            raise Failed("the browser exited")
        self.buf += chunk
        *whole, self.buf = self.buf.split(b"\0")
        return [json.loads(x) for x in whole if x]

    def event(self, m):
        method, p = m.get("method"), m.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(d.get("exception", {}).get("description") or d.get("text"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(p["entry"].get("text"))

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--chromium", default="/usr/lib/chromium/chromium")
    p.add_argument("--screenshot")
    p.add_argument("--log", default=os.devnull, help="the browser's own output")
    args = p.parse_args()
    with open(args.log, "ab") as log:
        browser = Browser(args.chromium, log)
        session = None
        try:
            target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.call("Target.attachToTarget",
                                   {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                browser.call(f"{domain}.enable", session=session)
            browser.call("Page.navigate", {"url": args.url}, session=session)
            for line in sys.stdin:
                expr = line.strip()
                if not expr:
                    continue
                deadline = time.monotonic() + DEADLINE_S
                while True:
                    r = browser.call("Runtime.evaluate",
                                     {"expression": f"Boolean({expr})", "returnByValue": True},
                                     session=session)
                    if r.get("result", {}).get("value") is True:
                        break
                    if time.monotonic() > deadline:
                        text = browser.call("Runtime.evaluate",
                                            {"expression": "document.body.innerText",
                                             "returnByValue": True}, session=session)
                        raise Failed(f"never true: {expr}\npage:\n"
                                     f"{text.get('result', {}).get('value')}")
                    time.sleep(POLL_S)
                print("ok", flush=True)
            if browser.errors:
                raise Failed(f"the page reported errors: {browser.errors}")
        except Failed as e:
            print(f"FAILED: {e}", file=sys.stderr)
            sys.exit(1)
        finally:
            if args.screenshot and session:
                try:
                    shot = browser.call("Page.captureScreenshot", {"format": "png"},
                                        session=session)
                    with open(args.screenshot, "wb") as f:
                        f.write(base64.b64decode(shot["data"]))
                except Failed:
                    pass
            browser.close()


if __name__ == "__main__":
    main()
