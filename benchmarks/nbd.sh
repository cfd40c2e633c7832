#!/usr/bin/env bash
# Throughput and IOPS of Tandem's NBD server against nbdkit's file plugin, measured in the same run
# with fio's nbd engine on the same kind of backing file (preallocated, on the same file system).
#
#   benchmarks/nbd.sh [--runtime SECONDS] [--size SIZE] [--dir DIR] [--no-pin]
#
# Prints one row per workload with both figures and the ratio Tandem/nbdkit.
#
# By default both servers run on the last CPU and fio on the first, so that each server gets the
# same single core and the client's traffic always crosses cores, as it would from another machine.
# Unpinned, the scheduler's placement of the server threads next to fio (or not) varies between
# runs and between servers and dominates queue-depth-1 latency; --no-pin shows that case.
set -euo pipefail

runtime=15
size=2G
pin=yes
dir=$(mktemp -d /var/tmp/tandem-bench.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --dir) dir=$2; mkdir -p "$dir"; shift 2 ;;
    --no-pin) pin=no; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done


top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
build_tandem "$top"

server_cpus=""
client_cpus=""
last_cpu=$(($(nproc) - 1))
if [ "$pin" = yes ] && [ "$last_cpu" -gt 0 ]; then
  server_cpus="taskset -c $last_cpu"
  client_cpus="--cpus_allowed=0"
fi

tandem_port=10901
nbdkit_port=10902
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT

fallocate -l "$size" "$dir/tandem.img"
fallocate -l "$size" "$dir/nbdkit.img"
cat > "$dir/tandem.toml" <<TOML
[cluster]
name = "bench"
state-dir = "$dir"

[[node]]
name = "bench"
address = "127.0.0.1"
nbd-listen = ["127.0.0.1:$tandem_port"]

[[volume]]
name = "vol0"
backing = "$dir/tandem.img"
TOML

$server_cpus "$tandem" agent --config "$dir/tandem.toml" --node bench --log-level warning &
pids+=($!)
$server_cpus nbdkit --foreground --port "$nbdkit_port" --ipaddr 127.0.0.1 --exit-with-parent file file="$dir/nbdkit.img" &
pids+=($!)
for uri in "nbd://127.0.0.1:$tandem_port/vol0" "nbd://127.0.0.1:$nbdkit_port/"; do
  for _ in $(seq 1 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
  nbdinfo --size "$uri" >/dev/null
done

# name rw bs iodepth metric
workloads=(
  "seq-write-1M-qd8 write 1M 8 bw"
  "rand-write-4K-qd16 randwrite 4k 16 iops"
  "rand-write-4K-qd1 randwrite 4k 1 iops"
  "rand-read-4K-qd16 randread 4k 16 iops"
)


echo "pinned: $pin; runtime ${runtime}s per figure after 2s ramp; backing files $size, preallocated"
printf '%-22s %14s %14s %8s\n' workload tandem nbdkit ratio
for workload in "${workloads[@]}"; do
  read -r name rw bs depth metric <<<"$workload"
  t=$(measure "nbd://127.0.0.1:$tandem_port/vol0" "$rw" "$bs" "$depth" "$metric")
  n=$(measure "nbd://127.0.0.1:$nbdkit_port/" "$rw" "$bs" "$depth" "$metric")
  unit=$([ "$metric" = bw ] && echo MiB/s || echo IOPS)
  printf '%-22s %8.0f %-5s %8.0f %-5s %8.2f\n' "$name" "$t" "$unit" "$n" "$unit" "$(python3 -c "print($t/$n)")"
done
