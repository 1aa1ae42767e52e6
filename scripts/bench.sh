#!/usr/bin/env bash
# Benchmarks: placeholder until the benchmark suite lands.
set -euo pipefail
echo "bench: not yet implemented" >&2
exit 1
