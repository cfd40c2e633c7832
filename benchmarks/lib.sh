# Shared by the benchmark scripts; sourced, not run.

# measure URI RW BS DEPTH METRIC: one fio run with the nbd engine; prints MiB/s (METRIC=bw) or IOPS.
# Reads $size, $runtime, $dir and, if set, $client_cpus (fio's --cpus_allowed).
measure() {
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
