#!/usr/bin/env bash
# A/B of the standalone order book: this tree's engine against an older commit's
# (default 5c20259), on the same recorded operations, the two binaries alternated.
#
#   scripts/bench-book-ab.sh            # churn shape, 1 market, 2,000,000 operations
#   SHAPE=core MARKETS=1000 ROUNDS=7 scripts/bench-book-ab.sh
#
# 1. `ringex bench engine --dump-ops` writes the workload's book operations to a file.
# 2. engine/examples/book_replay.rs is built twice: against this tree's engine, and
#    against the old commit's sources (extracted with `git archive`, this example copied
#    in, built in a target directory of its own under $OUT).
# 3. ROUNDS rounds, each running the old binary then the new one (5 passes each, median
#    per binary); the summary is the median over rounds of new/old time per operation.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel)
OLD=${OLD:-5c20259}
SHAPE=${SHAPE:-churn}
MARKETS=${MARKETS:-1}
COMMANDS=${COMMANDS:-2000000}
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-$ROOT/target/book-ab}
cd "$ROOT"
mkdir -p "$OUT"

cargo build --release --bin ringex
target/release/ringex bench engine --shape "$SHAPE" --markets "$MARKETS" \
    --commands "$COMMANDS" --dump-ops "$OUT"
FILE=$OUT/ops-$SHAPE-$MARKETS.bin

cargo build --release -p ringex-engine --example book_replay
cp target/release/examples/book_replay "$OUT/book_replay.new"

SRC=$OUT/src-$OLD
if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC"
    git archive "$OLD" | tar -x -C "$SRC"
fi
mkdir -p "$SRC/engine/examples"
cp engine/examples/book_replay.rs "$SRC/engine/examples/"
# A target directory of its own: cargo names a workspace member's artifacts without its
# path, so the two engines would overwrite each other in a shared one. The engine's
# dependencies are small, so this costs little.
(cd "$SRC" && CARGO_TARGET_DIR="$OUT/target-old" cargo build --release -p ringex-engine --example book_replay)
cp "$OUT/target-old/release/examples/book_replay" "$OUT/book_replay.old"

LOG=$OUT/ab-$SHAPE-$MARKETS.log
: >"$LOG"
for i in $(seq "$ROUNDS"); do
    echo "round $i: $(uptime)" | tee -a "$LOG"
    "$OUT/book_replay.old" "$FILE" 5 | sed 's/^/old /' | tee -a "$LOG"
    "$OUT/book_replay.new" "$FILE" 5 | sed 's/^/new /' | tee -a "$LOG"
done
awk -v old="$OLD" '
    $1 == "old" && $2 == "new" { o[++n] = $3 }
    $1 == "new" && $2 == "new" { w[++m] = $3 }
    $1 == "old" && $2 == "with_capacity" { oc[++p] = $3 }
    $1 == "new" && $2 == "with_capacity" { wc[++q] = $3 }
    function med(a, k,   i, j, t) {
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
    }
    END {
        for (i = 1; i <= n; i++) { r[i] = w[i] / o[i]; rc[i] = wc[i] / oc[i]; s[i] = oc[i] / o[i]; t[i] = wc[i] / w[i] }
        printf "new(): %s %.1f ns/op, this tree %.1f ns/op: new/old x%.3f (median over %d rounds)\n", old, med(o, n), med(w, n), med(r, n), n
        printf "with_capacity: %s %.1f ns/op, this tree %.1f ns/op: new/old x%.3f\n", old, med(oc, n), med(wc, n), med(rc, n)
        printf "with_capacity / new(): %s x%.3f, this tree x%.3f\n", old, med(s, n), med(t, n)
    }' "$LOG"
