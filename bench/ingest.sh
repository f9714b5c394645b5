#!/usr/bin/env bash
# Ingest of a 1 GiB artifact into the local blob store (hashed with sha256,
# stored, fsynced), against the same work done by standard tools in the same
# run: `tee COPY < FILE | openssl dgst -sha256` then `sync`.
#
#   bash bench/ingest.sh [runs] [size in MiB]
#
# The files live in a temporary directory inside the repository, so on its
# disk (not /tmp, which may be memory). Set BENCH_DIR to measure elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
mib="${2:-1024}"
cargo build --release --quiet -p custody-blobs --example ingest
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$(pwd)/$target" ;; esac
bin="$target/release/examples/ingest"

work=$(mktemp -d -p "${BENCH_DIR:-$(pwd)}" .bench-ingest.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "writing a ${mib} MiB file of random bytes in $work ..." >&2
head -c "$((mib << 20))" /dev/urandom >"$work/artifact"
sync

now() { date +%s.%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
tools=() custody=()
for i in $(seq 1 "$runs"); do
  rm -rf "$work/copy" "$work/store"
  sync
  start=$(now)
  tee "$work/copy" <"$work/artifact" | openssl dgst -sha256 >/dev/null
  sync
  tools+=("$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')")

  rm -rf "$work/copy" "$work/store"
  sync
  start=$(now)
  "$bin" "$work/artifact" "$work/store" >/dev/null
  custody+=("$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')")
  echo "run $i: tee | openssl dgst; sync ${tools[-1]}s, custody ingest ${custody[-1]}s" >&2
done

mt=$(printf '%s\n' "${tools[@]}" | median)
mc=$(printf '%s\n' "${custody[@]}" | median)
echo "ingest of ${mib} MiB (median of $runs): tee | openssl dgst -sha256; sync ${mt}s, custody ${mc}s," \
  "ratio $(awk -v a="$mc" -v b="$mt" 'BEGIN { printf "%.2f", a / b }')  [${tools[*]} | ${custody[*]}]"

# Reading back: the re-hashing reader over the stored blob, against
# `openssl dgst -sha256` over the same bytes (both from the page cache).
rm -rf "$work/store"
"$bin" "$work/artifact" "$work/store" --verify | sed -n 's/^verify \(.*\) in \([0-9.]*\) s.*/\2/p' >"$work/verify"
start=$(now)
openssl dgst -sha256 "$work/artifact" >/dev/null
hash=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
echo "read back of ${mib} MiB, re-hashed: openssl dgst -sha256 ${hash}s, custody verify $(cat "$work/verify")s," \
  "ratio $(awk -v a="$(cat "$work/verify")" -v b="$hash" 'BEGIN { printf "%.2f", a / b }')"
