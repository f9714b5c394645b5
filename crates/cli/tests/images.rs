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

/// alice's change merged on a main whose build makes the image `app`:
/// build 1, succeeded.
fn built_image(hosted: &support::hosted::Hosted) -> Value {
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = seed_build(hosted, &policy(), &script);
    merge_a_change(hosted, &work);
    let build = finished_build(hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    build
}

fn a_built_image_is_stored_and_its_provenance_names_its_manifest(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let build = built_image(&hosted);
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
    let build = built_image(&hosted);
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
        ("DELETE", format!("/v2/{PROJECT}/app/manifests/build-1")),
        ("PATCH", format!("/v2/{PROJECT}/app/blobs/uploads/1")),
        ("POST", format!("/v2/{PROJECT}/app/blobs/uploads/?mount=sha256:{manifest}&from={PROJECT}/app")),
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
    let build = built_image(&hosted);
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
    let trust_file = hosted.sandbox.path("trust.json");
    let trust = trust_file.to_str().expect("UTF-8").to_owned();
    hosted.as_admin(&["trust", "export", "-o", &trust]).expect_code(0);
    // The envelope a referrer carries, checked by custody's verifier and by
    // securesystemslib with `key`.
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
        // custody's own verifier accepts it, with the trust file's key of its duty.
        let verified = custody(&hosted, &["verify", file.to_str().expect("UTF-8"), "--trust", &trust, "--json"]);
        let report = verified.expect_code(0).json();
        assert_eq!(report["valid"], true, "{report}");
        assert!(report["checks"].as_array().is_some_and(|c| c.iter().any(|c| c["rule"] == "envelope.signature")));
        let mut forged: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("JSON");
        let mut statement = statement_of(&forged);
        statement["subject"][0]["digest"]["sha256"] = "00".repeat(32).into();
        forged["payload"] = base64_of(statement.to_string().as_bytes()).into();
        let forged_file = hosted.sandbox.path("forged-referrer.json");
        std::fs::write(&forged_file, forged.to_string()).expect("write the forgery");
        let refused = custody(&hosted, &["verify", forged_file.to_str().expect("UTF-8"), "--trust", &trust]);
        assert_eq!(refused.code(), Some(1), "a forged referrer verified: {refused:#?}");
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
    a_dba_cannot_make_custody_sign_an_environment_state_it_did_not_record,
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

/// What the story's admission webhook is asked: an `AdmissionReview` as the
/// Kubernetes API server sends it, about `object` (a `kind`) in `namespace`.
fn review(uid: &str, kind: &str, namespace: &str, operation: &str, sub_resource: Option<&str>, object: Value) -> Value {
    let (group, version, resource) = match kind {
        "Pod" => ("", "v1", "pods"),
        "Deployment" => ("apps", "v1", "deployments"),
        "CronJob" => ("batch", "v1", "cronjobs"),
        other => panic!("no resource for {other}"),
    };
    let mut request = serde_json::json!({
        "uid": uid,
        "kind": { "group": group, "version": version, "kind": kind },
        "resource": { "group": group, "version": version, "resource": resource },
        "requestKind": { "group": group, "version": version, "kind": kind },
        "requestResource": { "group": group, "version": version, "resource": resource },
        "name": "web",
        "namespace": namespace,
        "operation": operation,
        "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "4f1c", "groups": ["system:serviceaccounts"] },
        "object": object,
        "oldObject": null,
        "dryRun": false,
        "options": { "apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions" },
    });
    if let Some(sub) = sub_resource {
        request["subResource"] = sub.into();
        request["requestSubResource"] = sub.into();
    }
    serde_json::json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request })
}

/// A Pod running `containers` (`[name, image]`), with `init` and
/// `ephemeral` containers besides.
fn pod(containers: &[(&str, &str)], init: &[(&str, &str)], ephemeral: &[(&str, &str)]) -> Value {
    let list = |c: &[(&str, &str)]| -> Value {
        c.iter().map(|(name, image)| serde_json::json!({ "name": name, "image": image })).collect()
    };
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web", "labels": { "app": "web" } },
        "spec": { "containers": list(containers), "initContainers": list(init), "ephemeralContainers": list(ephemeral) },
    })
}

