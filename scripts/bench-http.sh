#!/usr/bin/env bash
# The HTTP benchmark of docs/benchmarks.md ("HTTP"): REST depth and ticker requests per
# second with keep-alive from 100 connections, against the same from 100 connections to
# the static page served by the same loop, in the same run of one daemon; then the
# market makers' round trip under the binary load alone and with the REST load beside it.
# Not a test. Needs a release build (cargo build --release). Prints everything measured.
#   scripts/bench-http.sh [seconds per phase] [binary load rate] [retail thread nice]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_PHASE="${1:-5}"
RATE="${2:-10000}"
NICE="${3:-0}"
BIN=target/release/ringex
DIR="$(mktemp -d /tmp/ringex-bench-http.XXXX)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
# The embedded default on its own ports and data directory, async durability, and a rate
# limit per key the binary load's market makers stay under.
sed -e "s#data_dir = \"./data\"#data_dir = \"$DIR/data\"#" \
    -e 's#127.0.0.1:9100#127.0.0.1:29100#; s#127.0.0.1:9101#127.0.0.1:29101#' \
    -e 's#127.0.0.1:9102#127.0.0.1:29102#; s#127.0.0.1:9103#127.0.0.1:29103#' \
    -e 's#durability = "group"#durability = "async"#' \
    -e 's#requests_per_second_per_key = 10000 #requests_per_second_per_key = 10000000 #' \
    -e 's#log_every_seconds = 5#log_every_seconds = 0#' \
    -e "s#thread_nice = 0 #thread_nice = $NICE #" \
    config/single.toml > "$DIR/bench.toml"
"$BIN" start --config "$DIR/bench.toml" 2> "$DIR/daemon.log" &
PID=$!
for _ in $(seq 100); do
    grep -q "listening" "$DIR/daemon.log" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/daemon.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening" "$DIR/daemon.log" || { cat "$DIR/daemon.log" >&2; exit 1; }
echo "== $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores; websocket.thread_nice = $NICE"
echo "== a book to read: the binary load for 2 s at $RATE/s"
"$BIN" load --addr 127.0.0.1:29100 --admin-addr 127.0.0.1:29103 --rate "$RATE" --duration 2 --quiet >/dev/null
echo "== REST depth (limit 20) and ticker, 100 keep-alive connections (50 each)"
"$BIN" http-load --addr 127.0.0.1:29102 --connections 100 --duration "$SECONDS_PER_PHASE"
echo "== the static page (/), 100 keep-alive connections"
"$BIN" http-load --addr 127.0.0.1:29102 --connections 100 --duration "$SECONDS_PER_PHASE" --path /
echo "== the binary load alone: $RATE/s"
"$BIN" load --addr 127.0.0.1:29100 --admin-addr 127.0.0.1:29103 --rate "$RATE" --duration "$SECONDS_PER_PHASE"
echo "== the binary load with the REST load beside it"
"$BIN" http-load --addr 127.0.0.1:29102 --connections 100 --duration "$((SECONDS_PER_PHASE + 2))" > "$DIR/beside.txt" &
HTTP_PID=$!
"$BIN" load --addr 127.0.0.1:29100 --admin-addr 127.0.0.1:29103 --rate "$RATE" --duration "$SECONDS_PER_PHASE"
wait "$HTTP_PID"
cat "$DIR/beside.txt"
echo "== $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg)"
