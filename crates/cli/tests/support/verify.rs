//! Checking custody's signed statements with an implementation that is not
//! custody's own: Python's securesystemslib.

use std::process::Command;

/// Whether Python with securesystemslib and cryptography is there. Outside
/// CI a missing one skips the independent checks, saying so; CI installs
/// them and must run them.
pub fn python_present() -> bool {
    let present = Command::new("python3")
        .args(["-c", "import securesystemslib.signer, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(present, "python3 with securesystemslib and cryptography is not installed: run scripts/setup");
    present
}

/// Runs Python with `script`, or `None` when [`python_present`] says no.
pub fn python(script: &str, args: &[&str]) -> Option<std::process::Output> {
    python_present().then(|| Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3"))
}

/// Verifies a DSSE envelope and its in-toto statement with Python's
/// securesystemslib and nothing of custody's: prints the statement.
pub const VERIFY_ENVELOPE: &str = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

envelope_path, key_path = sys.argv[1], sys.argv[2]
private = serialization.load_pem_private_key(open(key_path, "rb").read(), password=None)
public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
envelope = Envelope.from_dict(json.load(open(envelope_path)))
keyid = envelope.signatures and list(envelope.signatures)[0]
key = SSlibKey(keyid, "ed25519", "ed25519", {"public": public.hex()})
verified = envelope.verify([key], 1)
assert keyid in verified, verified
assert envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type
print(json.dumps(json.loads(envelope.payload)))
"#;
