#!/usr/bin/env bash
# A large push over a slow, steady link lands: the test
# `a_large_push_over_a_slow_steady_link_lands` with SIZE megabytes of
# incompressible files pushed through a proxy that forwards RATE bytes a
# second, against a server that requires a quarter of that rate. CI runs it
# with 4 MB at 1 MiB/s.
#
#   bash bench/slow_push.sh [SIZE_MB] [RATE_BYTES_PER_SECOND]
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTODY_SLOW_PUSH_MB="${1:-200}" CUSTODY_SLOW_PUSH_RATE="${2:-2097152}" \
  cargo nextest run -p custody-cli --test connections --no-capture \
  -E 'test(a_large_push_over_a_slow_steady_link_lands)' 2>&1 | grep -E "pushed|PASS|FAIL|panicked"
