#!/bin/sh
# A copy of stream_app/ with the worker's perf edits reverted, for `bench.run --baseline-src`:
# one model call per batch (no length-sorted chunks), Faust's 1.5 s fetch wait, and the
# pending queue bounded by count only. Usage: sh bench/perf_baseline.sh [OUT_DIR]
set -eu
out="${1:-/tmp/perf_baseline_tree}"
root="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$out" && mkdir -p "$out"
cp -r "$root/stream_app" "$out/"
find "$out" -name __pycache__ -prune -exec rm -rf {} +
pipeline="$out/stream_app/serving/pipeline.py"
sed -i 's/loop.run_in_executor(self._executor, self._score_by_length, snapshots)/loop.run_in_executor(self._executor, self.scorer.score, snapshots)/' "$pipeline"
sed -i 's/^            self._observe_scoring_rate(len(snapshots), elapsed)$/            pass  # baseline: count bound only/' "$pipeline"
sed -i 's/^        limit_fetch_wait(app, fetch_wait_ms(settings))$/        pass  # baseline: Faust default fetch wait/' "$out/stream_app/app.py"
# Each revert must have matched exactly once, or the baseline is not what it claims to be.
test "$(grep -c 'self.scorer.score, snapshots' "$pipeline")" = 1
test "$(grep -c 'baseline: count bound only' "$pipeline")" = 1
test "$(grep -c 'baseline: Faust default fetch wait' "$out/stream_app/app.py")" = 1
echo "$out"
