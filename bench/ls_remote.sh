#!/usr/bin/env bash
# `git ls-remote` and an up-to-date `git fetch` over protocol v2 through
# custody, against `git http-backend` serving the same repository (as a CGI
# behind Python's http.server), in the same run: the mean of RUNS of each.
#
#   bash bench/ls_remote.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh
runs="${1:-50}"

src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
for i in $(seq 1 20); do echo "$i" > "$src/f$i.txt"; git -C "$src" add -A; git -C "$src" commit -q -m "c$i"; done
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
repo="$work/data/repositories/bench.git"

# The anchor: the same repository through git http-backend.
mkdir -p "$work/cgi/cgi-bin"
printf '#!/bin/sh\nexec git http-backend\n' > "$work/cgi/cgi-bin/git"
chmod +x "$work/cgi/cgi-bin/git"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/cgi" && GIT_PROJECT_ROOT="$work/data/repositories" GIT_HTTP_EXPORT_ALL=1 \
  python3 -W ignore -m http.server --cgi --bind 127.0.0.1 "$port" >/dev/null 2>&1) &
anchor_pid=$!
trap 'kill $anchor_pid 2>/dev/null || true; cleanup' EXIT
sleep 1
anchor="http://127.0.0.1:$port/cgi-bin/git/bench.git"

git clone -q "$remote" "$work/through-custody"
git clone -q "$anchor" "$work/through-backend"

mean_ms() {
  local start end
  start=$(date +%s%N)
  for _ in $(seq 1 "$runs"); do "$@" >/dev/null; done
  end=$(date +%s%N)
  echo $(( (end - start) / runs / 1000000 ))
}
v2=(-c protocol.version=2)
c_ls=$(mean_ms git "${v2[@]}" ls-remote "$remote")
a_ls=$(mean_ms git "${v2[@]}" ls-remote "$anchor")
c_fetch=$(mean_ms git "${v2[@]}" -C "$work/through-custody" fetch -q origin)
a_fetch=$(mean_ms git "${v2[@]}" -C "$work/through-backend" fetch -q origin)
echo "git ls-remote (v2): custody ${c_ls} ms, http-backend ${a_ls} ms, ratio $(python3 -c "print(round($c_ls/max($a_ls,1),2))")"
echo "git fetch, up to date (v2): custody ${c_fetch} ms, http-backend ${a_fetch} ms, ratio $(python3 -c "print(round($c_fetch/max($a_fetch,1),2))")"