/// A running `custody admit` over TLS, and how to ask it.
struct Webhook {
    server: support::Server,
    certificate: PathBuf,
}

impl Webhook {
    /// Starts `custody admit` with `config` (TOML lines besides the TLS
    /// identity, made here with openssl for 127.0.0.1).
    fn start(hosted: &support::hosted::Hosted, name: &str, config: &str) -> Webhook {
        let dir = hosted.sandbox.path(name);
        std::fs::create_dir_all(&dir).expect("a directory");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", "tls.key", "-out", "tls.crt", "-days", "1", "-subj", "/CN=custody-admit"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .current_dir(&dir)
            .output()
            .expect("openssl runs");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let file = dir.join("admit.toml");
        std::fs::write(
            &file,
            format!("listen = \"127.0.0.1:0\"\ntls_certificate = \"tls.crt\"\ntls_key = \"tls.key\"\n{config}"),
        )
        .expect("write the configuration");
        let mut command = std::process::Command::new(support::BIN);
        command.args(["admit", "--config", file.to_str().expect("UTF-8")]).env("RUST_LOG", "info");
        Webhook { server: support::Server::start(command), certificate: dir.join("tls.crt") }
    }

    /// POSTs `body` to `/validate` with curl, checking the certificate: the
    /// HTTP status and the answer.
    fn post(&self, body: &[u8]) -> (u16, Value) {
        let mut curl = std::process::Command::new("curl");
        curl.args([
            "-sS",
            "--cacert",
            self.certificate.to_str().expect("UTF-8"),
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", "@-", "-w", "\n%{http_code}", &format!("{}/validate", self.server.url)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
        let mut child = curl.spawn().expect("curl runs");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), body).expect("send the review");
        let output = child.wait_with_output().expect("curl ends");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (answer, status) = text.rsplit_once('\n').expect("a status line");
        (status.trim().parse().expect("a status"), serde_json::from_str(answer).unwrap_or(Value::String(answer.into())))
    }

