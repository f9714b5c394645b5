//! ed25519 service keys, one per duty, in PKCS#8 PEM files of mode 0600.

use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The duty a service key signs for. A verifier accepts a statement only
/// from the key of its duty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRole {
    /// Build provenance and check results.
    Builder,
    /// Change attestations (the merge gate).
    Gate,
    /// Deployment attestations.
    Deployer,
    /// Checkpoints of the audit ledger.
    Ledger,
}

impl KeyRole {
    /// Every role, in order.
    pub const ALL: [KeyRole; 4] = [KeyRole::Builder, KeyRole::Gate, KeyRole::Deployer, KeyRole::Ledger];

    /// The role's name, also its key file's stem.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Builder => "builder",
            KeyRole::Gate => "gate",
            KeyRole::Deployer => "deployer",
            KeyRole::Ledger => "ledger",
        }
    }

    /// The role named `name`, if one is.
    pub fn parse(name: &str) -> Option<KeyRole> {
        KeyRole::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// Why a key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key file holds no valid ed25519 PKCS#8 key.
    #[error("key file {path} holds no ed25519 private key in PKCS#8 PEM: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What the decoder said.
        why: String,
    },
    /// The key file can be read by others than its owner.
    #[error("key file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)")]
    TooOpen {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A secret kept sealed by a device could not be sealed or opened.
    #[error("{path}: {why}")]
    Sealed {
        /// The file.
        path: String,
        /// What went wrong, and what to do.
        why: String,
    },
    /// A key held outside this process could not sign.
    #[error("the key in {key} could not sign: {why}")]
    External {
        /// Where the key is.
        key: String,
        /// What went wrong.
        why: String,
    },
}

/// A key that signs outside this process (in an HSM or a KMS): the private
/// key never leaves it.
pub trait ExternalSigner: Send + Sync {
    /// Its public key.
    fn verifying_key(&self) -> VerifyingKey;
    /// An ed25519 signature of `message`, or why none could be made.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String>;
    /// Where the key is, for people (`pkcs11:token=custody;object=builder`).
    fn describe(&self) -> String;
}

/// A key in a device (an HSM or a KMS) that seals the instance's own
/// secrets, the event key and the secrets' key, which are then kept on disk
/// only sealed by it (envelope encryption): a copy of the data directory
/// without the device opens none of them.
pub trait SecretWrapper: Send + Sync {
    /// `secret` sealed for `context` (authenticated, randomised).
    fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, String>;
    /// What `wrap` sealed for `context`, or why it does not open.
    fn unwrap(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, String>;
    /// Where the key is, for people (`pkcs11:token=custody;object=custody-wrap`).
    fn describe(&self) -> String;
}

/// Where a service key's private half is.
#[derive(Clone)]
enum Held {
    /// In this process's memory, read from a key file.
    Memory(Box<SigningKey>),
    /// In a device that signs for us.
    External(std::sync::Arc<dyn ExternalSigner>),
}

/// A service's private key and its role.
///
/// Every handle made by [`ServiceKey::clone_key`] shares one slot, so a
/// rotation ([`ServiceKey::replace`]) reaches every task that signs for the
/// role at once; [`ServiceKey::sign_as`] signs and names the key under one
/// lock, so a signature and the key id it carries always match.
pub struct ServiceKey {
    role: KeyRole,
    key: std::sync::Arc<std::sync::RwLock<Held>>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKey")
            .field("role", &self.role)
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

impl ServiceKey {
    /// A new random key for `role`.
    pub fn generate(role: KeyRole) -> ServiceKey {
        ServiceKey::of(role, Held::Memory(Box::new(SigningKey::generate(&mut rand::rngs::OsRng))))
    }

    /// The key of `role` that `signer` holds outside this process.
    pub fn external(role: KeyRole, signer: std::sync::Arc<dyn ExternalSigner>) -> ServiceKey {
        ServiceKey::of(role, Held::External(signer))
    }

    fn of(role: KeyRole, key: Held) -> ServiceKey {
        ServiceKey { role, key: std::sync::Arc::new(std::sync::RwLock::new(key)) }
    }

