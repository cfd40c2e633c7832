#!/usr/bin/env bash
# Replication cost, measured in one run with fio's nbd engine against:
#   nbdkit on a local file (the bar), Tandem on a single node, Tandem protocol C with a connected
#   peer, Tandem protocol A with a connected peer.
# And the same replicated work done by a replicator written by others: qemu-storage-daemon serving the
# file over NBD with a blockdev-mirror job to an nbdkit on the other "node", in copy-mode
# write-blocking (a write completes once the target has it too: protocol C's promise) and background
# (the target is written behind the client: protocol A's).
# And the machine's ceiling for a write that is stored twice: two fio jobs at once, each against its
# own nbdkit. A replicated write costs at least what two such writes cost (the client's bytes are
# received, and written, on both nodes), so when both nodes share this machine the pair cannot beat
# one stream of that run; the "2x nbdkit" column is that stream against nbdkit alone.
# And protocol C with the peer link over mutual TLS (payloads leave from memory, not with sendfile)
# against protocol C in clear, both in the same run.
# Before all that, 4 KiB random writes on protocol C right after its initial full sync, with the page
# cache as the sync left it (every other figure starts from a settled cache).
# Then the resync of a 1% dirty region against the full sync of the same volume.
#
#   benchmarks/replication.sh [--runtime SECONDS] [--size SIZE] [--rounds N] [--split-cores]
#
# By default every server, both agents of a pair and fio share this machine's cores and disk; nothing
# is pinned. --split-cores stands in for two machines: fio and the server it drives (nbdkit, the single
# node, a pair's primary) run on CPU 0, a pair's secondary on the other CPUs. The targets presume a
# secondary with cores of its own; this is the nearest one machine comes to that. (The two-stream
# ceiling does not apply then and is not measured.)
set -euo pipefail

runtime=10
size=1G
rounds=1
split=no
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --split-cores) split=yes; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
command -v qemu-storage-daemon >/dev/null ||
  { echo "missing qemu-storage-daemon (apt-get install qemu-system-common)" >&2; exit 1; }
build_tandem "$top"
dir=$(mktemp -d /var/tmp/tandem-replication.XXXXXX)
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT
echo "0123456789abcdef0123456789abcdef" > "$dir/secret"

# Where servers run: near (fio's CPU, for every server fio drives) and far (a pair's secondary).
near=()
near_cpu=""
far_cpu=""
client_cpus=""
placement="nothing pinned"
if [ "$split" = yes ]; then
  last_cpu=$(($(nproc) - 1))
  [ "$last_cpu" -gt 0 ] || { echo "--split-cores needs at least two CPUs" >&2; exit 1; }
  near_cpu=0
  far_cpu="1-$last_cpu"
  near=(taskset -c "$near_cpu")
  client_cpus="--cpus_allowed=$near_cpu"
  placement="fio and the servers it drives on CPU $near_cpu, each pair's secondary on CPUs $far_cpu"
fi

# nbdkit and a single Tandem node
fallocate -l "$size" "$dir/nbdkit.img"
"${near[@]}" nbdkit --foreground --port 10931 --ipaddr 127.0.0.1 --exit-with-parent file file="$dir/nbdkit.img" &
pids+=($!)
fallocate -l "$size" "$dir/nbdkit2.img"
nbdkit --foreground --port 10930 --ipaddr 127.0.0.1 --exit-with-parent file file="$dir/nbdkit2.img" &
pids+=($!)
mkdir -p "$dir/single"
fallocate -l "$size" "$dir/single/vol0.img"
cat > "$dir/single/tandem.toml" <<TOML
[cluster]
name = "single"
state-dir = "$dir/single"

[[node]]
name = "a"
address = "127.0.0.1"
nbd-listen = ["127.0.0.1:10932"]

[[volume]]
name = "vol0"
backing = "$dir/single/vol0.img"
TOML
"${near[@]}" "$tandem" agent --config "$dir/single/tandem.toml" --node a --log-level warning &
pids+=($!)

# qemu-storage-daemon mirrors: source served on EXPORT_PORT, target an nbdkit on TARGET_PORT, placed
# like a pair's primary and secondary.
start_mirror() { # NAME COPY_MODE TARGET_PORT EXPORT_PORT
  mkdir -p "$dir/$1"
  fallocate -l "$size" "$dir/$1/source.img"
  fallocate -l "$size" "$dir/$1/target.img"
  local far=()
  [ -n "$far_cpu" ] && far=(taskset -c "$far_cpu")
  "${far[@]}" nbdkit --foreground --port "$3" --ipaddr 127.0.0.1 --exit-with-parent file file="$dir/$1/target.img" &
  pids+=($!)
  for _ in $(seq 1 100); do nbdinfo --size "nbd://127.0.0.1:$3/" >/dev/null 2>&1 && break; sleep 0.1; done
  "${near[@]}" qemu-storage-daemon \
    --blockdev driver=file,node-name=src-file,filename="$dir/$1/source.img" \
    --blockdev driver=raw,node-name=src,file=src-file \
    --blockdev driver=nbd,node-name=tgt,server.type=inet,server.host=127.0.0.1,server.port="$3" \
    --nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$4" \
    --export type=nbd,id=export0,node-name=src,name=vol0,writable=on \
    --chardev socket,id=qmp,path="$dir/$1/qmp.sock",server=on,wait=off --monitor chardev=qmp \
    >"$dir/$1/qsd.log" 2>&1 &
  pids+=($!)
  python3 "$top/benchmarks/qemu_mirror.py" start "$dir/$1/qmp.sock" "$2"
}
start_mirror mirrorc write-blocking 10961 10962
start_mirror mirrora background 10971 10972

