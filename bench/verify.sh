#!/usr/bin/env bash
# Offline verification: `custody verify` of a five-step chain (commit,
# change, build, staging, production; four signed envelopes, each with its
# ledger event and inclusion proof in a log of 10,000 events, and a signed
# checkpoint) against `in-toto-verify` of an equivalent three-step layout
# (change, build, deploy; a signed layout and three signed links), both as
# command-line processes (hyperfine) and in-process (library calls).
#
#   bash bench/verify.sh [RUNS]
#
# Needs hyperfine and Python's in-toto (`pip install in-toto`).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50}"
target="${CARGO_TARGET_DIR:-target}"

cargo build --release -q -p custody-cli
cargo build --release -q -p custody-formats --example verify_bench
custody="$target/release/custody"
fixture="$target/release/examples/verify_bench"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$fixture" write "$work/custody"
python3 bench/intoto.py write "$work/intoto"

# Both verify before they are timed.
"$custody" verify "$work/custody/bundle.json" --trust "$work/custody/trust.json" >/dev/null
(cd "$work/intoto" && in-toto-verify --layout root.layout --verification-keys owner.pub)

echo "== as command-line processes ($runs runs each)"
hyperfine -N --warmup 3 --runs "$runs" --export-json "$work/process.json" \
  -n "custody verify" "$custody verify $work/custody/bundle.json --trust $work/custody/trust.json" \
  -n "in-toto-verify" "in-toto-verify --layout $work/intoto/root.layout --verification-keys $work/intoto/owner.pub --link-dir $work/intoto"

echo "== in-process"
custody_inproc="$("$fixture" time "$work/custody" 2000)"
intoto_inproc="$(python3 bench/intoto.py time "$work/intoto" 300)"
echo "custody (formats::verify::verify, parse included): $custody_inproc"
echo "in-toto (verifylib.in_toto_verify, loads included): $intoto_inproc"

python3 - "$work/process.json" "$custody_inproc" "$intoto_inproc" <<'PY'
import json, sys
process = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
c, i = process["custody verify"], process["in-toto-verify"]
ci, ii = json.loads(sys.argv[2])["mean_ms"], json.loads(sys.argv[3])["mean_ms"]
print()
print("| | custody verify (5 steps) | in-toto-verify (3 steps) | speed-up | target |")
print("|---|---|---|---|---|")
print(f"| command-line process, mean ± sd | {c['mean']*1000:.2f} ± {c['stddev']*1000:.2f} ms | "
      f"{i['mean']*1000:.1f} ± {i['stddev']*1000:.1f} ms | {i['mean']/c['mean']:.0f}× | ≥ 20× |")
print(f"| in-process, mean | {ci:.3f} ms | {ii:.3f} ms | {ii/ci:.1f}× | ≥ 2× |")
PY
