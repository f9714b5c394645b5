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
    blob_file, builder_key, custody, finished_build, merge_a_change, pipeline, seed_build, service_key, sha256_hex,
    stored_blobs, BUILD_SCRIPT,
};
use support::deploys::statement_of;
use support::flow::team;
use support::hosted::{Backend, PROJECT};
use support::verify::{python, VERIFY_ENVELOPE};

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

/// A GET of the registry with an `Authorization` header.
fn pull(base: &str, path: &str, authorization: &str) -> support::HttpAnswer {
    support::http_send(base, "GET", path, &[("Authorization", authorization)], None)
}

/// `skopeo inspect` of `PROJECT/REFERENCE` as alice: what it says.
fn inspect(hosted: &support::hosted::Hosted, reference: &str) -> Value {
    let host = hosted.server.url.trim_start_matches("http://");
    let creds = format!("alice:{}", hosted.token("alice"));
    let image = format!("docker://{host}/{PROJECT}/{reference}");
    let inspected = skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &image]);
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    serde_json::from_slice(&inspected.stdout).expect("skopeo's JSON")
}

/// `skopeo ARGS`: its output.
fn skopeo(args: &[&str]) -> std::process::Output {
    std::process::Command::new("skopeo").args(args).output().expect("skopeo runs (scripts/setup installs it)")
}

/// The registry serves the built image to a real client, by tag and by
/// digest, with every blob checked on the client's side too; it takes no
/// push, answers nobody without a token, and hides a project from whoever
/// may not read it.
fn skopeo_pulls_a_built_image_from_the_registry_and_can_push_nothing(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("mallory", "");
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = seed_build(&hosted, &policy(), &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let manifest = build["artifacts"][1]["digest"].as_str().expect("the manifest's digest").to_owned();
    let file = build["artifacts"][0]["digest"].as_str().expect("the file's digest").to_owned();
    let host = hosted.server.url.trim_start_matches("http://").to_owned();
    let alice = format!("alice:{}", hosted.token("alice"));

    let inspected = inspect(&hosted, "app:build-1");
    assert_eq!(inspected["Digest"], format!("sha256:{manifest}"), "{inspected}");
    assert_eq!(inspected["RepoTags"], serde_json::json!(["build-1"]), "{inspected}");

    let copied = hosted.sandbox.path("pulled");
    let pulled = skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &alice,
        &format!("docker://{host}/{PROJECT}/app@sha256:{manifest}"),
        &format!("oci:{}:app", copied.display()),
    ]);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let index: Value =
        serde_json::from_slice(&std::fs::read(copied.join("index.json")).expect("the copy's index")).expect("JSON");
    assert_eq!(index["manifests"][0]["digest"], format!("sha256:{manifest}"), "{index}");

    // Nothing goes in: a push is denied, as the specification words it.
    let base = &hosted.server.url;
    let bearer = format!("Bearer {}", hosted.token("alice"));
    for (method, path) in [
        ("POST", format!("/v2/{PROJECT}/app/blobs/uploads/")),
        ("PUT", format!("/v2/{PROJECT}/app/manifests/evil")),
        ("DELETE", format!("/v2/{PROJECT}/app/manifests/sha256:{manifest}")),
    ] {
        let answer = support::http_send(base, method, &path, &[("Authorization", &bearer)], Some(b"{}"));
        assert_eq!(answer.status, 403, "{method} {path}: {answer:?}");
        assert!(answer.body.contains("\"DENIED\""), "{method} {path}: {answer:?}");
    }
    let pushed = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &alice,
        &format!("oci:{}:app", copied.display()),
        &format!("docker://{host}/{PROJECT}/app:evil"),
    ]);
    assert!(!pushed.status.success(), "skopeo pushed an image");
    let tags =
        skopeo(&["list-tags", "--tls-verify=false", "--creds", &alice, &format!("docker://{host}/{PROJECT}/app")]);
    let tags: Value = serde_json::from_slice(&tags.stdout).expect("the tags");
    assert_eq!(tags["Tags"], serde_json::json!(["build-1"]), "{tags}");

    // Without a token: a challenge naming the token endpoint.
    let anonymous = support::http_send(base, "GET", &format!("/v2/{PROJECT}/app/manifests/build-1"), &[], None);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let challenge = anonymous.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=") && challenge.contains("/v2/token"), "{challenge}");
    // Someone who may not read the project finds no such repository.
    let mallory = format!("Bearer {}", hosted.token("mallory"));
    let hidden = pull(base, &format!("/v2/{PROJECT}/app/manifests/build-1"), &mallory);
    assert_eq!(hidden.status, 404, "{hidden:?}");
    assert!(hidden.body.contains("NAME_UNKNOWN"), "{hidden:?}");
    // A blob of the project that no manifest of the image reaches is not the image's.
    let stray = pull(base, &format!("/v2/{PROJECT}/app/blobs/sha256:{file}"), &bearer);
    assert_eq!(stray.status, 404, "{stray:?}");
    assert!(stray.body.contains("BLOB_UNKNOWN"), "{stray:?}");
}