    fn held(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.key.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The role this key signs for.
    pub fn role(&self) -> KeyRole {
        self.role
    }

    /// Where the key is held, when outside this process.
    pub fn held_outside(&self) -> Option<String> {
        match &*self.held() {
            Held::Memory(_) => None,
            Held::External(signer) => Some(signer.describe()),
        }
    }

    /// Another handle on the same key, for a task that signs on its own; it
    /// follows the key through rotations.
    pub fn clone_key(&self) -> ServiceKey {
        ServiceKey { role: self.role, key: self.key.clone() }
    }

    /// Makes `next` the key every handle of this one signs with from now
    /// on (a rotation). Refuses a key of another role.
    pub fn replace(&self, next: &ServiceKey) -> Result<(), KeyError> {
        if next.role != self.role {
            return Err(KeyError::Malformed {
                path: String::new(),
                why: format!("a {} key cannot replace the {} key", next.role.as_str(), self.role.as_str()),
            });
        }
        let replacement = next.held().clone();
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = replacement;
        Ok(())
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        let key = match &*self.held() {
            Held::Memory(key) => key.verifying_key(),
            Held::External(signer) => signer.verifying_key(),
        };
        PublicKey { role: self.role, key }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], KeyError> {
        self.sign_as(message).map(|(_, signature)| signature)
    }

    /// Signs `message` and says with which key, as one step. A signature an
    /// external signer returns is checked before it is used.
    pub fn sign_as(&self, message: &[u8]) -> Result<(PublicKey, [u8; 64]), KeyError> {
        match &*self.held() {
            Held::Memory(key) => {
                Ok((PublicKey { role: self.role, key: key.verifying_key() }, key.sign(message).to_bytes()))
            }
            Held::External(signer) => {
                let public = PublicKey { role: self.role, key: signer.verifying_key() };
                let signature =
                    signer.sign(message).map_err(|why| KeyError::External { key: signer.describe(), why })?;
                public.verify(message, &signature).map_err(|_| KeyError::External {
                    key: signer.describe(),
                    why: "it returned a signature that does not verify with its public key".into(),
                })?;
                Ok((public, signature))
            }
        }
    }

    /// The key as PKCS#8 v1 PEM (RFC 8410: the private key alone), the form
    /// OpenSSL and other tools read; `None` for a key held outside.
    pub fn to_pem(&self) -> Option<String> {
        use base64::Engine;
        let Held::Memory(key) = &*self.held() else { return None };
        // PrivateKeyInfo { version 0, algorithm id-Ed25519, privateKey OCTET STRING { OCTET STRING seed } }
        const PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(key.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&der);
        Some(format!("-----BEGIN PRIVATE KEY-----\n{encoded}\n-----END PRIVATE KEY-----\n"))
    }

    /// Writes the key as PKCS#8 PEM to a new file readable by its owner
    /// only. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let pem = self.to_pem().ok_or_else(|| KeyError::Malformed {
            path: path.display().to_string(),
            why: format!(
                "the {} key is held in {}, never in a file",
                self.role.as_str(),
                self.held_outside().unwrap_or_default()
            ),
        })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key written by [`ServiceKey::save`], refusing a file that
    /// others can read.
    pub fn load(role: KeyRole, path: &Path) -> Result<ServiceKey, KeyError> {
        let shown = || path.display().to_string();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(path).map_err(|source| KeyError::Io { path: shown(), source })?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(KeyError::TooOpen { path: shown(), mode: mode & 0o777 });
            }
        }
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: shown(), source })?;
        // Both PKCS#8 v1 (written now) and v2 (with the public key) are read.
        let key =
            SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Malformed { path: shown(), why: e.to_string() })?;
        Ok(ServiceKey::of(role, Held::Memory(Box::new(key))))
    }
}

/// A service's public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    role: KeyRole,
    key: VerifyingKey,
}

impl PublicKey {
    /// The public key `key`, signing for `role`.
    pub fn from_verifying_key(role: KeyRole, key: VerifyingKey) -> PublicKey {
        PublicKey { role, key }
    }

    /// The ed25519 public key in SubjectPublicKeyInfo PEM `pem`, signing for `role`.
    pub fn from_pem(role: KeyRole, pem: &str) -> Result<PublicKey, KeyError> {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let key = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| KeyError::Malformed { path: "(public key)".into(), why: e.to_string() })?;
        Ok(PublicKey { role, key })
    }

    /// The role this key signs for.
    pub fn role(&self) -> KeyRole {
        self.role
    }

    /// The key's id: the hex SHA-256 of its SubjectPublicKeyInfo DER.
    pub fn key_id(&self) -> String {
        let der = self.key.to_public_key_der().map(|d| d.into_vec()).unwrap_or_default();
        hex::encode(Sha256::digest(der))
    }

    /// The key's fingerprint as `ssh-keygen -l` shows an ed25519 key:
    /// `SHA256:` and the unpadded base64 of the SHA-256 of its SSH wire form.
    pub fn fingerprint(&self) -> String {
        use base64::Engine as _;
        let mut wire = Vec::new();
        for part in [&b"ssh-ed25519"[..], &self.key.to_bytes()[..]] {
            wire.extend_from_slice(&(part.len() as u32).to_be_bytes());
            wire.extend_from_slice(part);
        }
        format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&wire)))
    }

    /// The key as SubjectPublicKeyInfo PEM, which openssl reads.
    pub fn to_pem(&self) -> String {
        self.key.to_public_key_pem(Default::default()).unwrap_or_default()
    }

    /// The raw 32-byte key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Checks a signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| KeyError::BadSignature)?;
        self.key.verify(message, &signature).map_err(|_| KeyError::BadSignature)
    }
}

