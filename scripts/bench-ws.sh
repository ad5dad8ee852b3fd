#!/usr/bin/env bash
# One run of the WebSocket benchmark of docs/benchmarks.md ("WebSocket"): a fresh node
# with the section's server config (`inline-ws.toml`: the embedded default, async
# durability, the inline topology with the retail loop pinned to core 0 beside the
# generator, listeners on 127.0.0.1:19100/19101/19103), then `ringex load` pinned to
# core 0 with the arguments given, then the node's overrun count. Not a test. Needs a
# release build (cargo build --release). Examples (the section's rows):
#   scripts/bench-ws.sh --rate 100000 --duration 6 --spin --ws 1000
#   scripts/bench-ws.sh --rate 10000 --duration 6 --ws 1000 --ws-no-baseline
#   scripts/bench-ws.sh --rate 10000 --duration 6 --ws 10000 --ws-idle 3 --ws-no-baseline
# RINGEX_BIN overrides the binary (to compare two builds in one sitting);
# RINGEX_WS_NICE sets websocket.thread_nice (default 0); RINGEX_WS_BATCHED=false turns
# websocket.batched_sends off (one writev per subscriber, the fan-out's baseline);
# RINGEX_WS_CORE pins the retail loop to another core (default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${RINGEX_BIN:-target/release/ringex}"
DIR="$(mktemp -d /tmp/ringex-bench-ws.XXXX)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
ulimit -n 20000
sed -e "s#data_dir = \"./data\"#data_dir = \"$DIR/data\"#" \
    -e 's#127.0.0.1:9100#127.0.0.1:19100#; s#127.0.0.1:9101#127.0.0.1:19101#' \
    -e 's#127.0.0.1:9102#127.0.0.1:19102#; s#127.0.0.1:9103#127.0.0.1:19103#' \
    -e 's#durability = "group"#durability = "async"#' \
    -e 's#requests_per_second_per_key = 10000 #requests_per_second_per_key = 10000000 #' \
    -e 's#topology = "auto" #topology = "inline" #' \
    -e "s@^# cores = { gateway = 1, helpers = 1 }@cores = { gateway = 1, helpers = 1, websocket = ${RINGEX_WS_CORE:-0} }@" \
    -e 's#^spin_us = 0                \# poll#spin_us = 200              \# poll#' \
    -e '/^\[websocket\]/,/^\[http\]/ s#^connections_max = 10000#connections_max = 20000#' \
    -e '/^\[websocket\]/,/^\[http\]/ s#^connections_per_ip = 64#connections_per_ip = 20000#' \
    -e "s#^thread_nice = 0 #thread_nice = ${RINGEX_WS_NICE:-0} #" \
    -e "s#^batched_sends = true #batched_sends = ${RINGEX_WS_BATCHED:-true} #" \
    config/single.toml > "$DIR/inline-ws.toml"
"$BIN" start --config "$DIR/inline-ws.toml" 2> "$DIR/daemon.log" &
PID=$!
for _ in $(seq 100); do
    grep -q "listening" "$DIR/daemon.log" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$DIR/daemon.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening" "$DIR/daemon.log" || { cat "$DIR/daemon.log" >&2; exit 1; }
echo "== $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg); $BIN load $*"
taskset -c 0 "$BIN" load --addr 127.0.0.1:19100 --admin-addr 127.0.0.1:19103 \
    --ws-addr 127.0.0.1:19101 --ws-daemon-pid "$PID" --quiet "$@"
echo "== $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg)"
kill "$PID"
wait "$PID" || true
echo "== the node: $(grep -o 'ws_overruns=[0-9]*' "$DIR/daemon.log" | tail -1)"