    /// The response to `review`: allowed, the denial's message, warnings.
    fn ask(&self, review: &Value) -> (bool, String, Vec<String>) {
        let (status, answer) = self.post(review.to_string().as_bytes());
        assert_eq!(status, 200, "{answer}");
        let response = &answer["response"];
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(response["uid"], review["request"]["uid"], "the answer names the request: {answer}");
        let warnings =
            response["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned);
        (
            response["allowed"].as_bool().expect("allowed"),
            response["status"]["message"].as_str().unwrap_or_default().to_owned(),
            warnings.collect(),
        )
    }
}

/// The seed's story with a container image: alice's change merged, built
/// into an image, pulled by digest with skopeo; `:staging` resolves once
/// staging deployed it and `:production` only after dave's sign-off and
/// carol's approval; a cluster's admission webhook, reading evidence synced
/// from custody and nothing else, admits in each namespace exactly the
/// image custody deployed to its environment (or the one before, for a
/// rolling update), denies everything else with the rule and what would
/// satisfy it, follows a rollback, flags a break-glass deployment, and
/// denies images whose evidence was forged. A blob altered in the store is
/// refused on pull.
fn the_seed_story_with_an_image_from_merge_to_admission(backend: Backend, s3: bool) {
    let moto = if s3 { custody_blobs::testing::moto() } else { None };
    if s3 && moto.is_none() {
        return;
    }
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(moto) = &moto {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(moto.create_bucket("artifacts"));
        env = moto.vars();
        env.push(("CUSTODY_BLOB_STORE".into(), "s3://artifacts/custody".into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let Some(hosted) = support::hosted::Hosted::on_with(backend, &env) else { return };
    for who in ["bob", "carol", "dave", "erin"] {
        hosted.add_user(who, "write");
    }
    support::deploys::release_managers(&hosted, &["carol", "erin"]);
    support::deploys::group(&hosted, "testers", &["dave"]);
    let policy = format!(
        "{}\n[[pipeline.image]]\nname = \"app\"\nlayout = \"dist/app-oci\"\n\n[[environment]]\nname = \"staging\"\n\
         deploy = \"scripts/deploy.sh\"\n\n[[environment]]\nname = \"production\"\nafter = \"staging\"\n\
         deploy = \"scripts/deploy.sh\"\napprovals = 1\napprovers = \"release-managers\"\ntesters = \"testers\"\n",
        pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]")
    );
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = support::deploys::seed_deploying_with(&hosted, &policy, &script, support::deploys::DEPLOY_SCRIPT_ANY);
    merge_a_change(&hosted, &work);
    let first = finished_build(&hosted, 1)["artifacts"][1]["digest"].as_str().expect("a manifest").to_owned();
    let host = hosted.server.url.trim_start_matches("http://").to_owned();
    let image = |digest: &str| format!("{host}/{PROJECT}/app@sha256:{digest}");

    // Pulled by digest, the very image the builder made.
    let alice = format!("alice:{}", hosted.token("alice"));
    let pulled_to = hosted.sandbox.path("pulled");
    let pull_by_digest = |digest: &str| {
        let _ = std::fs::remove_dir_all(&pulled_to);
        skopeo(&[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            &alice,
            &format!("docker://{}", image(digest)),
            &format!("oci:{}:app", pulled_to.display()),
        ])
    };
    let pulled = pull_by_digest(&first);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    let index: Value =
        serde_json::from_slice(&std::fs::read(pulled_to.join("index.json")).expect("index")).expect("JSON");
    assert_eq!(index["manifests"][0]["digest"], format!("sha256:{first}"), "{index}");

    let bearer = format!("Bearer {}", hosted.token("alice"));
    let tagged = |tag: &str| {
        let path = format!("/v2/{PROJECT}/app/manifests/{tag}");
        let answer = support::http_send(&hosted.server.url, "HEAD", &path, &[("Authorization", &bearer)], None);
        (answer.status == 200).then(|| answer.header("docker-content-digest").unwrap_or_default().to_owned())
    };
    support::deploys::deployment_reaching(&hosted, 1, &["succeeded"]);
    support::deploys::deployment_reaching(&hosted, 2, &["pending"]);
    assert_eq!(tagged("staging"), Some(format!("sha256:{first}")));
    assert_eq!(tagged("production"), None);
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, "2", "--passed"]).expect_code(0);
    assert_eq!(tagged("production"), None, "a sign-off alone moved production");
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2"]).expect_code(0);
    support::deploys::deployment_reaching(&hosted, 2, &["succeeded"]);
    assert_eq!(tagged("production"), Some(format!("sha256:{first}")));

    // The cluster's side: a trust file and synced evidence, nothing else.
    let trust = hosted.sandbox.path("trust.json");
    hosted.as_admin(&["trust", "export", "-o", trust.to_str().expect("UTF-8")]).expect_code(0);
    let evidence = hosted.sandbox.path("evidence");
    let sync = || {
        let synced =
            hosted.as_admin(&["evidence", "sync", evidence.to_str().expect("UTF-8"), "--project", PROJECT, "--json"]);
        synced.json()
    };
    let synced = sync();
    assert_eq!(synced[1]["environment"], "production", "{synced}");
    assert_eq!(synced[1]["deployments"], serde_json::json!([2]), "{synced}");
    let webhook = Webhook::start(
        &hosted,
        "admit",
        &format!(
            "trust = {trust:?}\nevidence = {evidence:?}\nregistries = [\"{host}\"]\nlast = 2\nmax_age = \"1h\"\n\
             [namespaces]\npayments-prod = {{ project = \"{PROJECT}\", environment = \"production\" }}\n\
             payments-staging = {{ project = \"{PROJECT}\", environment = \"staging\" }}\n"
        ),
    );
    // A webhook may fetch its evidence from custody itself.
    let token_file = hosted.sandbox.path("auditor-token");
    std::fs::write(&token_file, &hosted.admin).expect("the token");
    let fetching = Webhook::start(
        &hosted,
        "admit-fetching",
        &format!(
            "trust = {trust:?}\nevidence = \"fetched\"\nregistries = [\"{host}\"]\nmax_age = \"1h\"\n\
             [namespaces]\npayments-prod = {{ project = \"{PROJECT}\", environment = \"production\" }}\n\
             [sync]\nserver = \"{}\"\ntoken_file = {token_file:?}\nprojects = [\"{PROJECT}\"]\nevery = \"1s\"\n",
            hosted.server.url
        ),
    );
    let pod_of_first = review("f1", "Pod", "payments-prod", "CREATE", None, pod(&[("app", &image(&first))], &[], &[]));
    let fetched = support::flow::eventually(|| fetching.ask(&pod_of_first).0.then_some(()));
    assert!(
        fetched.is_some(),
        "the fetching webhook never admitted the production image: {}",
        fetching.server.stderr()
    );
    drop(fetching);

    let ask_pod = |namespace: &str, containers: &[(&str, &str)]| {
        webhook.ask(&review("a1", "Pod", namespace, "CREATE", None, pod(containers, &[], &[])))
    };

    let (allowed, why, warnings) = ask_pod("payments-prod", &[("app", &image(&first))]);
    assert!(allowed, "the production image in production: {why}");
    assert!(warnings.is_empty(), "{warnings:?}");
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
        "spec": { "replicas": 2, "template": pod(&[("app", &image(&first))], &[], &[]) },
    });
    let (allowed, why, _) = webhook.ask(&review("a2", "Deployment", "payments-prod", "UPDATE", None, deployment));
    assert!(allowed, "a Deployment's template: {why}");

    // Every container is checked, init and ephemeral ones too, each denial
    // with its rule, its container and what would satisfy it.
    let mixed = pod(
        &[("app", &image(&first))],
        &[(
            "setup",
            "docker.io/library/busybox@sha256:4f1c0b5ea9a9bd1d3bd2b3d5a1c7e1f6c64d5bb2c1d1a5e4bb9c0e3ce4a3b2a1",
        )],
        &[("debug", &format!("{host}/{PROJECT}/app:production"))],
    );
    let (allowed, why, _) = webhook.ask(&review("a3", "Pod", "payments-prod", "CREATE", None, mixed.clone()));
    assert!(!allowed, "{why}");
    assert!(why.contains("admit.trusted_registry (spec.initContainers[0] setup)"), "{why}");
    assert!(why.contains("admit.pinned_by_digest (spec.ephemeralContainers[0] debug)"), "{why}");
    assert!(why.contains("pin the image by its sha256 digest"), "{why}");
    assert!(!why.contains("spec.containers[0]"), "the production image itself is fine: {why}");
    let debugging = pod(&[("app", &image(&first))], &[], &[("debug", "busybox:latest")]);
    let (allowed, why, _) =
        webhook.ask(&review("a4", "Pod", "payments-prod", "UPDATE", Some("ephemeralcontainers"), debugging));
    assert!(!allowed && why.contains("admit.pinned_by_digest (spec.ephemeralContainers[0] debug)"), "{why}");
    let never_built = "0".repeat(64);
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&never_built))]);
    assert!(!allowed && why.contains("admit.deployed_here"), "{why}");
    assert!(why.contains("shows no deployment of it"), "{why}");
    let (allowed, why, _) = ask_pod("default", &[("app", &image(&first))]);
    assert!(!allowed && why.contains("admit.namespace_mapped"), "{why}");
    let (allowed, _, _) = webhook.ask(&review("a5", "Pod", "payments-prod", "DELETE", None, Value::Null));
    assert!(allowed, "deleting runs nothing");
    let (status, answer) = webhook.post(b"{\"kind\":\"Pod\"}");
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("AdmissionReview")), "{answer}");

    // A second build: deployed to staging only, it is not production's.
    let main = support::flow::branch_from_main(&work, "next");
    support::flow::merge_part(&hosted, &work, &main, 2);
    let second = finished_build(&hosted, 2)["artifacts"][1]["digest"].as_str().expect("a manifest").to_owned();
    support::deploys::deployment_reaching(&hosted, 3, &["succeeded"]);
    support::deploys::deployment_reaching(&hosted, 4, &["pending"]);
    sync();
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(!allowed, "{why}");
    assert!(why.contains("it was deployed to staging only"), "{why}");
    let (allowed, why, _) = ask_pod("payments-staging", &[("app", &image(&second))]);
    assert!(allowed, "{why}");

    // Once production has it, both are admitted there (the last two, for a
    // rolling update)...
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, "4", "--passed"]).expect_code(0);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "4"]).expect_code(0);
    support::deploys::deployment_reaching(&hosted, 4, &["succeeded"]);
    assert_eq!(tagged("production"), Some(format!("sha256:{second}")));
    sync();
    for digest in [&first, &second] {
        let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(digest))]);
        assert!(allowed, "{why}");
    }

    // ...until a rollback to build 1 takes the second out of production.
    let asked = hosted.run_as("carol", &["deploy", "request", PROJECT, "production", "--build", "1", "--json"]).json();
    let rollback = asked["deployment"]["number"].as_i64().expect("a number");
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, &rollback.to_string(), "--passed"]).expect_code(0);
    hosted.run_as("erin", &["deploy", "approve", PROJECT, &rollback.to_string()]).expect_code(0);
    support::deploys::deployment_reaching(&hosted, rollback, &["succeeded"]);
    assert_eq!(tagged("production"), Some(format!("sha256:{first}")), "the rollback moved production back");
    sync();
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(!allowed, "{why}");
    assert!(why.contains(&format!("rolled back out of production of {PROJECT} by deployment {rollback}")), "{why}");
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&first))]);
    assert!(allowed, "{why}");

    // Breaking the glass puts build 2 back in production: admitted, flagged.
    let asked = hosted
        .run_as(
            "carol",
            &[
                "deploy",
                "request",
                PROJECT,
                "production",
                "--build",
                "2",
                "--break-glass",
                "--reason",
                "hotfix",
                "--json",
            ],
        )
        .json();
    let glass = asked["deployment"]["number"].as_i64().expect("a number");
    hosted.run_as("erin", &["deploy", "approve", PROJECT, &glass.to_string()]).expect_code(0);
    support::deploys::deployment_reaching(&hosted, glass, &["succeeded"]);
    sync();
    let (allowed, why, warnings) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(allowed, "{why}");
    assert!(warnings.iter().any(|w| w.contains("broke the glass (hotfix)")), "{warnings:?}");

    // Evidence forged on the cluster's side verifies as nothing: the state
    // re-signed with another key, then a bundle's attestation altered.
    let state_file = evidence.join(PROJECT).join("environments").join("production.json");
    let kept = std::fs::read_to_string(&state_file).expect("the state");
    let mut forged: Value = serde_json::from_str(&kept).expect("an envelope");
    forged["signatures"][0]["sig"] = base64_of(&[7u8; 64]).into();
    std::fs::write(&state_file, forged.to_string()).expect("forge");
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(!allowed && why.contains("admit.evidence_verifies"), "{why}");
    assert!(why.contains("not signed by a ledger key"), "{why}");
    // Staging's state, genuine, copied over production's: not production's.
    let staging_state = evidence.join(PROJECT).join("environments").join("staging.json");
    std::fs::copy(&staging_state, &state_file).expect("copy");
    let (allowed, why, _) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(!allowed && why.contains("holds the state of staging"), "{why}");
    std::fs::write(&state_file, &kept).expect("put back");
    let bundle_file = evidence.join(PROJECT).join("deployments").join(format!("{glass}.json"));
    let bundle = std::fs::read_to_string(&bundle_file).expect("a bundle");
    let mut altered: Value = serde_json::from_str(&bundle).expect("JSON");
    let entries = altered["entries"].as_array_mut().expect("entries");
    let last = entries.last_mut().expect("the deployment's attestation");
    let mut statement = statement_of(&last["envelope"]);
    statement["predicate"]["break_glass"] = Value::Null;
    last["envelope"]["payload"] = base64_of(statement.to_string().as_bytes()).into();
    std::fs::write(&bundle_file, altered.to_string()).expect("alter");
    let (allowed, why, warnings) = ask_pod("payments-prod", &[("app", &image(&second))]);
    assert!(!allowed && why.contains("admit.evidence_verifies"), "{why}");
    assert!(warnings.is_empty(), "{warnings:?}");
    std::fs::write(&bundle_file, &bundle).expect("put back");
    assert!(ask_pod("payments-prod", &[("app", &image(&second))]).0);

    // A blob altered in the store is refused on pull, not passed on.
    let layer = index_layer(&hosted, &second);
    match &moto {
        Some(moto) => {
            let raw = moto.raw("artifacts");
            let key = object_store::path::Path::from(format!("custody/sha256/{}/{layer}", &layer[..2]));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                use object_store::ObjectStore;
                let mut bytes = raw.get(&key).await.expect("the layer").bytes().await.expect("bytes").to_vec();
                bytes[0] ^= 0xff;
                raw.put(&key, bytes.into()).await.expect("overwrite");
            });
        }
        None => {
            let file = blob_file(&hosted.sandbox.path("data"), &layer);
            let mut bytes = std::fs::read(&file).expect("the layer");
            bytes[0] ^= 0xff;
            std::fs::write(&file, bytes).expect("overwrite");
        }
    }
    let refused = pull_by_digest(&second);
    assert!(!refused.status.success(), "a tampered layer was pulled");
}

