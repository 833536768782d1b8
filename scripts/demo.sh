#!/usr/bin/env bash
# The demo: builds everything (release), starts socket-server with its embedded loopback network,
# runs the UDP and TCP echo examples through it and an unmodified nc pair under the preload library,
# prints their results, and stops the server.
# Exits non-zero if any echo lost or corrupted data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== building (release)"
swift build -c release
bin=$(swift build -c release --show-bin-path)

sock=$(mktemp -u /tmp/socket-server-demo.XXXXXX.sock)
export SOCKET_SERVER_PATH=$sock
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$sock"
}
trap cleanup EXIT

echo "== starting socket-server at $sock"
"$bin/socket-server" --log-level warning &
pids+=($!)
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "socket-server did not start" >&2; exit 1; }

status=0
echo "== UDP echo through the stack"
"$bin/udp-echo-server" --port 7007 > /dev/null &
pids+=($!)
sleep 0.3
for target in 127.0.0.1 ::1; do
    printf '   %-10s ' "$target"
    "$bin/udp-echo-client" "$target" 7007 --count 10000 --size 64 || status=1
done
printf '   %-10s ' "64 KiB"
"$bin/udp-echo-client" 127.0.0.1 7007 --count 1000 --size 65507 || status=1

if [ -x "$bin/tcp-echo-server" ]; then
    echo "== TCP echo through the stack"
    "$bin/tcp-echo-server" --port 7008 > /dev/null &
    pids+=($!)
    sleep 0.3
    printf '   %-10s ' "stream"
    "$bin/tcp-echo-client" 127.0.0.1 7008 --connections 10 --bytes 10M || status=1
    printf '   %-10s ' "ping-pong"
    "$bin/tcp-echo-client" ::1 7008 --connections 1 --bytes 64K --ping-pong || status=1
fi

echo "== unmodified programs on the stack (socket-offload-run: nc to nc, 1 MiB)"
work=$(mktemp -d)
head -c 1048576 /dev/urandom > "$work/sent"
"$bin/socket-offload-run" -- timeout 20 nc -n -l 127.0.0.1 7009 > "$work/received" &
pids+=($!)
sleep 0.5
"$bin/socket-offload-run" -- timeout 20 nc -n -N 127.0.0.1 7009 < "$work/sent" || status=1
wait "${pids[-1]}" || status=1
if cmp -s "$work/sent" "$work/received"; then
    printf '   %-10s bytes=%s same=yes\n' "nc" "$(stat -c %s "$work/received")"
else
    printf '   %-10s bytes=%s same=NO\n' "nc" "$(stat -c %s "$work/received")"
    status=1
fi
rm -rf "$work"

[ $status -eq 0 ] && echo "== demo passed" || echo "== demo FAILED"
exit $status
