#!/usr/bin/env bash
# Exact instructions per request, the regression number (benches/README.md):
# `tokun serve` (no config: echo provider, billing ON with the demo key) under
# callgrind; 20 warm-up requests, counters zeroed, N non-streaming requests one
# at a time, a dump, counters zeroed, M streaming requests, a dump.
#
#   benches/callgrind.sh target/release/tokun before [N] [M]
#
# Prints `<tag> dump unary <file> <instructions>` and the same for `stream`;
# divide by N and M. Needs valgrind, curl and python3.
set -euo pipefail
bin=$1
tag=$2
n=${3:-200}
m=${4:-50}
out=${CALLGRIND_OUT:-target/callgrind}
mkdir -p "$out"
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$out/$tag.%p.out" "$bin" serve \
  --listen "127.0.0.1:$port" --data "$dir" >"$out/$tag.stdout" 2>"$out/$tag.stderr" &
pid=$!
for _ in $(seq 1 600); do
  grep -q "listening on" "$out/$tag.stderr" "$out/$tag.stdout" 2>/dev/null && break
  sleep 0.5
done
key=$(grep -ho "sk-tokun-[A-Za-z0-9]*" "$out/$tag.stderr" "$out/$tag.stdout" | head -1)
ask() {
  curl -s -o /dev/null -N -H "Authorization: Bearer $key" -H 'content-type: application/json' \
    -d "{\"model\":\"echo-mini\",\"stream\":$1,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello to tokun, then count to three.\"}]}" \
    "http://127.0.0.1:$port/v1/chat/completions"
}
for _ in $(seq 1 20); do ask false; done
callgrind_control -z "$pid" >/dev/null
for _ in $(seq 1 "$n"); do ask false; done
callgrind_control -d unary "$pid" >/dev/null
callgrind_control -z "$pid" >/dev/null
for _ in $(seq 1 "$m"); do ask true; done
callgrind_control -d stream "$pid" >/dev/null
kill -TERM "$pid"
wait "$pid" || true
for file in "$out/$tag.$pid.out".*; do
  total=$(grep -m1 "^summary:\|^totals:" "$file" | awk '{print $2}')
  part=$(grep -m1 "^desc: Trigger" "$file" | sed 's/.*Trigger: //')
  echo "$tag $part $file $total"
done
rm -rf "$dir"