/// A database administrator cannot make custody sign that an environment
/// runs something else: its state comes from the environment's proven
/// chain of events, so an event edited, deleted or written around custody
/// makes custody refuse to sign at all, naming it, rather than sign a lie.
fn a_dba_cannot_make_custody_sign_an_environment_state_it_did_not_record(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = format!("{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n", policy());
    let script = format!("{BUILD_SCRIPT}{LAYOUT_SCRIPT}");
    let work = support::deploys::seed_deploying_with(&hosted, &policy, &script, support::deploys::DEPLOY_SCRIPT_ANY);
    merge_a_change(&hosted, &work);
    support::deploys::deployment_reaching(&hosted, 1, &["succeeded"]);
    let path = format!("/api/v1/projects/{PROJECT}/environments/staging/evidence");
    let signed = || {
        support::http_send(
            &hosted.server.url,
            "GET",
            &path,
            &[("Authorization", &format!("Bearer {}", hosted.admin))],
            None,
        )
    };
    let honest = signed();
    assert_eq!(honest.status, 200, "{honest:?}");
    let state = statement_of(&serde_json::from_str(&honest.body).expect("an envelope"));
    assert_eq!(state["predicate"]["deployments"][0]["deployment"], 1, "{state}");
    let reader = support::http_send(
        &hosted.server.url,
        "GET",
        &path,
        &[("Authorization", &format!("Bearer {}", hosted.token("alice")))],
        None,
    );
    assert_eq!(reader.status, 403, "the state is evidence, for admins and auditors: {reader:?}");

    // The environment's event pointed at another deployment.
    let dialect =
        if hosted.database.is_some() { custody_store::Dialect::Postgres } else { custody_store::Dialect::Sqlite };
    hosted.tamper(custody_store::testing::drop_append_only_triggers(dialect));
    hosted.tamper(
        "UPDATE audit_events SET details = REPLACE(details, '\"deployment\":1', '\"deployment\":7') \
         WHERE action = 'environment.deployed'",
    );
    let edited = signed();
    assert_eq!(edited.status, 403, "{edited:?}");
    assert!(edited.body.contains("unproven") || edited.body.contains("around custody"), "{edited:?}");
    hosted.tamper(
        "UPDATE audit_events SET details = REPLACE(details, '\"deployment\":7', '\"deployment\":1') \
         WHERE action = 'environment.deployed'",
    );
    assert_eq!(signed().status, 200);
    // A later deployment hidden by deleting its event.
    hosted.tamper("DELETE FROM audit_events WHERE action = 'environment.deployed'");
    let hidden = signed();
    assert_eq!(hidden.status, 403, "{hidden:?}");
    assert!(hidden.body.contains("missing"), "{hidden:?}");
}

fn base64_of(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// The layer of the image whose manifest is `manifest`, read from the registry.
fn index_layer(hosted: &support::hosted::Hosted, manifest: &str) -> String {
    let bearer = format!("Bearer {}", hosted.token("alice"));
    let answer = pull(&hosted.server.url, &format!("/v2/{PROJECT}/app/manifests/sha256:{manifest}"), &bearer);
    let manifest: Value = serde_json::from_str(&answer.body).expect("a manifest");
    manifest["layers"][0]["digest"].as_str().expect("a layer").trim_start_matches("sha256:").to_owned()
}

mod story {
    use super::*;

    #[test]
    fn on_sqlite_with_local_blobs() {
        the_seed_story_with_an_image_from_merge_to_admission(Backend::Sqlite, false);
    }

    #[test]
    fn on_postgres_with_s3_blobs() {
        the_seed_story_with_an_image_from_merge_to_admission(Backend::Postgres, true);
    }
}
