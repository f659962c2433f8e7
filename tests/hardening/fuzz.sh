#!/usr/bin/env bash
# The fuzz targets in fuzz/ (configuration loader, header policy, request target reduction,
# substitution engine), each for a bounded time, starting from the committed seeds. A failure
# stops with the input libFuzzer saved under fuzz/artifacts/; fuzz/regressions/README.md says
# how it becomes a regression test.
#
#   bash tests/hardening/fuzz.sh [seconds per target]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-60}

command -v cargo-fuzz >/dev/null 2>&1 || cargo install -q --locked cargo-fuzz
# cargo fuzz passes unstable flags to rustc; this toolchain is stable, so allow them. Without a
# sanitizer: the code under test is safe Rust, the properties are what is checked.
export RUSTC_BOOTSTRAP=1
for target in config_loader header_policy request_target substitution; do
  mkdir -p "target/fuzz-corpus/$target"
  log="target/fuzz-corpus/$target.log"
  echo "fuzzing $target for $SECONDS_EACH s"
  if ! cargo fuzz run --sanitizer none "$target" "target/fuzz-corpus/$target" "fuzz/corpus/$target" \
      -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^Done" "$log"
done
