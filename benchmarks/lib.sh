# Shared by the benchmark scripts; sourced, not run.

# measure URI RW BS DEPTH METRIC: one fio run with the nbd engine; prints MiB/s (METRIC=bw) or IOPS.
# Reads $size, $runtime, $dir and, if set, $client_cpus (fio's --cpus_allowed).
measure() {
  settle
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
