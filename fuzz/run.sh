#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (or the TARGETs named), one after the
# other, on one core.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, read only) plus the inputs
# earlier runs found (kept under the fuzz target dir, not in the repository). A crash (a panic, an
# assertion, a timeout, out of memory) is saved there and printed (hex and text); the script goes
# on with the other targets and exits 1 at the end. A summary gives executions and time per target.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer needs nightly flags (-Z, sanitizer
# coverage): RUSTC_BOOTSTRAP=1 lets the stable toolchain take them. Knobs (environment):
#   FUZZ_TARGET_DIR    where to build (default $ACTIVITY_CACHE/fuzz-target, ~/.cache/activity-operator/
#                      fuzz-target; never the workspace's CARGO_TARGET_DIR)
#   FUZZ_SANITIZER     address | none (default none: the targets are safe Rust; address is 2-3x slower)
#   FUZZ_ARGS          extra libFuzzer flags (e.g. "-max_len=65536")
set -euo pipefail

secs=${1:-}
[[ $secs =~ ^[0-9]+$ ]] && ((secs > 0)) || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
export RUSTC_BOOTSTRAP=1
# Never the workspace's CARGO_TARGET_DIR (CI exports one): the instrumented build would replace its artifacts.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${ACTIVITY_CACHE:-$HOME/.cache/activity-operator}/fuzz-target}
sanitizer=${FUZZ_SANITIZER:-none}
work=$CARGO_TARGET_DIR/fuzz-work

cargo fuzz --version >/dev/null 2>&1 || { echo "fuzz/run.sh: cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }

if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]} > 0)) || { echo "fuzz/run.sh: no fuzz targets" >&2; exit 2; }

# One build for all targets; -a: debug assertions and overflow checks, so an arithmetic overflow
# is the panic it would be in a debug build instead of a silent wrap.
echo "fuzz/run.sh: building ${targets[*]} (sanitizer $sanitizer, target dir $CARGO_TARGET_DIR)" >&2
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo fuzz build -a --sanitizer "$sanitizer" >&2

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=$work/corpus/$t
  artifacts=$work/artifacts/$t/
  log=$work/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")" "corpus/$t"
  echo "fuzz/run.sh: $t for ${secs}s (log $log)" >&2
  before=$(find "$artifacts" -type f | sort)
  status=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  cargo fuzz run -a --sanitizer "$sanitizer" "$t" "$corpus" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts" ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
  entries=$(find "$corpus" -type f | wc -l)
  if ((status != 0)); then
    failed+=("$t")
    summary+=("$t: FAILED (exit $status) after ${runs:-?} executions")
    echo "fuzz/run.sh: $t FAILED; end of its log:" >&2
    grep -v '^#[0-9]' "$log" | tail -n 40 >&2
    new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort))
    [[ -n $new ]] || echo "fuzz/run.sh: (no new crash file in $artifacts)" >&2
    for f in $new; do
      echo "--- crash input $f ($(wc -c <"$f") bytes), hex:" >&2
      od -A d -t x1 -v "$f" | head -n 64 >&2
      echo "--- as text:" >&2
      head -c 2000 "$f" | cat -v >&2
      echo >&2
    done
  else
    summary+=("$t: ok, ${runs:-?} executions in ${took:-$secs}s, corpus $entries entries")
  fi
done

echo "fuzz/run.sh summary:"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
  echo "fuzz/run.sh: crashes in ${failed[*]}; inputs under $work/artifacts/ (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -a --sanitizer $sanitizer TARGET FILE)" >&2
  exit 1
fi
