//! Service keys held in a PKCS#11 token (SoftHSM2): the instance signs its
//! provenance, attestations and checkpoints in the device, the data
//! directory holds no private key file (the event key and the secrets' key
//! only sealed by the device's AES key), and `custody verify` accepts what
//! the device signed.

mod support;

use std::path::Path;
use std::process::Command;

use support::builds::{finished_build, seed_building};
use support::flow::*;
use support::hosted::*;
use support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "custody";
const PIN: &str = "1234-5678";

/// A SoftHSM2 token of its own, under `dir`, holding an ed25519 key pair
/// for each of the four roles: the `SOFTHSM2_CONF` that names it.
fn token_with_keys(dir: &Path) -> String {
    assert!(Path::new(MODULE).exists(), "SoftHSM2 is not installed: run scripts/setup");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("a token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .expect("the SoftHSM2 configuration");
    let conf = conf.display().to_string();
    let tool = |program: &str, args: &[&str]| {
        let mut command = Command::new(program);
        command.env("SOFTHSM2_CONF", &conf).args(args);
        run(command).expect_code(0)
    };
    tool("softhsm2-util", &["--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", "87654321"]);
    for (id, role) in ["builder", "gate", "deployer", "ledger"].iter().enumerate() {
        tool(
            "pkcs11-tool",
            &[
                "--module",
                MODULE,
                "--token-label",
                TOKEN,
                "--login",
                "--pin",
                PIN,
                "--keypairgen",
                "--key-type",
                "EC:edwards25519",
                "--label",
                role,
                "--id",
                &format!("{:02x}", id + 1),
            ],
        );
    }
    // The AES key that seals the event key and the secrets' key.
    tool(
        "pkcs11-tool",
        &[
            "--module",
            MODULE,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            PIN,
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "custody-wrap",
            "--id",
            "10",
        ],
    );
    conf
}

#[test]
fn keys_held_in_softhsm_sign_provenance_that_verify_accepts_and_no_private_key_is_a_file() {
    let hsm = tempfile::tempdir().expect("a directory for the token");
    let conf = token_with_keys(hsm.path());
    let env = [
        ("SOFTHSM2_CONF", conf.as_str()),
        ("CUSTODY_PKCS11_MODULE", MODULE),
        ("CUSTODY_PKCS11_TOKEN", TOKEN),
        ("CUSTODY_PKCS11_PIN", PIN),
    ];
    let hosted = Hosted::on_with(Backend::Sqlite, &env).expect("SQLite");
    hosted.add_user("bob", "write");
    let (work, base) = seed_building(&hosted);
    merge_part(&hosted, &work, &base, 0);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");

    // A secret is sealed under the secrets' key, which the device seals.
    let mut set = hosted.sandbox.as_user("admin");
    set.args(["secret", "set", PROJECT, "staging", "DB_PASSWORD", "--json"]);
    support::run_with_input(set, Some("correct horse battery staple\n")).expect_code(0);

    // No private key is a file, and the event key and the secrets' key are
    // kept only sealed by the device: the anchor is the one plain file.
    let keys = hosted.sandbox.path("data").join("keys");
    let mut files: Vec<String> = std::fs::read_dir(&keys)
        .expect("the keys directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["event.key.wrapped", "ledger.anchor", "secrets.key.wrapped"], "{files:?}");
    // A copy of the data directory without the device proves nothing.
    let mut without = hosted.sandbox.as_user("thief");
    without.args(["audit", "verify", "--data-dir"]).arg(hosted.sandbox.path("data"));
    let refused = run(without);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("sealed by an HSM's custody-wrap key"), "{refused:?}");

    // The trust root's builder key is the device's public key.
    let public = hsm.path().join("builder.pub.pem");
    let mut read = Command::new("pkcs11-tool");
    read.env("SOFTHSM2_CONF", &conf).args([
        "--module",
        MODULE,
        "--token-label",
        TOKEN,
        "--read-object",
        "--type",
        "pubkey",
        "--label",
        "builder",
        "-o",
        public.to_str().unwrap(),
    ]);
    run(read).expect_code(0);
    // pkcs11-tool writes SubjectPublicKeyInfo PEM; its DER is what key ids hash.
    let der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&public)
        .output()
        .expect("openssl runs");
    assert!(der.status.success(), "{der:?}");
    let device_key = support::builds::sha256_hex(&der.stdout);
    let trust = hosted.sandbox.path("trust.json");
    hosted.as_admin(&["trust", "export", "-o", trust.to_str().unwrap()]).expect_code(0);
    let root: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    let builder = root["keys"].as_array().unwrap().iter().find(|k| k["role"] == "builder").cloned().unwrap();
    assert_eq!(builder["key_id"], device_key.as_str(), "{root:#}");

    // What the device signed verifies offline, checkpoint included.
    let digest = build["artifacts"][0]["digest"].as_str().expect("an artifact").to_owned();
    let bundle = hosted.sandbox.path("bundle.json");
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--artifact", &digest, "-o", bundle.to_str().unwrap()])
        .expect_code(0);
    let mut verify = hosted.sandbox.as_user("auditor");
    verify.args(["verify", bundle.to_str().unwrap(), "--trust", trust.to_str().unwrap(), "--json"]);
    let report = run(verify).json();
    assert_eq!(report["valid"], true, "{report:#}");
    let signers: Vec<_> =
        report["keys"].as_array().unwrap().iter().filter(|k| k["verified"].as_u64() > Some(0)).collect();
    assert!(signers.iter().any(|k| k["role"] == "builder" && k["key_id"] == device_key.as_str()), "{report:#}");
    assert!(signers.iter().any(|k| k["role"] == "ledger"), "{report:#}");

    // The host's own tools take the ledger key from the device too; an
    // escrow holds only the keys that are files, and a backup restores with
    // the device's keys.
    let on_host = |args: &[&str]| {
        let mut command = hosted.sandbox.as_user("operator");
        command.envs(env).env("CUSTODY_ESCROW_PASSPHRASE", "a passphrase kept in the vault").args(args);
        run(command)
    };
    let data = hosted.sandbox.path("data");
    let data = data.to_str().unwrap();
    on_host(&["audit", "verify", "--data-dir", data]).expect_code(0);
    let (taken, escrow, restored) =
        (hosted.sandbox.path("backup"), hosted.sandbox.path("escrow.json"), hosted.sandbox.path("restored"));
    on_host(&["backup", "--data-dir", data, "--to", taken.to_str().unwrap()]).expect_code(0);
    let escrowed = on_host(&["key", "escrow", "--data-dir", data, "--to", escrow.to_str().unwrap(), "--json"]).json();
    assert_eq!(escrowed["key_ids"], serde_json::json!([]), "{escrowed}");
    assert!(escrowed["files"].as_array().unwrap().iter().all(|f| !f.as_str().unwrap().ends_with(".pem")), "{escrowed}");
    let back = on_host(&[
        "restore",
        "--from",
        taken.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
        "--keys",
        escrow.to_str().unwrap(),
        "--json",
    ])
    .json();
    assert_eq!(back["problems"], serde_json::json!([]), "{back}");
    assert!(restored.join("keys/event.key.wrapped").exists() && !restored.join("keys/event.key").exists());

    // A key in the device is rotated in the device, never into a file.
    let asked = hosted.as_admin(&["key", "rotate", "builder", "--json"]);
    assert_ne!(asked.code(), Some(0), "{asked:?}");
    assert!(asked.stderr.contains("held in pkcs11:"), "{asked:?}");
}
