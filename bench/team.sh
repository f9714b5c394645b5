# What the bench scripts share: a release build of custody serving a fresh
# SQLite data directory in a temporary folder (or PostgreSQL with
# BACKEND=postgres), the admin's token, and the
# project `bench` with alice and bob as writers. Source it from bench/*.sh:
#
#   . bench/team.sh
# then use $bin, $work, $url, $admin, $alice, $bob and `c` (custody as admin).
# SERVE_ARGS adds arguments to `custody serve`; processes whose ids a script
# appends to `extra_pids` are stopped with the server.
cargo build --release --quiet
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
bin="$target_dir/release/custody"
work=$(mktemp -d)
server=""
extra_pids=()
cleanup() {
  for pid in "${extra_pids[@]}" $server; do kill -TERM "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 HOME="$work/home" CUSTODY_CONFIG_DIR="$work/cfg"
mkdir -p "$HOME"

# BACKEND=postgres: a fresh database on the local PostgreSQL instead.
db_args=()
if [ "${BACKEND:-sqlite}" = postgres ]; then
  db_name="custody_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $db_name" >/dev/null
  trap 'cleanup; psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $db_name WITH (FORCE)" >/dev/null' EXIT
  db_args=(--database-url "postgres://postgres@127.0.0.1:5432/$db_name")
fi
CUSTODY_LOG="${CUSTODY_LOG:-warn}" "$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 "${db_args[@]}" ${SERVE_ARGS:-} >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 50); do grep -q '^listening on' "$work/out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/out")
admin=$(sed -n 's/^token: //p' "$work/out")
export CUSTODY_SERVER="$url"
c() { CUSTODY_TOKEN="$admin" "$bin" "$@"; }
token_of() {
  local code
  code=$(c user add "$1" --email "$1@example.com" --json | sed -E 's/.*"invite_code":"([^"]+)".*/\1/')
  "$bin" token redeem "$code" --json | sed -E 's/.*"token":"([^"]+)".*/\1/'
}
c project create bench >/dev/null
alice=$(token_of alice); bob=$(token_of bob)
c project member add bench alice --role write >/dev/null
c project member add bench bob --role write >/dev/null
