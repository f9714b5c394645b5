#!/usr/bin/env bash
# Kills `custody serve` (SIGKILL) at random moments of merges, builds and
# promotions, round after round, on SQLite and PostgreSQL, and checks after
# each restart that nothing is half-done (see `crash_rounds` in
# crates/cli/tests/crash.rs). CI runs 3 rounds per backend as part of the
# tests; this runs as many as asked (50 unless ROUNDS says otherwise).
#
#   scripts/crash.sh            # 50 rounds on each backend
#   ROUNDS=10 scripts/crash.sh  # a shorter run
set -euo pipefail
cd "$(dirname "$0")/.."
export CUSTODY_CRASH_ROUNDS="${ROUNDS:-50}"
exec cargo nextest run -p custody-cli --test crash --no-capture -E 'test(crash_rounds)' "$@"
