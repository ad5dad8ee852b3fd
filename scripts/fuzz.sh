#!/usr/bin/env bash
# Fuzzes the binary protocol frame decoder (gateway/fuzz, target `frame_decoder`) for N
# seconds (default 20), starting from the committed seeds (one frame per template) plus
# the local corpus. Installs cargo-fuzz if missing. Fails if the fuzzer finds a crash;
# the input is then in gateway/fuzz/artifacts/frame_decoder/.
#
# Only stable Rust is needed: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z sanitizer
# flags cargo-fuzz passes (AddressSanitizer + SanitizerCoverage).
#
# Usage: scripts/fuzz.sh [seconds]
# Env:   FUZZ_TARGET_DIR  build directory (default gateway/fuzz/target)
set -euo pipefail
cd "$(dirname "$0")/../gateway"
secs="${1:-20}"
target_dir="${FUZZ_TARGET_DIR:-$PWD/fuzz/target}"
corpus=fuzz/corpus/frame_decoder

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
mkdir -p "$corpus"
echo "== cargo fuzz build frame_decoder"
cargo fuzz build --target-dir "$target_dir" frame_decoder
echo "== cargo fuzz run frame_decoder for ${secs}s"
# New inputs go to the first directory (git-ignored); the seeds are read only.
cargo fuzz run --target-dir "$target_dir" frame_decoder "$corpus" fuzz/seeds/frame_decoder -- \
    -max_total_time="$secs" -print_final_stats=1
