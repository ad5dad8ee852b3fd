#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, tests, and a build of the
# benchmarks so they never rot. Fails on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== python environment for the WebSocket client tests (scripts/python-env.sh)"
# A real third-party client (Python `websockets`, pinned) checks the WebSocket API in
# gateway/tests/websocket.rs; the script installs it into target/python-env once.
RINGEX_PYTHON="$(./scripts/python-env.sh)"
export RINGEX_PYTHON
echo "== tools for the HTTP and WebSocket tests: promtool, chromium, websocat (scripts/test-tools.sh)"
# /metrics is validated by `promtool check metrics` and the live page is tested in
# headless Chromium (tests/http.rs), and docs/websocket.md's websocat examples run in
# tests/e2e.rs; the script installs what is missing.
./scripts/test-tools.sh
echo "== cargo test"
# Tests that need something of the machine (root for a tmpfs mount, /dev/shm, FIEMAP,
# io_uring, O_DIRECT) fail here instead of passing untested: CI has all of it.
RINGEX_REQUIRE_ALL_TESTS=1 cargo test --workspace --locked
echo "== cargo bench --no-run"
cargo bench --workspace --locked --no-run
echo "== fuzz the binary protocol's frame decoder briefly (scripts/fuzz.sh)"
./scripts/fuzz.sh 10
