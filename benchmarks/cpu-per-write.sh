#!/usr/bin/env bash
# CPU per replicated 4 KiB write: a fresh protocol C pair (nothing pinned), a warm-up run so that
# every figure finds the page cache warm, then --runs fio runs of 4 KiB random writes at depth 16;
# for each run, the CPU ticks (user and system) of all of each agent's threads, from
# /proc/PID/task/*/stat, over fio's request count. Prints microseconds per request for the primary
# and the secondary, per run and the median.
#
# (Instructions would be the steadier figure, but this machine's virtual CPU exposes no hardware
# counters to `perf stat`, and valgrind 3.19 crashes in the Swift runtime.)
#
#   benchmarks/cpu-per-write.sh [--runs N] [--runtime SECONDS] [--tandem PATH]
#
# With --tandem, measures that binary (an older commit's, to compare); else builds this tree's.
set -euo pipefail

runs=3
runtime=6
tandem=
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --tandem) tandem=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
build_tandem "$top"
size=1G
dir=$(mktemp -d /var/tmp/tandem-cpu.XXXXXX)
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT
echo "0123456789abcdef0123456789abcdef" > "$dir/secret"
pair_config pairc C 11941 11942 11943 11944
pids+=("$(start_agent pairc a)")
pids+=("$(start_agent pairc b)")
wait_for_socket pairc a
wait_for_socket pairc b
"$tandem" volume primary vol0 --config "$dir/pairc/tandem.toml" --node a >/dev/null
wait_in_sync pairc

# ticks PID: the user and system clock ticks of all of PID's threads so far.
ticks() {
  cat /proc/"$1"/task/*/stat 2>/dev/null | awk '{ sum += $14 + $15 } END { print sum }'
}
run_fio() {
  fio --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:11943/" --rw=randwrite --bs=4k --iodepth=16 \
    --size="$size" --time_based --runtime="$1" --output-format=json --output="$dir/fio.json" >/dev/null 2>&1
}
run_fio "$runtime"
hz=$(getconf CLK_TCK)
figures=()
for run in $(seq 1 "$runs"); do
  before=("$(ticks "${pids[0]}")" "$(ticks "${pids[1]}")")
  run_fio "$runtime"
  after=("$(ticks "${pids[0]}")" "$(ticks "${pids[1]}")")
  requests=$(python3 -c "import json; print(json.load(open('$dir/fio.json'))['jobs'][0]['write']['total_ios'])")
  line=$(python3 -c "
hz, n = $hz, $requests
p = ($((after[0] - before[0]))) / hz / n * 1e6
s = ($((after[1] - before[1]))) / hz / n * 1e6
print(f'{n / $runtime:.0f} {p:.1f} {s:.1f}')")
  figures+=("$line")
  read -r iops primary secondary <<<"$line"
  echo "run $run: $iops IOPS, primary $primary µs per request, secondary $secondary µs per request"
done
python3 - "${figures[@]}" <<'PY'
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.argv[1:]]
iops, primary, secondary = zip(*rows)
print(f"median: {statistics.median(iops):.0f} IOPS, primary {statistics.median(primary):.1f} µs "
      f"({min(primary):.1f}-{max(primary):.1f}), secondary {statistics.median(secondary):.1f} µs "
      f"({min(secondary):.1f}-{max(secondary):.1f}) per request")
PY