/// An environment's tag names the image live there: it appears when a
/// deployment there succeeds and moves only with the next one, never with
/// a build; nobody sets it.
fn environment_tags_move_only_when_deployments_succeed(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    support::deploys::release_managers(&hosted, &["carol"]);
    let policy = format!(
        "{}\n[[pipeline.image]]\nname = \"app\"\nlayout = \"dist/app-oci\"\n\n[[environment]]\nname = \"staging\"\n\
         deploy = \"scripts/deploy.sh\"\n\n[[environment]]\nname = \"production\"\nafter = \"staging\"\n\
         deploy = \"scripts/deploy.sh\"\napprovals = 1\napprovers = \"release-managers\"\n",
        pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]")
    );
    let deploy = "#!/bin/sh\nset -e\necho deploying image $(sha256sum $CUSTODY_ARTIFACTS_DIR/oci/app | cut -c1-64)\n";
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = support::deploys::seed_deploying_with(&hosted, &policy, &script, deploy);
    merge_a_change(&hosted, &work);
    let first = finished_build(&hosted, 1)["artifacts"][1]["digest"].as_str().expect("a manifest").to_owned();
    support::deploys::deployment_reaching(&hosted, 1, &["succeeded"]);
    support::deploys::deployment_reaching(&hosted, 2, &["pending"]);
    let base = &hosted.server.url;
    let bearer = format!("Bearer {}", hosted.token("alice"));
    let tagged = |tag: &str| {
        let answer = support::http_send(
            base,
            "HEAD",
            &format!("/v2/{PROJECT}/app/manifests/{tag}"),
            &[("Authorization", &bearer)],
            None,
        );
        (answer.status == 200).then(|| answer.header("docker-content-digest").unwrap_or_default().to_owned())
    };
    assert_eq!(tagged("staging"), Some(format!("sha256:{first}")));
    assert_eq!(tagged("production"), None, "production is tagged before its deployment");
    let log = custody(&hosted, &["deploy", "log", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains(&format!("deploying image {first}")), "the deploy script got the manifest: {log}");

    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2"]).expect_code(0);
    support::deploys::deployment_reaching(&hosted, 2, &["succeeded"]);
    assert_eq!(tagged("production"), Some(format!("sha256:{first}")));

    // A second build moves staging when its deployment there succeeds; production stays.
    let main = support::flow::branch_from_main(&work, "next");
    support::flow::merge_part(&hosted, &work, &main, 2);
    let second = finished_build(&hosted, 2)["artifacts"][1]["digest"].as_str().expect("a manifest").to_owned();
    assert_ne!(first, second);
    support::deploys::deployment_reaching(&hosted, 3, &["succeeded"]);
    assert_eq!(tagged("staging"), Some(format!("sha256:{second}")));
    assert_eq!(tagged("production"), Some(format!("sha256:{first}")));
    assert_eq!(tagged("build-2"), Some(format!("sha256:{second}")));
}

