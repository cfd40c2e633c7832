#!/usr/bin/env bash
# The nemesis: every fault of the fault table that the namespace lab can make (agent killed with
# its host alive, a frozen primary, partitions, a flapping link, the witness down, a host crash),
# each with a floating address and a libnbd client writing numbered 4 KiB blocks with FUA through
# it. Release build, dead-time 2 s; the set runs ROUNDS times (3 by default) and the figures of
# every round are printed, then the worst stall of each fault.
#
#   benchmarks/nemesis.sh [--rounds N]
#
# Needs root (network namespaces), iproute2, arping and python3-libnbd, as the tests do. CI runs
# each fault once, in a debug build, as part of `swift test` (NemesisTests).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
# Release, with testing enabled: the test targets import modules @testable.
swift build -c release -Xswiftc -enable-testing --build-tests >&2
all=$(mktemp)
for round in $(seq "$rounds"); do
  log=$(mktemp)
  swift test -c release -Xswiftc -enable-testing --skip-build --filter NemesisTests >"$log" 2>&1 || {
    grep -E '✘|nemesis' "$log" | tail -40; echo "nemesis round $round failed" >&2; exit 1; }
  grep -o 'nemesis .*' "$log" | sed "s/^nemesis /round $round: /" | tee -a "$all"
  rm -f "$log"
done
echo "worst of $rounds rounds:"
python3 - "$all" <<'PY'
import re, sys
worst = {}
for line in open(sys.argv[1]):
    match = re.match(r"round \d+: (.*?): .*?(\d+) lost, longest stall ([0-9.]+) s, promotions (\d+)", line)
    if not match:
        continue
    name, lost, stall, promotions = match.group(1), int(match.group(2)), float(match.group(3)), int(match.group(4))
    entry = worst.setdefault(name, [0, 0.0, 0])
    entry[0] = max(entry[0], lost)
    entry[1] = max(entry[1], stall)
    entry[2] = max(entry[2], promotions)
for name, (lost, stall, promotions) in worst.items():
    print(f"  {name}: lost {lost}, longest stall {stall:.3f} s, promotions at most {promotions}")
PY
rm -f "$all"
