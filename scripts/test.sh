#!/usr/bin/env bash
# Runs the whole test suite: installs missing Debian packages, builds everything (library, server,
# examples, test helpers), runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

swift build --build-tests
swift test --skip-build "$@"
