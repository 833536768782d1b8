#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, when missing. Sourced by demo.sh and
# test.sh; safe to run again (it does nothing when everything is there).
set -euo pipefail

required_packages=(liblwip-dev libnuma-dev libpcap-dev pkg-config iproute2 iputils-ping netcat-openbsd socat tcpdump tshark python3 curl procps util-linux gcc libc6-dev strace iperf3 sockperf python3-prometheus-client)

missing=()
for pkg in "${required_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null; then
        apt_get=(sudo apt-get)
    else
        echo "setup: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${apt_get[@]}" update -qq
    "${apt_get[@]}" install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null; then
    for dir in /opt/swift/usr/bin /usr/share/swift/usr/bin; do
        [ -x "$dir/swift" ] && export PATH="$dir:$PATH"
    done
fi
command -v swift >/dev/null || { echo "setup: the Swift 6 toolchain is not on PATH" >&2; exit 1; }
