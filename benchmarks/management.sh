#!/usr/bin/env bash
# The management plane under load, in one run on one pair (protocol C, on loopback):
#   health-check latency (GET /health/primary on the primary, /health/replica on the secondary,
#     one keep-alive connection each, back to back) while the secondary's initial full resync runs
#     at full speed, and again once the pair is idle;
#   status call latency (GET /v1/status on the control socket, a new connection per call, as the
#     CLI makes them), idle;
#   the primary agent's resident memory before and with 100 event-stream clients connected.
#
#   benchmarks/management.sh [--size SIZE] [--tandem BINARY]
#
# Every agent and the probe share this machine's cores; the probe is Python, so its own cost is in
# every figure (a floor of about 0.1 ms per call here).
set -euo pipefail

size=8G
tandem=
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size=$2; shift 2 ;;
    --tandem) tandem=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benchmarks/lib.sh
. "$top/benchmarks/lib.sh"
require_tools
build_tandem "$top"
dir=$(mktemp -d /var/tmp/tandem-management.XXXXXX)
pids=()
cleanup() { stop_and_remove "${pids[@]}"; }
trap cleanup EXIT
echo "0123456789abcdef0123456789abcdef" > "$dir/secret"
pair_config mgmt C 10971 10972 10973 10974
# Each node answers health checks on a port of its own.
python3 - "$dir/mgmt/tandem.toml" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
text = text.replace('nbd-listen = ["127.0.0.1:10973"]', 'nbd-listen = ["127.0.0.1:10973"]\nhealth-listen = ["127.0.0.1:10975"]')
text = text.replace('nbd-listen = ["127.0.0.1:10974"]', 'nbd-listen = ["127.0.0.1:10974"]\nhealth-listen = ["127.0.0.1:10976"]')
open(path, "w").write(text)
PY
for node in a b; do pids+=("$(start_agent mgmt "$node")"); done
wait_for_socket mgmt a
wait_for_socket mgmt b
sleep 0.5
"$tandem" volume primary vol0 --config "$dir/mgmt/tandem.toml" --node a >/dev/null

python3 - "$dir" "$size" "${pids[0]}" <<'PY'
import http.client, json, os, socket, statistics, sys, time

directory, size, primary_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
control = f"{directory}/mgmt/a/a.control"

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

def status():
    connection = UnixConnection(control)
    connection.request("GET", "/v1/status")
    body = connection.getresponse().read()
    connection.close()
    return json.loads(body)

def resyncing():
    volume = status()["volumes"][0]
    return volume.get("resync") is not None or volume.get("peerDisk") != "upToDate"

def percentiles(samples):
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
    return f"p50 {pick(0.50):.3f} ms  p99 {pick(0.99):.3f} ms  max {samples[-1] * 1000:.3f} ms  ({len(samples)} calls)"

def probe(port, path, until, limit=None):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    samples, codes = [], {}
    while not until() and (limit is None or len(samples) < limit):
        start = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        samples.append(time.perf_counter() - start)
        codes[response.status] = codes.get(response.status, 0) + 1
    return samples, codes

# While the initial full resync runs: primary and replica checks, alternating in slices.
deadline = time.time() + 600
while not resyncing() and time.time() < deadline:
    time.sleep(0.05)
started = time.time()
primary, replica, codes = [], [], {}
checks = 0
while time.time() < deadline:
    checks += 1
    if checks % 20 == 0 and not resyncing():
        break
    s, c = probe(10975, "/health/primary", lambda: False, limit=50)
    primary += s
    for k, v in c.items(): codes[k] = codes.get(k, 0) + v
    s, _ = probe(10976, "/health/replica", lambda: False, limit=10)
    replica += s
seconds = time.time() - started
print(f"resync of {size} ran {seconds:.1f} s during the probe")
print(f"  /health/primary during resync  {percentiles(primary)}  statuses {codes}")
print(f"  /health/replica during resync  {percentiles(replica)}")

idle, _ = probe(10975, "/health/primary", lambda: False, limit=5000)
print(f"  /health/primary idle           {percentiles(idle)}")
calls = []
for _ in range(500):
    start = time.perf_counter()
    status()
    calls.append(time.perf_counter() - start)
print(f"  GET /v1/status (control socket, new connection each) idle  {percentiles(calls)}")

def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss(primary_pid)
streams = []
for _ in range(100):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(control)
    sock.sendall(b"GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
    streams.append(sock)
time.sleep(1)
for sock in streams:
    sock.settimeout(5)
    assert b"200 OK" in sock.recv(4096)
with_streams = rss(primary_pid)
print(f"  primary agent RSS {before / 1024:.1f} MiB idle, {with_streams / 1024:.1f} MiB with 100 event streams "
      f"(+{(with_streams - before) / 100:.1f} KiB per stream)")
for sock in streams:
    sock.close()
PY
