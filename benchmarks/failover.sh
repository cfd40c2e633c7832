#!/usr/bin/env bash
# The gap a client sees when the primary dies: two real agents and a witness on loopback, a client
# writing numbered 4 KiB blocks with FUA, the primary killed with SIGKILL again and again. The gap is
# from the last acknowledged write before the kill to the first acknowledged write on the new
# primary (the client retries both nodes every 20 ms). Every acknowledged block is read back.
#
#   benchmarks/failover.sh [--rounds N]
#
# Runs the rounds at dead-time 2s (the default) and 1s, then one planned switchover.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=20
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
swift build --build-tests >/dev/null
percentiles() {
  python3 -c '
import sys
gaps = sorted(float(x) for x in sys.argv[1:])
def p(q):
    return gaps[min(len(gaps) - 1, int(round(q / 100 * (len(gaps) - 1))))]
print("kills %d  p50 %.3f s  p99 %.3f s  max %.3f s  min %.3f s" % (len(gaps), p(50), p(99), gaps[-1], gaps[0]))
' "$@"
}
for dead in 2s 1s; do
  log=$(mktemp)
  TANDEM_FAILOVER_ROUNDS=$rounds TANDEM_FAILOVER_DEAD_TIME=$dead \
    swift test --skip-build --filter 'killPrimary_noAcknowledgedWriteLost' >"$log" 2>&1 || {
    tail -40 "$log"; echo "the failover run failed (dead-time $dead)" >&2; exit 1; }
  line=$(grep -o 'failover gaps.*' "$log")
  echo "dead-time $dead: ${line#*: }"
  # shellcheck disable=SC2046
  echo "dead-time $dead: $(percentiles $(echo "${line#*: }"))"
  rm -f "$log"
done
log=$(mktemp)
swift test --skip-build --filter 'plannedSwitchover' >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
grep -o 'planned switchover gap.*' "$log"
rm -f "$log"
echo "Published figures for comparison (not measured here): keepalived declares a master dead after about"
echo "3.6 s at its defaults; Corosync's token timeout is 3 s plus a consensus time; DRBD's peer timeout is 6 s."
