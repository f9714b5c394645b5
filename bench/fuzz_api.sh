#!/usr/bin/env bash
# The long Schemathesis run: every check, the stateful phase, as an admin and
# as a user, EXAMPLES examples per operation (CI runs 3) with a random seed
# (CI uses seed 1). Prints the request counts and the result.
#
#   bash bench/fuzz_api.sh [EXAMPLES]
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTODY_FUZZ_EXAMPLES="${1:-100}" CUSTODY_FUZZ_SEED="${SEED:-$RANDOM$RANDOM}" \
  cargo nextest run -p custody-cli --test api_contract --no-capture 2>&1 |
  grep -E "generated|Seed:|Failures|ST[0-9]{3}|PASS|FAIL|failures|passed in"
