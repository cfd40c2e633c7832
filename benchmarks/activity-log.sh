#!/usr/bin/env bash
# Writes beyond the activity log's reach, measured in one run with fio's nbd engine: 4 KiB random
# writes at depth 16 across the whole volume against
#   nbdkit on a local file (the bar),
#   a protocol C pair whose log reaches all of the volume (every write finds its extent in the log),
#   a protocol C pair whose log reaches a small part of it (`activity-log-extents`, default 32
#   extents of 4 MiB = 128 MiB), so that most writes wait for a log write first.
# Under each row: how many client writes waited for a log write on the small log's primary, and how
# many log writes (each one fdatasync) served them.
#
#   benchmarks/activity-log.sh [--runtime SECONDS] [--size SIZE] [--extents N] [--depth N] [--rounds N]
#                              [--tandem BINARY]
#
# --tandem runs another build of tandem (for example an older commit's) instead of building this one.
#
# Every server, both agents of each pair and fio share this machine's cores and disk.
set -euo pipefail

runtime=10
size=2G
extents=32
depth=16
rounds=1
tandem=
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --extents) extents=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --tandem) tandem=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
build_tandem "$top"
dir=$(mktemp -d /var/tmp/tandem-activity-log.XXXXXX)
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT
echo "0123456789abcdef0123456789abcdef" > "$dir/secret"

fallocate -l "$size" "$dir/nbdkit.img"
nbdkit --foreground --port 10961 --ipaddr 127.0.0.1 --exit-with-parent file file="$dir/nbdkit.img" &
pids+=($!)
pair_config wide C 10962 10963 10964 10965 "activity-log-extents = 65536"
pair_config small C 10966 10967 10968 10969 "activity-log-extents = $extents"
for cluster in wide small; do
  for node in a b; do pids+=("$(start_agent "$cluster" "$node")"); done
  wait_for_socket "$cluster" a
  wait_for_socket "$cluster" b
  sleep 0.5
  "$tandem" volume primary vol0 --config "$dir/$cluster/tandem.toml" --node a >/dev/null
  wait_in_sync "$cluster"
done
for uri in nbd://127.0.0.1:10961/ nbd://127.0.0.1:10964/vol0 nbd://127.0.0.1:10968/vol0; do
  for _ in $(seq 1 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
done

echo "4 KiB random writes, depth $depth, across all of $size; runtime ${runtime}s after 2s ramp; small log" \
  "$extents extents of 4 MiB; page cache settled before each figure; nothing pinned"
printf '| round | nbdkit | log reaches all | ratio | log reaches %s MiB | ratio |\n' "$((extents * 4))"
printf '| --- | ---: | ---: | ---: | ---: | ---: |\n'
for round in $(seq 1 "$rounds"); do
  base=$(measure nbd://127.0.0.1:10961/ randwrite 4k "$depth" iops)
  wide=$(measure nbd://127.0.0.1:10964/vol0 randwrite 4k "$depth" iops)
  writes_before=$(field small a activityLogWrites)
  waits_before=$(field small a activityLogWaits)
  small=$(measure nbd://127.0.0.1:10968/vol0 randwrite 4k "$depth" iops)
  writes_after=$(field small a activityLogWrites)
  waits_after=$(field small a activityLogWaits)
  python3 -c "
base, wide, small = $base, $wide, $small
print('| %d | %.0f IOPS | %.0f IOPS | %.2f | %.0f IOPS | %.2f |' % ($round, base, wide, wide / base, small, small / base))"
  if [ "$writes_after" != None ]; then
    python3 -c "
writes, waits = $writes_after - $writes_before, $waits_after - $waits_before
print('  round $round, small log: %d writes waited for %d log writes (%.1f per log write)' % (waits, writes, waits / max(writes, 1)))"
  fi
done