pair_config pairc C 10941 10942 10943 10944
pair_config paira A 10951 10952 10953 10954
cluster_extra="peer-tls = \"on\"
tls-dir = \"$dir/tls\"" pair_config pairt C 10981 10982 10983 10984
"$tandem" init --output "$dir/tls/unused.toml" --secret "$dir/tls/unused.secret" --tls-dir "$dir/tls" >/dev/null
for node in a b; do "$tandem" cert issue "$node" -c "$dir/pairt/tandem.toml" >/dev/null; done
for cluster in pairc paira pairt; do
  pids+=("$(start_agent "$cluster" a "$near_cpu")")
  pids+=("$(start_agent "$cluster" b "$far_cpu")")
  wait_for_socket "$cluster" a
  wait_for_socket "$cluster" b
  sleep 0.5
  "$tandem" volume primary vol0 --config "$dir/$cluster/tandem.toml" --node a >/dev/null
  wait_in_sync "$cluster"
done
full_seconds=$(field pairc a lastResync seconds)
# 4 KiB random writes on the cache as protocol C's initial full sync left it (the source's last
# cache sweep runs a second after the sync): compared below with the same figure settled.
sleep 2
after_sync=$(keep_cache=yes measure nbd://127.0.0.1:10943/vol0 randwrite 4k 16 iops)
for uri in nbd://127.0.0.1:10930/ nbd://127.0.0.1:10931/ nbd://127.0.0.1:10932/vol0; do
  for _ in $(seq 1 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
done


echo "runtime ${runtime}s per figure after 2s ramp; volumes $size, preallocated; $placement;" \
  "every backing file written back and dropped from the page cache before each figure"
# measure_two RW BS DEPTH METRIC: fio against both nbdkit servers at once; prints the mean of the two.
measure_two() {
  settle
  local jobs=()
  for port in 10930 10931; do
    fio --name=bench --ioengine=nbd --uri="nbd://127.0.0.1:$port/" --rw="$1" --bs="$2" --iodepth="$3" \
      --size="$size" --time_based --runtime="$runtime" --ramp_time=2 --output-format=json \
      --output="$dir/fio-$port.json" >/dev/null 2>&1 &
    jobs+=($!)
  done
  wait "${jobs[@]}"
  python3 - "$4" "$dir/fio-10930.json" "$dir/fio-10931.json" <<'PY'
import json, sys
figures = []
for path in sys.argv[2:]:
    job = json.load(open(path))["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    figures.append(side["bw_bytes"] / 1048576 if sys.argv[1] == "bw" else side["iops"])
print(sum(figures) / len(figures))
PY
}

printf '%-20s %12s %12s %8s %12s %8s %12s %8s %12s %8s\n' workload nbdkit single ratio "2x nbdkit" ratio \
  "protocol C" ratio "protocol A" ratio
echo "  (each ratio is to nbdkit; the line below a row: qemu's mirrors, protocol C to write-blocking, A to background)"
for _ in $(seq 1 "$rounds"); do
for workload in "seq-write-1M-qd8 write 1M 8 bw MiB/s" "rand-write-4K-qd16 randwrite 4k 16 iops IOPS"; do
  read -r name rw bs depth metric unit <<<"$workload"
  n=$(measure nbd://127.0.0.1:10931/ "$rw" "$bs" "$depth" "$metric")
  s=$(measure nbd://127.0.0.1:10932/vol0 "$rw" "$bs" "$depth" "$metric")
  t=0
  [ "$split" = no ] && t=$(measure_two "$rw" "$bs" "$depth" "$metric")
  c=$(measure nbd://127.0.0.1:10943/vol0 "$rw" "$bs" "$depth" "$metric")
  ct=$(measure nbd://127.0.0.1:10983/vol0 "$rw" "$bs" "$depth" "$metric")
  a=$(measure nbd://127.0.0.1:10953/vol0 "$rw" "$bs" "$depth" "$metric")
  qc=$(measure nbd://127.0.0.1:10962/vol0 "$rw" "$bs" "$depth" "$metric")
  qa=$(measure nbd://127.0.0.1:10972/vol0 "$rw" "$bs" "$depth" "$metric")
  # A mirror that failed or fell out of ready during its run did not do the replicated work.
  for mirror in mirrorc mirrora; do
    python3 "$top/benchmarks/qemu_mirror.py" check "$dir/$mirror/qmp.sock" ||
      { echo "$mirror: the figure above is not a replicated one" >&2; exit 1; }
  done
  python3 -c "
n, s, t, c, a, qc, qa = $n, $s, $t, $c, $a, $qc, $qa
u = '$unit'[:4]
two = '%8.0f %-4s %5.2f' % (t, u, t/n) if t else '%8s %-4s %5s' % ('-', '', '-')
print('%-20s %8.0f %-4s %8.0f %-4s %5.2f %s %8.0f %-4s %5.2f %8.0f %-4s %5.2f' % ('$name', n, u, s, u, s/n, two, c, u, c/n, a, u, a/n))
print('  qemu mirror: write-blocking %.0f %s (%.2f of nbdkit; protocol C %.2fx it), background %.0f %s (%.2f; protocol A %.2fx it)'
      % (qc, u, qc/n, c/qc, qa, u, qa/n, a/qa))
print('  protocol C, peer link over mutual TLS: %.0f %s, %.2f of protocol C in clear' % ($ct, u, $ct/c))
with open('$dir/ratios', 'a') as f: print('$name', s/n, t/n, c/n, a/n, c/qc, a/qa, $ct/c, file=f)"
  # A protocol A pair that fell behind resyncs after its run: let it finish before the next figure.
  behind=$(field paira a outOfSyncBytes)
  caught_up_from=$(date +%s.%N)
  wait_in_sync paira
  python3 -c "print('  protocol A: %d bytes out of sync when its run ended, in sync %.1f s later' % ($behind, $(date +%s.%N) - $caught_up_from))"
done
done
# The mirrors did the work they were timed for: each target ends identical to its source.
for mirror in mirrorc mirrora; do
  python3 "$top/benchmarks/qemu_mirror.py" check "$dir/$mirror/qmp.sock"
  cmp -s "$dir/$mirror/source.img" "$dir/$mirror/target.img" ||
    { echo "$mirror: target differs from source" >&2; exit 1; }
done
echo "qemu mirrors: each target identical to its source after the runs"
if [ "$rounds" -gt 1 ]; then
  # The median of each ratio over the rounds: one round's nbdkit figure can be off by half.
  python3 - "$dir/ratios" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, *ratios = line.split()
    rows.setdefault(name, []).append([float(r) for r in ratios])
for name, rounds in rows.items():
    s, t, c, a, qc, qa, tls = (statistics.median(column) for column in zip(*rounds))
    two = '%.2f' % t if t else '-'
    print('%-20s median of %d rounds: single %.2f, 2x nbdkit %s, protocol C %.2f, protocol A %.2f;'
          ' protocol C / qemu write-blocking %.2f, protocol A / qemu background %.2f; C over TLS / C %.2f'
          % (name, len(rounds), s, two, c, a, qc, qa, tls))
PY
fi

python3 -c "
after, settled, nbdkit = $after_sync, $c, $n
print('protocol C 4 KiB random writes right after the full sync, cache as the sync left it: %.0f IOPS,'
      ' %.2f of the settled figure, %.2f of nbdkit' % (after, after / settled, after / nbdkit))"

# Resync of 1% against the full sync of the same volume, three times (a partial resync takes a few
# tens of milliseconds, and one figure of that size moves with whatever else the machine does).
bytes=$(python3 -c "import sys; s='$size'; m={'G':1<<30,'M':1<<20}; print(int(s[:-1])*m[s[-1]])")
dirty=$(( (bytes / 100 + 65535) / 65536 * 65536 ))
partials=()
for attempt in 1 2 3; do
  wait_in_sync pairc
  kill "$(pgrep -f "pairc/tandem.toml --node b")"
  for _ in $(seq 1 100); do [ "$(field pairc a connection)" = connecting ] && break; sleep 0.1; done
  fio --name=dirty --ioengine=nbd --uri=nbd://127.0.0.1:10943/vol0 --rw=randwrite --bs=64k --iodepth=8 \
    --size="$size" --io_size="$dirty" --randrepeat=0 >/dev/null 2>&1
  # Like the initial full sync, the resync then runs with no client writing (for half a second after a
  # client's last write a resync keeps to resync-min-rate, 64 MiB/s, which would time that instead)
  # and with nothing left for the kernel to write back (the table's runs leave gigabytes dirty).
  sleep 1
  sync
  pids+=("$(start_agent pairc b "$far_cpu")")
  wait_for_socket pairc b
  wait_in_sync pairc
  partial=$(field pairc a lastResync seconds)
  moved=$(field pairc b resyncedBytesTotal)
  partials+=("$partial")
  python3 -c "
full, partial = $full_seconds, $partial
print('resync %d: full sync %.3f s; after %d bytes dirtied, resync moved %d bytes in %.3f s (%.1f%% of the full sync)' % ($attempt, full, $dirty, $moved, partial, partial / full * 100))"
done
python3 -c "
import statistics
full, partials = $full_seconds, [$(IFS=,; echo "${partials[*]}")]
median = statistics.median(partials)
print('resync median: %.3f s, %.1f%% of the full sync (target at most 5%%)' % (median, median / full * 100))"
