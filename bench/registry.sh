#!/usr/bin/env bash
# Pulling a 200 MB image through custody's registry, against reading the
# same blobs from disk, and the latency of a manifest GET; release build on
# SQLite. The build writes a deterministic layout (one 200 MB layer), so the
# same layout is also written here, outside custody, for the anchors:
#
#   - skopeo copying the image from custody by digest, against skopeo
#     copying the same layout from disk (the same client and checks);
#   - curl reading the layer blob through custody (custody re-hashes it as it
#     streams), against openssl hashing the blob file custody stores (and
#     cat reading it);
#   - manifest GETs by digest (keep-alive, a bearer token), against
#     GET /healthz on the same server and connection.
#
#   bash bench/registry.sh [MANIFEST_GETS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v skopeo >/dev/null || { echo "needs skopeo (scripts/setup installs it)"; exit 2; }
. bench/team.sh

src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
mkdir -p "$src/.custody" "$src/scripts"
cat > "$src/.custody/pipeline.toml" <<'TOML'
[review]
approvals = 1
[pipeline]
owners = "platform"
build = "scripts/build.sh"
artifacts = []
timeout = "20m"

[[pipeline.image]]
name = "app"
layout = "dist/app-oci"
TOML
cat > "$src/scripts/build.sh" <<'SH'
#!/bin/sh
set -e
d=dist/app-oci
rm -rf "$d" .tmp && mkdir -p "$d/blobs/sha256" .tmp/root
put() { h=$(sha256sum "$1" | cut -c1-64); s=$(stat -c %s "$1"); mv "$1" "$d/blobs/sha256/$h"; echo "$h $s"; }
yes "custody registry benchmark payload" | head -c 200000000 > .tmp/root/payload
tar --mtime=@0 --owner=0 --group=0 --numeric-owner -cf .tmp/layer.tar -C .tmp/root payload
set -- $(put .tmp/layer.tar); L=$1; LS=$2
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$L" > .tmp/config.json
set -- $(put .tmp/config.json); C=$1; CS=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$C" "$CS" "$L" "$LS" > .tmp/manifest.json
set -- $(put .tmp/manifest.json); M=$1; MS=$2
printf '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"app"}}]}' "$M" "$MS" > "$d/index.json"
rm -rf .tmp
SH
chmod +x "$src/scripts/build.sh"
printf 'dist/\n' > "$src/.gitignore"
git -C "$src" add -A; git -C "$src" commit -q -m base
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"

# One reviewed change, merged: build 1 makes the image.
git -C "$src" checkout -q -b feature
echo "v1" > "$src/version.txt"; git -C "$src" add version.txt; git -C "$src" commit -q -m v1
git -C "$src" push -q "$remote" feature
manifest=$(PYTHONPATH=bench CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench python3 - <<'PY'
import time
from team import call, project
base = f"/api/v1/projects/{project}"
change = call("POST", f"{base}/changes", "alice", {"source": "feature", "title": "v1"})[0]
call("POST", f"{base}/changes/{change['number']}/reviews", "bob", {"verdict": "approve", "head": change["head"]})
call("POST", f"{base}/changes/{change['number']}/merge", "alice", {})
for _ in range(6000):
    build = call("GET", f"{base}/builds/1", "alice")[0]
    if build.get("status") not in (None, "queued", "running"):
        break
    time.sleep(0.1)
assert build["status"] == "succeeded", build
print([a["digest"] for a in build["artifacts"] if a["name"] == "oci/app"][0])
PY
)

# The same layout, written outside custody.
(cd "$src" && sh scripts/build.sh)
layer=$(python3 -c "import json,sys; m=json.load(open('$src/dist/app-oci/blobs/sha256/$manifest')); print(m['layers'][0]['digest'][7:])")
host="${url#http://}"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
seconds() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

pull_custody=(); pull_disk=(); blob_custody=(); blob_disk=(); blob_cat=()
for _ in 1 2 3; do
  rm -rf "$work/pulled" "$work/copied"
  pull_custody+=("$(seconds skopeo copy --src-tls-verify=false --src-creds "alice:$alice" "docker://$host/bench/app@sha256:$manifest" "dir:$work/pulled")")
  pull_disk+=("$(seconds skopeo copy "oci:$src/dist/app-oci:app" "dir:$work/copied")")
  blob_custody+=("$(seconds curl -sf -o /dev/null -H "Authorization: Bearer $alice" "$url/v2/bench/app/blobs/sha256:$layer")")
  blob_disk+=("$(seconds openssl dgst -sha256 "$work/data/blobs/sha256/${layer:0:2}/$layer")")
  blob_cat+=("$(seconds cat "$work/data/blobs/sha256/${layer:0:2}/$layer")")
done
[ -f "$work/pulled/$layer" ] && [ "$(sha256sum "$work/pulled/$layer" | cut -c1-64)" = "$layer" ] || { echo "the pulled layer is not the image's"; exit 1; }
pc=$(printf '%s\n' "${pull_custody[@]}" | median); pd=$(printf '%s\n' "${pull_disk[@]}" | median)
bc_=$(printf '%s\n' "${blob_custody[@]}" | median); bd=$(printf '%s\n' "${blob_disk[@]}" | median)
bcat=$(printf '%s\n' "${blob_cat[@]}" | median)
size=$(stat -c %s "$work/data/blobs/sha256/${layer:0:2}/$layer")
printf 'layer of %d MB; medians of 3\n' $((size / 1000000))
printf 'skopeo copy by digest from custody: %.2f s; from the layout on disk: %.2f s; ratio %.2f\n' "$pc" "$pd" "$(echo "$pc / $pd" | bc -l)"
printf 'layer blob through custody (curl): %.3f s (%.0f MB/s); openssl dgst -sha256 of the stored blob: %.3f s (%.0f MB/s); ratio %.2f; cat of it: %.3f s\n' \
  "$bc_" "$(echo "$size / 1000000 / $bc_" | bc -l)" "$bd" "$(echo "$size / 1000000 / $bd" | bc -l)" "$(echo "$bc_ / $bd" | bc -l)" "$bcat"

PYTHONPATH=bench CUSTODY_SERVER="$url" PROJECT=bench ADMIN="$admin" BOB="$bob" URL="$url" ALICE="$alice" MANIFEST="$manifest" GETS="${1:-2000}" python3 - <<'PY'
import http.client, os, time
from team import percentile
host = os.environ["URL"].removeprefix("http://")
headers = {"Authorization": f"Bearer {os.environ['ALICE']}",
           "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"}
def timed(path, n):
    conn = http.client.HTTPConnection(host)
    times = []
    for i in range(n + 50):
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        if i >= 50:
            times.append((time.perf_counter() - started) * 1000)
    return sorted(times)
gets = int(os.environ["GETS"])
manifest = timed(f"/v2/bench/app/manifests/sha256:{os.environ['MANIFEST']}", gets)
tag = timed("/v2/bench/app/manifests/build-1", gets)
health = timed("/healthz", gets)
for label, t in (("manifest GET by digest", manifest), ("manifest GET by tag build-1", tag), ("anchor GET /healthz", health)):
    print(f"{label}: p50 {percentile(t, 50):.2f} ms, p99 {percentile(t, 99):.2f} ms ({len(t)} GETs)")
print(f"ratio to /healthz: p50 {percentile(manifest, 50) / percentile(health, 50):.1f}, p99 {percentile(manifest, 99) / percentile(health, 99):.1f}")
PY
