#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, tests, and a build of the
# benchmarks so they never rot. Fails on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Tests that need something of the machine (root for a tmpfs mount, /dev/shm, FIEMAP,
# io_uring, O_DIRECT) fail here instead of passing untested: CI has all of it.
RINGEX_REQUIRE_ALL_TESTS=1 cargo test --workspace --locked
echo "== cargo bench --no-run"
cargo bench --workspace --locked --no-run
echo "== fuzz the binary protocol's frame decoder briefly (scripts/fuzz.sh)"
./scripts/fuzz.sh 10