/// Reads the 32-byte secret (base64) at `path`, refusing a file others can
/// read, or makes a random one there (mode 0600, fsynced) when there is none.
pub fn load_or_create_secret(path: &std::path::Path, what: &str) -> Result<[u8; 32], KeyError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let shown = || path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|source| KeyError::Io { path: shown(), source })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(KeyError::TooOpen { path: shown(), mode: mode & 0o777 });
                }
            }
            let bytes =
                b64.decode(text.trim()).map_err(|e| KeyError::Malformed { path: shown(), why: e.to_string() })?;
            bytes.try_into().map_err(|_| KeyError::Malformed { path: shown(), why: format!("{what} is 32 bytes") })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut made = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut made);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let io = |source| KeyError::Io { path: shown(), source };
            let mut file = options.open(path).map_err(io)?;
            std::io::Write::write_all(&mut file, format!("{}\n", b64.encode(made)).as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(made)
        }
        Err(source) => Err(KeyError::Io { path: shown(), source }),
    }
}

/// The file beside `path` that holds its secret sealed by a device.
pub fn wrapped_file(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".wrapped");
    path.with_file_name(name)
}

/// Writes `text` to the new file `path` (mode 0600), fsynced with its
/// directory.
fn write_private(path: &std::path::Path, text: &str) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.display().to_string(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// The 32-byte secret of `path` kept sealed by `wrapper` in the file
/// `path.wrapped`: opened from it; or, when only the plain file exists,
/// sealed into it and the plain file removed; or, when neither does and
/// `create`, made at random and sealed. `None` when there is none and
/// `create` is false.
pub fn load_wrapped_secret(
    path: &std::path::Path,
    wrapper: &dyn SecretWrapper,
    what: &str,
    create: bool,
) -> Result<Option<[u8; 32]>, KeyError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrapped = wrapped_file(path);
    let context = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let sealed_error = |why: String| KeyError::Sealed { path: wrapped.display().to_string(), why };
    if wrapped.exists() {
        let stored = read_private_text(&wrapped)?;
        let sealed = b64.decode(stored.trim()).map_err(|e| sealed_error(format!("not base64: {e}")))?;
        let opened = wrapper.unwrap(&sealed, &context).map_err(|e| {
            sealed_error(format!("{} does not open it ({e}): it was sealed by another device key", wrapper.describe()))
        })?;
        let secret: [u8; 32] = opened.try_into().map_err(|_| sealed_error(format!("{what} is 32 bytes")))?;
        // A plain copy left by a sealing cut short is removed once sealed.
        if path.exists() && load_or_create_secret(path, what)? == secret {
            std::fs::remove_file(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        }
        return Ok(Some(secret));
    }
    let secret = if path.exists() {
        load_or_create_secret(path, what)?
    } else if create {
        let mut made = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut made);
        made
    } else {
        return Ok(None);
    };
    let sealed = wrapper
        .wrap(&secret, &context)
        .map_err(|e| sealed_error(format!("{} cannot seal: {e}", wrapper.describe())))?;
    write_private(&wrapped, &format!("{}\n", b64.encode(sealed)))?;
    if path.exists() {
        std::fs::remove_file(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
    }
    Ok(Some(secret))
}

/// The text of a file that must be its owner's only.
fn read_private_text(path: &std::path::Path) -> Result<String, KeyError> {
    let shown = || path.display().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(path).map_err(|source| KeyError::Io { path: shown(), source })?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen { path: shown(), mode: mode & 0o777 });
        }
    }
    std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: shown(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device stand-in for the file logic: XOR with a byte, the context
    /// appended (so that another context does not open).
    struct Xor(u8);

    impl SecretWrapper for Xor {
        fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, String> {
            let mut out: Vec<u8> = secret.iter().map(|b| b ^ self.0).collect();
            out.extend_from_slice(context.as_bytes());
            Ok(out)
        }
        fn unwrap(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, String> {
            let body = sealed.strip_suffix(context.as_bytes()).ok_or("another context")?;
            if self.0 == 0 {
                return Err("no such key".into());
            }
            Ok(body.iter().map(|b| b ^ self.0).collect())
        }
        fn describe(&self) -> String {
            "xor".into()
        }
    }

    #[test]
    fn a_plain_secret_is_sealed_by_the_device_and_its_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("event.key");
        assert_eq!(load_wrapped_secret(&path, &Xor(7), "the event key", false).unwrap(), None);
        let plain = load_or_create_secret(&path, "the event key").unwrap();
        let sealed = load_wrapped_secret(&path, &Xor(7), "the event key", false).unwrap();
        assert_eq!(sealed, Some(plain));
        assert!(!path.exists(), "the plain file is gone");
        assert!(wrapped_file(&path).exists());
        assert_eq!(load_wrapped_secret(&path, &Xor(7), "the event key", true).unwrap(), Some(plain));
        // Another device key does not open it, and says so.
        let error = load_wrapped_secret(&path, &Xor(0), "the event key", true).unwrap_err().to_string();
        assert!(error.contains("another device key"), "{error}");
        // Nor does the file renamed to another secret's place.
        let other = dir.path().join("secrets.key");
        std::fs::rename(wrapped_file(&path), wrapped_file(&other)).unwrap();
        assert!(load_wrapped_secret(&other, &Xor(7), "the secrets key", true).is_err());
    }

    #[test]
    fn a_keys_id_and_fingerprint_are_what_openssl_and_ssh_keygen_print() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let public = ServiceKey::generate(KeyRole::Builder).public();
        let pem = dir.path().join("builder.pub.pem");
        std::fs::write(&pem, public.to_pem()).unwrap();
        let der = std::process::Command::new("openssl")
            .args(["pkey", "-pubin", "-outform", "DER", "-in"])
            .arg(&pem)
            .output()
            .expect("openssl runs");
        assert!(der.status.success(), "{der:?}");
        assert_eq!(public.key_id(), hex::encode(Sha256::digest(&der.stdout)));
        // An OpenSSH public key line from the raw key openssl printed.
        let raw = &der.stdout[der.stdout.len() - 32..];
        let mut wire = Vec::new();
        for part in [&b"ssh-ed25519"[..], raw] {
            wire.extend_from_slice(&(part.len() as u32).to_be_bytes());
            wire.extend_from_slice(part);
        }
        let line = dir.path().join("builder.pub");
        std::fs::write(&line, format!("ssh-ed25519 {}\n", base64::engine::general_purpose::STANDARD.encode(&wire)))
            .unwrap();
        let shown = std::process::Command::new("ssh-keygen").arg("-l").arg("-f").arg(&line).output();
        let shown = shown.expect("ssh-keygen runs");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains(&public.fingerprint()), "{text} vs {}", public.fingerprint());
    }

    #[test]
    fn a_saved_key_loads_back_and_signs_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.pem");
        let key = ServiceKey::generate(KeyRole::Gate);
        key.save(&path).unwrap();
        let loaded = ServiceKey::load(KeyRole::Gate, &path).unwrap();
        assert_eq!(loaded.public(), key.public());
        let signature = loaded.sign(b"merge").unwrap();
        key.public().verify(b"merge", &signature).unwrap();
        assert!(key.public().verify(b"merged", &signature).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_and_open_ones_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.pem");
        ServiceKey::generate(KeyRole::Ledger).save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ServiceKey::load(KeyRole::Ledger, &path), Err(KeyError::TooOpen { .. })));
    }

    #[test]
    fn an_existing_key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("builder.pem");
        ServiceKey::generate(KeyRole::Builder).save(&path).unwrap();
        assert!(ServiceKey::generate(KeyRole::Builder).save(&path).is_err());
    }

    #[test]
    fn a_saved_key_reads_back_and_openssl_reads_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gate.pem");
        let key = ServiceKey::generate(KeyRole::Gate);
        key.save(&path).unwrap();
        let read = ServiceKey::load(KeyRole::Gate, &path).unwrap();
        assert_eq!(read.public().to_bytes(), key.public().to_bytes());
        // The standard tool derives the same public key from the file.
        if let Ok(output) = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&path)
            .output()
        {
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            assert_eq!(output.stdout[output.stdout.len() - 32..], key.public().to_bytes());
        }
    }
}
