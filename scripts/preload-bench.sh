#!/usr/bin/env bash
# Unmodified programs on the kernel's loopback and on the stack (both ends under the preload
# library), in one run: sockperf ping-pong (UDP, TCP, 64 B: half round trip p50) and iperf3 (TCP,
# 1 and 4 streams: throughput). Prints a table with the ratios stack/kernel. Then the library's own
# cost: socket-bench with its libc side under the library (its "kernel" column is then the stack
# through the preload library, its "stack" column the same stack through sko_*). Uses the release
# build (swift build -c release first) and a socket-server of its own. Every run is bounded.
#   scripts/preload-bench.sh [SECONDS]   (default 5 per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
bin=.build/release
for f in socket-server socket-offload-run libsocket-offload-preload.so libSocketClientDynamic.so socket-bench; do
    [ -e "$bin/$f" ] || { echo "preload-bench: $bin/$f missing (swift build -c release)" >&2; exit 1; }
done
command -v sockperf >/dev/null && command -v iperf3 >/dev/null || { echo "preload-bench: needs sockperf and iperf3 (scripts/setup.sh)" >&2; exit 1; }
work=$(mktemp -d)
sock=$work/server.sock
"$bin/socket-server" --socket-path "$sock" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null; pkill -f "sockperf server -i 127.0.0.1 -p 1123" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
run() { if [ "$1" = stack ]; then shift; "$bin/socket-offload-run" --socket-path "$sock" -- "$@"; else shift; "$@"; fi; }

pingpong() { # side proto port → p50 half round trip in µs
    local side=$1 proto=$2 port=$3
    run "$side" timeout $((seconds + 10)) sockperf server -i 127.0.0.1 -p "$port" $proto >/dev/null 2>&1 &
    local s=$!
    sleep 1
    run "$side" timeout $((seconds + 10)) sockperf ping-pong -i 127.0.0.1 -p "$port" -t "$seconds" -m 64 $proto 2>&1 |
        awk '/percentile 50.000/ {print $NF}'
    kill $s 2>/dev/null; wait $s 2>/dev/null || true
}

stream() { # side streams port → Gbit/s
    local side=$1 streams=$2 port=$3
    run "$side" timeout $((seconds + 15)) iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    local s=$!
    sleep 1
    run "$side" timeout $((seconds + 15)) iperf3 -c 127.0.0.1 -p "$port" -t "$seconds" -P "$streams" -J 2>/dev/null |
        python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
    wait $s 2>/dev/null || true
}

ratio() { python3 -c "print('%.2f' % ($2 / $1))" 2>/dev/null || echo "?"; }

echo "| workload | kernel | stack (preload) | stack/kernel |"
echo "|---|---:|---:|---:|"
for proto in udp tcp; do
    flag=$([ $proto = tcp ] && echo --tcp || true)
    k=$(pingpong kernel "$flag" 11231); s=$(pingpong stack "$flag" 11232)
    echo "| sockperf ping-pong $proto 64 B, half RTT p50 (µs) | $k | $s | $(ratio "$k" "$s") |"
done
for n in 1 4; do
    k=$(stream kernel $n 11233); s=$(stream stack $n 11234)
    echo "| iperf3 TCP, $n stream(s) (Gbit/s) | $k | $s | $(ratio "$k" "$s") |"
done

echo
echo "The library's own cost: socket-bench's libc calls through the preload library (\"kernel\" column)"
echo "against its sko_* calls (\"stack\" column), both on the stack:"
"$bin/socket-offload-run" --socket-path "$sock" -- timeout 600 "$bin/socket-bench" \
    --only tcp-stream,tcp-pingpong,udp-pingpong,tcp-connect-rate --repetitions 3 2>/dev/null |
    grep '^| ' | grep -v 'process-vm\]\|shared-memory\]'
