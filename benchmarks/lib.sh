# Shared by the benchmark scripts; sourced, not run.

# require_tools: stops with what to install when fio, nbdkit, nbdinfo or python3 is missing.
require_tools() {
  for tool in fio nbdkit nbdinfo python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install fio nbdkit libnbd-bin)" >&2; exit 1; }
  done
}

# build_tandem TOP: builds the release tandem and sets $tandem to it, unless $tandem is set already.
build_tandem() {
  if [ -z "${tandem:-}" ]; then
    swift build -c release --package-path "$1" --product tandem >&2
    tandem="$1/.build/release/tandem"
  fi
}

# measure URI RW BS DEPTH METRIC: one fio run with the nbd engine; prints MiB/s (METRIC=bw) or IOPS.
# Reads $size, $runtime, $dir and, if set, $client_cpus (fio's --cpus_allowed). Settles the page
# cache first unless $keep_cache is set.
measure() {
  [ -n "${keep_cache:-}" ] || settle
  # shellcheck disable=SC2086
  fio --name=bench --ioengine=nbd ${client_cpus:-} --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size="$size" \
    --time_based --runtime="$runtime" --ramp_time=2 --output-format=json --output="$dir/fio.json" >/dev/null 2>&1
  python3 - "$5" "$dir/fio.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[2]))["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
print(side["bw_bytes"] / 1048576 if sys.argv[1] == "bw" else side["iops"])
PY
}

# settle: writes back every backing file under $dir and drops it from the page cache, so every
# server starts its measurement from the same cache state. (Which pages are cached, and in folios of
# which size, moves 4 KiB random-write figures by a factor of two or more: a file last read in large
# readahead folios costs far more per 4 KiB write than one populated by small writes.)
settle() {
  python3 - "$dir" <<'PY'
import os, sys
for root, _, names in os.walk(sys.argv[1]):
    for name in names:
        if name.endswith(".img"):
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
PY
}

# The functions below read $dir, $size and $tandem.

# pair_config CLUSTER PROTOCOL PORT_A PORT_B NBD_A NBD_B [EXTRA]: a two-node cluster on loopback
# under $dir/CLUSTER, volumes of $size preallocated; EXTRA lines go into its [[volume]] table.
pair_config() {
  mkdir -p "$dir/$1/a" "$dir/$1/b"
  fallocate -l "$size" "$dir/$1/a/vol0.img"
  fallocate -l "$size" "$dir/$1/b/vol0.img"
  cat > "$dir/$1/tandem.toml" <<TOML
[cluster]
name = "$1"
secret-file = "$dir/secret"
state-dir = "$dir/$1/{node}"
${cluster_extra:-}

[[node]]
name = "a"
address = "127.0.0.1"
port = $3
nbd-listen = ["127.0.0.1:$5"]

[[node]]
name = "b"
address = "127.0.0.1"
port = $4
nbd-listen = ["127.0.0.1:$6"]

[[volume]]
name = "vol0"
protocol = "$2"
backing = "$dir/$1/{node}/vol0.img"
${7:-}
TOML
}

start_agent() { # CLUSTER NODE [CPUS]: CPUS (a taskset list) pins the agent and every thread it starts
  local pin=()
  [ -n "${3:-}" ] && pin=(taskset -c "$3")
  "${pin[@]}" "$tandem" agent --config "$dir/$1/tandem.toml" --node "$2" --log-level warning >/dev/null 2>>"$dir/$1/$2.log" &
  echo $!
}

field() { # CLUSTER NODE KEY [SUBKEY]
  "$tandem" volume status --json --config "$dir/$1/tandem.toml" --node "$2" 2>/dev/null |
    python3 -c 'import json,sys
v=json.load(sys.stdin)["volumes"][0]
value=v.get(sys.argv[1])
if len(sys.argv)>2 and isinstance(value, dict): value=value.get(sys.argv[2])
print(value)' "${@:3}"
}

wait_in_sync() { # CLUSTER
  for _ in $(seq 1 3000); do
    if [ "$(field "$1" a connection)" = connected ] && [ "$(field "$1" b connection)" = connected ] &&
       [ "$(field "$1" b disk)" = upToDate ] && [ "$(field "$1" a outOfSyncBytes)" = 0 ]; then return 0; fi
    sleep 0.1
  done
  echo "cluster $1 never got in sync" >&2; exit 1
}

wait_for_socket() { # CLUSTER NODE
  for _ in $(seq 1 200); do [ -S "$dir/$1/$2/$2.control" ] && return 0; sleep 0.05; done
  echo "agent $2 of $1 did not start" >&2; exit 1
}

# stop_and_remove PID...: ends the servers and, once they are gone, removes $dir. (Agents started
# through start_agent are not this shell's children, so `wait` does not wait for them.)
stop_and_remove() {
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
