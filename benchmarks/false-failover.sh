#!/usr/bin/env bash
# No false failover under CPU load: starts `tandem lab` (two agents and a witness, default timing),
# waits until it is in sync, loads both CPU cores with stress-ng for the given time, and reports
# whether the epoch changed (any promotion or step-down is a false failover: nothing failed).
#
#   benchmarks/false-failover.sh [--seconds 600]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
[ "${1:-}" = "--seconds" ] && seconds="$2"
command -v stress-ng >/dev/null || { echo "stress-ng is missing (apt-get install stress-ng)" >&2; exit 1; }
swift build -c release >/dev/null
bin=$(swift build -c release --show-bin-path)/tandem
dir=$(mktemp -d)
"$bin" lab --directory "$dir" --size 64MiB >"$dir/lab.out" 2>&1 &
lab=$!
trap 'kill -INT $lab 2>/dev/null; wait $lab 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 600); do grep -q "in sync" "$dir/lab.out" && break; sleep 0.2; done
epoch() { "$bin" status --json --config "$dir/tandem.toml" --node "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster"]["epoch"])'; }
before_a=$(epoch lab-a); before_b=$(epoch lab-b)
echo "in sync; epochs a=$before_a b=$before_b; loading 2 cores with stress-ng for ${seconds}s"
stress-ng --cpu 2 --timeout "${seconds}s" --quiet
after_a=$(epoch lab-a); after_b=$(epoch lab-b)
changes=$(grep -hcE "asks for votes|stepped down|HA reset" "$dir/lab-a.log" "$dir/lab-b.log" | paste -sd+ | bc)
echo "after: epochs a=$after_a b=$after_b; election or step-down lines in the logs: $changes (1 is the start-up election)"
if [ "$before_a" = "$after_a" ] && [ "$before_b" = "$after_b" ]; then
  echo "no false failover in ${seconds}s of full CPU load"
else
  echo "FALSE FAILOVER: the epoch changed under load"; exit 1
fi
