//! Container images from builds: a build script leaves an OCI image layout
//! where its pipeline's `[[pipeline.image]]` says, the builder checks it
//! whole (every blob against its digest, the manifest and config against
//! the image spec), stores its blobs, records its manifest as the artifact
//! `oci/NAME` and names it in the build's signed provenance. A layout that
//! lies about its blobs, or lies outside the workspace, fails the build and
//! stores nothing.

#[macro_use]
mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::builds::{
    blob_file, custody, finished_build, merge_a_change, pipeline, seed_build, sha256_hex, stored_blobs, BUILD_SCRIPT,
};
use support::deploys::statement_of;
use support::flow::team;
use support::hosted::{Backend, PROJECT};

/// Writes an OCI image layout of one uncompressed layer (the packed
/// sources) at `dist/app-oci`, with nothing but the shell's tools.
const LAYOUT_SCRIPT: &str = r#"
d=dist/app-oci
mkdir -p "$d/blobs/sha256" .tmp/oci
put() { h=$(sha256sum "$1" | cut -c1-64); s=$(stat -c %s "$1"); mv "$1" "$d/blobs/sha256/$h"; echo "$h $s"; }
tar -cf .tmp/oci/layer.tar src
set -- $(put .tmp/oci/layer.tar); L=$1; LS=$2
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$L" > .tmp/oci/config.json
set -- $(put .tmp/oci/config.json); C=$1; CS=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$C" "$CS" "$L" "$LS" > .tmp/oci/manifest.json
set -- $(put .tmp/oci/manifest.json); M=$1; MS=$2
printf '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' "$M" "$MS" > "$d/index.json"
echo "layer $L"
"#;

/// The build section with one image, `app`, at `dist/app-oci`.
fn policy() -> String {
    format!(
        "{}\n[[pipeline.image]]\nname = \"app\"\nlayout = \"dist/app-oci\"\n",
        pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]")
    )
}

fn a_built_image_is_stored_and_its_provenance_names_its_manifest(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = seed_build(&hosted, &policy(), &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let artifacts = build["artifacts"].as_array().expect("artifacts");
    let names: Vec<&str> = artifacts.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["dist/app.tar.gz", "oci/app"], "{build}");
    let manifest_digest = artifacts[1]["digest"].as_str().expect("a digest").to_owned();

    // The manifest downloads as it was built, and reaches its config and
    // layer, each kept under its own digest.
    let file = hosted.sandbox.path("manifest.json");
    custody(&hosted, &["artifact", "get", PROJECT, &manifest_digest, "-o", file.to_str().expect("UTF-8")])
        .expect_code(0);
    let bytes = std::fs::read(&file).expect("the manifest");
    assert_eq!(sha256_hex(&bytes), manifest_digest);
    let manifest: Value = serde_json::from_slice(&bytes).expect("a JSON manifest");
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{manifest}");
    let data = hosted.sandbox.path("data");
    for blob in [&manifest["config"], &manifest["layers"][0]] {
        let digest = blob["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")).expect("a sha256 digest");
        let stored = std::fs::read(blob_file(&data, digest)).expect("the blob is stored");
        assert_eq!(sha256_hex(&stored), digest);
        assert_eq!(stored.len() as u64, blob["size"].as_u64().expect("a size"));
    }
    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    let layer = manifest["layers"][0]["digest"].as_str().expect("a layer");
    assert!(log.contains(&format!("layer {}", layer.trim_start_matches("sha256:"))), "{log}");

    // The provenance names the image by its manifest, beside the file.
    let envelope = custody(&hosted, &["artifact", "provenance", PROJECT, &manifest_digest, "--json"]).json();
    let statement = statement_of(&envelope);
    let subjects: Vec<(String, String)> = statement["subject"]
        .as_array()
        .expect("subjects")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["digest"]["sha256"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(subjects.contains(&("oci/app".to_owned(), manifest_digest.clone())), "{statement}");
    assert_eq!(subjects.len(), 2, "{statement}");
}

fn an_image_whose_layer_changed_after_its_manifest_fails_the_build_and_stores_nothing(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    // The script appends to the layer after the manifest named its digest.
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}echo more >> \"$d/blobs/sha256/$L\"\n");
    let work = seed_build(&hosted, &policy(), &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("image \"app\"") && reason.contains("not the"), "{reason}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    assert_eq!(stored_blobs(&hosted.sandbox.path("data")), Vec::<PathBuf>::new(), "a blob was stored");
}

fn an_image_layout_that_is_a_link_out_of_the_workspace_fails_the_build(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    // A layout made elsewhere and linked in: the builder reads none of it.
    let script =
        format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}mv dist/app-oci .tmp/elsewhere\nln -s ../.tmp/elsewhere dist/app-oci\n");
    let work = seed_build(&hosted, &policy(), &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("symbolic link"), "{reason}");
    assert_eq!(stored_blobs(&hosted.sandbox.path("data")), Vec::<PathBuf>::new(), "a blob was stored");
}

on_both_backends! {
    a_built_image_is_stored_and_its_provenance_names_its_manifest,
    an_image_whose_layer_changed_after_its_manifest_fails_the_build_and_stores_nothing,
    an_image_layout_that_is_a_link_out_of_the_workspace_fails_the_build,
}
