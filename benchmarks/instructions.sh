#!/usr/bin/env bash
# Instructions per replicated 4 KiB write, counted by valgrind's callgrind (this machine's virtual
# CPU offers no hardware counters to `perf stat`). Both agents of a protocol C pair run under
# callgrind; fio's nbd engine writes a fixed number of 4 KiB random blocks at queue depth 1 to the
# primary. Each agent's counters are zeroed before the writes and dumped after them; what the agent
# spends idle (heartbeats, ticks) is measured the same way over a quiet stretch and subtracted in
# proportion to the time the writes took. Prints instructions per write on the primary and on the
# secondary.
#
#   benchmarks/instructions.sh [--writes N] [--tandem PATH]
#
# With --tandem, measures that binary (say an older commit's, to compare); else builds this tree's.
set -euo pipefail

writes=2000
tandem=
while [ $# -gt 0 ]; do
  case "$1" in
    --writes) writes=$2; shift 2 ;;
    --tandem) tandem=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
for tool in valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind)" >&2; exit 1; }
done
build_tandem "$top"
size=256M
dir=$(mktemp -d /var/tmp/tandem-instructions.XXXXXX)
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT
echo "0123456789abcdef0123456789abcdef" > "$dir/secret"
pair_config pairc C 11941 11942 11943 11944

# Each agent under callgrind, its output in $dir/NODE.callgrind.
for node in a b; do
  valgrind --tool=callgrind --callgrind-out-file="$dir/$node.callgrind" \
    "$tandem" agent --config "$dir/pairc/tandem.toml" --node "$node" --log-level warning \
    >/dev/null 2>>"$dir/pairc/$node.valgrind.log" &
  pids+=($!)
done
for _ in $(seq 1 600); do
  [ -S "$dir/pairc/a/a.control" ] && [ -S "$dir/pairc/b/b.control" ] && break
  sleep 0.1
done
"$tandem" volume primary vol0 --config "$dir/pairc/tandem.toml" --node a >/dev/null
wait_in_sync pairc

# counted PID: zeroes PID's counters; `dumped PID` then prints the instructions since.
zero() { callgrind_control -z "$1" >/dev/null; }
dumped() {
  rm -f "$dir"/*.callgrind.*
  callgrind_control -d "$1" >/dev/null
  local file
  for _ in $(seq 1 100); do
    file=$(ls "$dir"/*.callgrind.* 2>/dev/null | head -1 || true)
    [ -n "$file" ] && grep -q '^totals:' "$file" 2>/dev/null && break
    sleep 0.1
  done
  awk '/^totals:/ { print $2 }' "$file"
}
now() { date +%s.%N; }

# The idle rate: instructions per second while nothing is written.
for pid in "${pids[@]}"; do zero "$pid"; done
start=$(now)
sleep 5
idle_seconds=$(python3 -c "print($(now) - $start)")
idle=()
for pid in "${pids[@]}"; do idle+=("$(dumped "$pid")"); done

for pid in "${pids[@]}"; do zero "$pid"; done
start=$(now)
fio --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:11943/" --rw=randwrite --bs=4k --iodepth=1 \
  --size="$size" --number_ios="$writes" --output-format=json --output="$dir/fio.json" >/dev/null 2>&1
busy_seconds=$(python3 -c "print($(now) - $start)")
busy=()
for pid in "${pids[@]}"; do busy+=("$(dumped "$pid")"); done
done_writes=$(python3 -c "import json; print(json.load(open('$dir/fio.json'))['jobs'][0]['write']['total_ios'])")

python3 - "$done_writes" "$idle_seconds" "$busy_seconds" "${idle[@]}" "${busy[@]}" <<'PY'
import sys
writes = int(sys.argv[1])
idle_seconds, busy_seconds = float(sys.argv[2]), float(sys.argv[3])
idle = [int(x) for x in sys.argv[4:6]]
busy = [int(x) for x in sys.argv[6:8]]
print(f"{writes} replicated 4 KiB writes in {busy_seconds:.1f} s under callgrind")
for name, quiet, total in zip(["primary", "secondary"], idle, busy):
    spent = total - quiet / idle_seconds * busy_seconds
    print(f"{name:9s}: {spent / writes:10.0f} instructions per write "
          f"({total} in all, {quiet / idle_seconds:.0f} per idle second)")
PY
