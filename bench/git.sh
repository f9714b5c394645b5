#!/usr/bin/env bash
# Clone and push of a generated repository (10,000 commits, about 53 MB of
# incompressible content) through custody, against the same operations
# through plain `git daemon` with the same repository settings, in one run.
#
#   bash bench/git.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
cargo build --release --quiet
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/custody"

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 HOME="$work/home"
mkdir -p "$HOME"

echo "generating the repository..." >&2
git init -q -b main "$work/source"
python3 - "$work/source" <<'PY'
import os, subprocess, sys
source = sys.argv[1]
proc = subprocess.Popen(["git", "-C", source, "fast-import", "--quiet"], stdin=subprocess.PIPE)
out = proc.stdin
when = 1_700_000_000
for i in range(1, 10_001):
    data = os.urandom(5_300)
    out.write(b"blob\nmark :%d\ndata %d\n" % (i, len(data)) + data + b"\n")
    message = b"commit %d\n" % i
    out.write(b"commit refs/heads/main\n")
    out.write(b"author Alice <alice@example.com> %d +0000\n" % (when + i))
    out.write(b"committer Alice <alice@example.com> %d +0000\n" % (when + i))
    out.write(b"data %d\n" % len(message) + message)
    out.write(b"M 100644 :%d files/f%d.bin\n\n" % (i, i % 500))
out.close()
sys.exit(proc.wait())
PY
git -C "$work/source" gc -q --aggressive --prune=now 2>/dev/null || git -C "$work/source" repack -adq
size=$(du -sm "$work/source/.git" | cut -f1)
commits=$(git -C "$work/source" rev-list --count main)
echo "repository: $commits commits, ${size} MB packed" >&2

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Plain git daemon over a bare repository with the same settings.
plain_base="$work/plain"
port_plain=$((20000 + RANDOM % 20000))
mkdir -p "$plain_base"
git daemon --reuseaddr --base-path="$plain_base" --export-all --enable=receive-pack \
  --listen=127.0.0.1 --port="$port_plain" "$plain_base" >/dev/null 2>&1 &
pids+=($!)

# custody on its embedded default.
"$bin" init --data-dir "$work/data" --admin root --json >"$work/init.json"
token=$(sed -E 's/.*"token":"([^"]+)".*/\1/' "$work/init.json")
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 1 50); do grep -q '^listening on' "$work/serve.out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/serve.out")
export CUSTODY_SERVER="$url" CUSTODY_TOKEN="$token" CUSTODY_CONFIG_DIR="$work/cfg"
sleep 0.5

push_custody=(); clone_custody=(); push_plain=(); clone_plain=()
for run in $(seq 1 "$runs"); do
  name="bench$run"
  "$bin" project create "$name" >/dev/null
  "$bin" project member add "$name" root --role write >/dev/null
  custody_url="http://root:$token@${url#http://}/$name.git"

  git init -q --bare -b main "$plain_base/$name.git"
  git -C "$plain_base/$name.git" config receive.fsckObjects true
  git -C "$plain_base/$name.git" config transfer.fsckObjects true
  git -C "$plain_base/$name.git" config uploadpack.hideRefs refs/custody
  git -C "$plain_base/$name.git" config receive.hideRefs refs/custody
  plain_url="git://127.0.0.1:$port_plain/$name.git"

  # main is protected in custody, so both receive the history as a feature branch.
  t0=$(now); git -C "$work/source" push -q "$plain_url" main:refs/heads/feature; t1=$(now)
  push_plain+=("$(elapsed "$t0" "$t1")")
  t0=$(now); git -C "$work/source" push -q "$custody_url" main:refs/heads/feature 2>/dev/null; t1=$(now)
  push_custody+=("$(elapsed "$t0" "$t1")")

  t0=$(now); git clone -q --bare "$plain_url" "$work/clone-plain-$run"; t1=$(now)
  clone_plain+=("$(elapsed "$t0" "$t1")")
  t0=$(now); git clone -q --bare "$custody_url" "$work/clone-custody-$run"; t1=$(now)
  clone_custody+=("$(elapsed "$t0" "$t1")")
  test "$(git -C "$work/clone-custody-$run" rev-parse feature)" = "$(git -C "$work/source" rev-parse main)"
done

recorded=$("$bin" project commit bench1 "$(git -C "$work/source" rev-parse main)" --json | sed -E 's/.*"pusher":"([^"]+)".*/\1/')
mp=$(printf '%s\n' "${push_plain[@]}" | median); mc=$(printf '%s\n' "${push_custody[@]}" | median)
cp=$(printf '%s\n' "${clone_plain[@]}" | median); cc=$(printf '%s\n' "${clone_custody[@]}" | median)
echo "repository:      $commits commits, ${size} MB"
echo "push  (median of $runs): git daemon ${mp}s, custody ${mc}s, ratio $(awk -v a="$mc" -v b="$mp" 'BEGIN { printf "%.2f", a / b }')  [${push_plain[*]} | ${push_custody[*]}]"
echo "clone (median of $runs): git daemon ${cp}s, custody ${cc}s, ratio $(awk -v a="$cc" -v b="$cp" 'BEGIN { printf "%.2f", a / b }')  [${clone_plain[*]} | ${clone_custody[*]}]"
echo "push log names the pusher of the last commit: $recorded"