/// A database administrator who points an image's record at other
/// content, or records an image no build made, gets nothing served: the
/// registry serves a manifest only when its build's signed provenance
/// names it.
fn a_dba_cannot_make_the_registry_serve_an_image_no_builder_signed(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = seed_build(&hosted, &policy(), &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let file = build["artifacts"][0]["digest"].as_str().expect("the file's digest").to_owned();
    let base = &hosted.server.url;
    let bearer = format!("Bearer {}", hosted.token("alice"));
    let get = |path: &str| support::http_send(base, "GET", path, &[("Authorization", &bearer)], None);
    assert_eq!(get(&format!("/v2/{PROJECT}/app/manifests/build-1")).status, 200);

    // The image's own record renamed, once the registry has served it.
    hosted.tamper("UPDATE artifacts SET name = 'oci/renamed' WHERE name = 'oci/app'");
    let renamed = get(&format!("/v2/{PROJECT}/renamed/manifests/build-1"));
    assert_eq!(renamed.status, 404, "{renamed:?}");
    hosted.tamper("UPDATE artifacts SET name = 'oci/app' WHERE name = 'oci/renamed'");
    assert_eq!(get(&format!("/v2/{PROJECT}/app/manifests/build-1")).status, 200);

    // An image recorded for a build that never made it.
    hosted.tamper(&format!(
        "INSERT INTO artifacts (project_id, build_id, name, digest, size, created_at) \
         SELECT project_id, build_id, 'oci/evil', digest, size, created_at FROM artifacts WHERE digest = '{file}'"
    ));
    let forged = get(&format!("/v2/{PROJECT}/evil/manifests/build-1"));
    assert_eq!(forged.status, 404, "{forged:?}");
    // The image's own record pointed at other content.
    hosted.tamper(&format!("UPDATE artifacts SET digest = '{file}' WHERE name = 'oci/app'"));
    let moved = get(&format!("/v2/{PROJECT}/app/manifests/build-1"));
    assert_eq!(moved.status, 404, "{moved:?}");
    assert!(moved.body.contains("MANIFEST_UNKNOWN"), "{moved:?}");
    let by_digest = get(&format!("/v2/{PROJECT}/app/blobs/sha256:{file}"));
    assert_eq!(by_digest.status, 404, "{by_digest:?}");
}

/// An image's signed attestations are its referrers: a puller finds its
/// build's provenance through the Referrers API and checks it with an
/// implementation that is not custody's; an auditor also finds each
/// deployment's attestation, checked with the deployer's key.
fn an_images_provenance_and_deployment_attestations_are_its_referrers(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = format!("{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n", policy());
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = support::deploys::seed_deploying_with(&hosted, &policy, &script, support::deploys::DEPLOY_SCRIPT_ANY);
    merge_a_change(&hosted, &work);
    let manifest = finished_build(&hosted, 1)["artifacts"][1]["digest"].as_str().expect("a manifest").to_owned();
    support::deploys::deployment_reaching(&hosted, 1, &["succeeded"]);
    let base = &hosted.server.url;
    let get = |token: &str, path: &str| {
        let answer = support::http_send(base, "GET", path, &[("Authorization", &format!("Bearer {token}"))], None);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        answer
    };
    let referrers = |token: &str, query: &str| -> Value {
        let answer = get(token, &format!("/v2/{PROJECT}/app/referrers/sha256:{manifest}{query}"));
        assert_eq!(answer.header("content-type"), Some("application/vnd.oci.image.index.v1+json"));
        serde_json::from_str(&answer.body).expect("an image index")
    };
    // The envelope a referrer carries, checked by securesystemslib with `key`.
    let opened = |token: &str, referrer: &Value, key: &std::path::Path| -> Option<Value> {
        assert_eq!(referrer["artifactType"], "application/vnd.dsse.envelope.v1+json", "{referrer}");
        let digest = referrer["digest"].as_str().expect("a digest");
        let artifact: Value =
            serde_json::from_str(&get(token, &format!("/v2/{PROJECT}/app/manifests/{digest}")).body).expect("JSON");
        assert_eq!(artifact["subject"]["digest"], format!("sha256:{manifest}"), "{artifact}");
        let layer = artifact["layers"][0]["digest"].as_str().expect("a layer");
        let envelope = get(token, &format!("/v2/{PROJECT}/app/blobs/{layer}")).body;
        let file = hosted.sandbox.path("referrer.json");
        std::fs::write(&file, envelope).expect("write the envelope");
        let output = python(VERIFY_ENVELOPE, &[file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])?;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        Some(serde_json::from_slice(&output.stdout).expect("the statement"))
    };

    let alice = hosted.token("alice");
    let found = referrers(&alice, "");
    let listed = found["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 1, "a reader sees the provenance alone: {found}");
    if let Some(statement) = opened(&alice, &listed[0], &builder_key(&hosted)) {
        assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1", "{statement}");
        let names: Vec<&Value> =
            statement["subject"].as_array().expect("subjects").iter().map(|s| &s["name"]).collect();
        assert!(names.contains(&&Value::from("oci/app")), "{statement}");
    }
    let other = referrers(&alice, "?artifactType=application/example");
    assert_eq!(other["manifests"], serde_json::json!([]), "{other}");

    let admin = hosted.admin.clone();
    let found = referrers(&admin, "?artifactType=application/vnd.dsse.envelope.v1%2Bjson");
    let listed = found["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 2, "an auditor sees the deployment's attestation too: {found}");
    let deployed = listed.iter().find(|r| r["annotations"]["dev.custody.attestation"] != "provenance").expect("one");
    if let Some(statement) = opened(&admin, deployed, &service_key(&hosted, "deployer")) {
        assert_eq!(statement["predicate"]["environment"], "staging", "{statement}");
    }
}

/// An image may come as a tar of its layout: the builder unpacks it on its
/// own side (files and directories only) and checks it as a directory.
fn an_image_layout_as_a_tar_is_unpacked_by_the_builder(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let tarred = policy().replace("dist/app-oci", "dist/app.tar");
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}tar -cf dist/app.tar -C dist/app-oci .\n");
    let work = seed_build(&hosted, &tarred, &script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["artifacts"][1]["name"], "oci/app", "{build}");
    let inspected = inspect(&hosted, "app:build-1");
    assert_eq!(inspected["Digest"], format!("sha256:{}", build["artifacts"][1]["digest"].as_str().unwrap_or_default()));
}

/// A tar layout holding a symbolic link (to a file of the host) fails the
/// build: the builder unpacks files and directories only, and stores nothing.
fn a_tar_layout_holding_a_link_fails_the_build_and_stores_nothing(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let tarred = policy().replace("dist/app-oci", "dist/app.tar");
    let linked = format!(
        "{BUILD_SCRIPT}{LAYOUT_SCRIPT}ln -s /etc/passwd dist/app-oci/blobs/sha256/passwd\n\
         tar -cf dist/app.tar -C dist/app-oci .\n"
    );
    let work = seed_build(&hosted, &tarred, &linked);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("only files and directories"), "{reason}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    assert_eq!(stored_blobs(&hosted.sandbox.path("data")), Vec::<PathBuf>::new(), "a blob was stored");
}

on_both_backends! {
    a_tar_layout_holding_a_link_fails_the_build_and_stores_nothing,
    an_image_layout_as_a_tar_is_unpacked_by_the_builder,
    an_images_provenance_and_deployment_attestations_are_its_referrers,
    a_dba_cannot_make_the_registry_serve_an_image_no_builder_signed,
    environment_tags_move_only_when_deployments_succeed,
    skopeo_pulls_a_built_image_from_the_registry_and_can_push_nothing,
    a_built_image_is_stored_and_its_provenance_names_its_manifest,
    an_image_whose_layer_changed_after_its_manifest_fails_the_build_and_stores_nothing,
    an_image_layout_that_is_a_link_out_of_the_workspace_fails_the_build,
}
