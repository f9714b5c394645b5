//! Service keys held in an HSM or KMS, through PKCS#11.
//!
//! The token (found by its label) holds an ed25519 key pair per role,
//! labelled `builder`, `gate`, `deployer` or `ledger` (made with the
//! device's own tools, such as `pkcs11-tool --keypairgen --key-type
//! EC:edwards25519 --label builder`). custody logs in with the user PIN,
//! reads each public key, and signs with `CKM_EDDSA`: the private key never
//! leaves the device, and the data directory holds no file of it.
//!
//! An AES key labelled `custody-wrap` in the same token (`pkcs11-tool
//! --keygen --key-type AES:32 --label custody-wrap`) seals the instance's
//! own secrets, the event key and the secrets' key, with `CKM_AES_GCM`: the
//! data directory then keeps them only sealed.
//!
//! **Architecture invariant:** this crate knows PKCS#11 and the formats'
//! signer interface only: nothing of the database, HTTP or policy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use custody_formats::keys::{ExternalSigner, SecretWrapper};
use custody_formats::{KeyRole, ServiceKey};
use ed25519_dalek::VerifyingKey;

/// Where the keys are: the PKCS#11 module, the token's label and its user PIN.
#[derive(Clone)]
pub struct Settings {
    /// The module's shared library, such as `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The user PIN.
    pub pin: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("module", &self.module).field("token", &self.token).finish_non_exhaustive()
    }
}

/// Why the device's keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The module could not be loaded or answered with an error.
    #[error("PKCS#11 module {module}: {why}")]
    Module {
        /// The module.
        module: String,
        /// What it said.
        why: String,
    },
    /// No slot holds a token of that label.
    #[error("no PKCS#11 token is labelled {0:?}: check the token's label (`pkcs11-tool --list-slots`)")]
    NoToken(String),
    /// A key is missing its public half, or is not ed25519.
    #[error("the {role} key in token {token:?}: {why}")]
    Key {
        /// The role.
        role: &'static str,
        /// The token.
        token: String,
        /// What is wrong.
        why: String,
    },
}

fn module_error(settings: &Settings) -> impl Fn(CkError) -> HsmError + '_ {
    move |e| HsmError::Module { module: settings.module.display().to_string(), why: e.to_string() }
}

/// The keys of `roles` the token holds (a role the token has no key of is
/// left out, for the data directory's file to provide), each signing in
/// the device.
pub fn open_keys(settings: &Settings, roles: &[KeyRole]) -> Result<Vec<ServiceKey>, HsmError> {
    let pkcs11 = Pkcs11::new(&settings.module).map_err(module_error(settings))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(module_error(settings)(e)),
    }
    let slot = token_slot(&pkcs11, settings)?;
    let mut keys = Vec::new();
    for role in roles {
        let session = pkcs11.open_ro_session(slot).map_err(module_error(settings))?;
        match session.login(UserType::User, Some(&AuthPin::new(settings.pin.clone().into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(module_error(settings)(e)),
        }
        if let Some(signer) = Pkcs11Signer::find(session, settings, *role)? {
            keys.push(ServiceKey::external(*role, Arc::new(signer)));
        }
    }
    Ok(keys)
}

/// The label of the AES key that seals the instance's own secrets.
pub const WRAP_LABEL: &str = "custody-wrap";

/// The token's `custody-wrap` AES key, sealing in the device; `None` when
/// the token holds none (the secrets are then files).
pub fn open_wrapper(settings: &Settings) -> Result<Option<Arc<dyn SecretWrapper>>, HsmError> {
    let pkcs11 = Pkcs11::new(&settings.module).map_err(module_error(settings))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(module_error(settings)(e)),
    }
    let slot = token_slot(&pkcs11, settings)?;
    let session = pkcs11.open_ro_session(slot).map_err(module_error(settings))?;
    match session.login(UserType::User, Some(&AuthPin::new(settings.pin.clone().into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(module_error(settings)(e)),
    }
    let bad = |why: String| HsmError::Key { role: WRAP_LABEL, token: settings.token.clone(), why };
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(WRAP_LABEL.as_bytes().to_vec())])
        .map_err(module_error(settings))?;
    let key = match found.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err(bad(format!("{} secret keys carry the label; keep one", found.len()))),
    };
    let kind = session.get_attributes(key, &[AttributeType::KeyType]).map_err(module_error(settings))?;
    if !kind.iter().any(|a| matches!(a, Attribute::KeyType(k) if *k == KeyType::AES)) {
        return Err(bad("it is not an AES key".into()));
    }
    let name = format!("pkcs11:token={};object={WRAP_LABEL}", settings.token);
    Ok(Some(Arc::new(Pkcs11Wrapper { session: Mutex::new(session), key, name })))
}

/// The token's AES key, sealing with AES-GCM: a random 12-byte IV from the
/// device, then the ciphertext and its 16-byte tag; the context is the
/// additional authenticated data.
struct Pkcs11Wrapper {
    session: Mutex<Session>,
    key: ObjectHandle,
    name: String,
}

const IV_BYTES: usize = 12;

impl SecretWrapper for Pkcs11Wrapper {
    fn wrap(&self, secret: &[u8], context: &str) -> Result<Vec<u8>, String> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut iv = session.generate_random_vec(IV_BYTES as u32).map_err(|e| e.to_string())?;
        let params = GcmParams::new(&mut iv, context.as_bytes(), 128.into()).map_err(|e| e.to_string())?;
        let sealed = session.encrypt(&Mechanism::AesGcm(params), self.key, secret).map_err(|e| e.to_string())?;
        let mut out = iv;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, String> {
        if sealed.len() < IV_BYTES + 16 {
            return Err("too short to be sealed".into());
        }
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut iv = sealed[..IV_BYTES].to_vec();
        let params = GcmParams::new(&mut iv, context.as_bytes(), 128.into()).map_err(|e| e.to_string())?;
        session.decrypt(&Mechanism::AesGcm(params), self.key, &sealed[IV_BYTES..]).map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

fn token_slot(pkcs11: &Pkcs11, settings: &Settings) -> Result<Slot, HsmError> {
    for slot in pkcs11.get_slots_with_token().map_err(module_error(settings))? {
        let info = pkcs11.get_token_info(slot).map_err(module_error(settings))?;
        if info.label().trim_end() == settings.token {
            return Ok(slot);
        }
    }
    Err(HsmError::NoToken(settings.token.clone()))
}

/// One role's key pair in the token, signing in the device.
struct Pkcs11Signer {
    session: Mutex<Session>,
    private: ObjectHandle,
    public: VerifyingKey,
    name: String,
}

impl Pkcs11Signer {
    /// The key pair labelled with the role's name; `None` when there is none.
    fn find(session: Session, settings: &Settings, role: KeyRole) -> Result<Option<Pkcs11Signer>, HsmError> {
        let bad = |why: String| HsmError::Key { role: role.as_str(), token: settings.token.clone(), why };
        let label = Attribute::Label(role.as_str().as_bytes().to_vec());
        let find = |class: ObjectClass| {
            session.find_objects(&[Attribute::Class(class), label.clone()]).map_err(module_error(settings))
        };
        let private = find(ObjectClass::PRIVATE_KEY)?;
        let private = match private.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(bad(format!("{} private keys carry the label; keep one", private.len()))),
        };
        let kind = session.get_attributes(private, &[AttributeType::KeyType]).map_err(module_error(settings))?;
        if !kind.iter().any(|a| matches!(a, Attribute::KeyType(k) if *k == KeyType::EC_EDWARDS)) {
            return Err(bad("it is not an EdDSA (ed25519) key".into()));
        }
        let public = match find(ObjectClass::PUBLIC_KEY)?.as_slice() {
            [one] => *one,
            found => return Err(bad(format!("{} public keys carry the label; keep exactly one", found.len()))),
        };
        let point = session.get_attributes(public, &[AttributeType::EcPoint]).map_err(module_error(settings))?;
        let point = point
            .into_iter()
            .find_map(|a| if let Attribute::EcPoint(bytes) = a { Some(bytes) } else { None })
            .ok_or_else(|| bad("its public key has no EC point".into()))?;
        let public = ed25519_point(&point).ok_or_else(|| bad("its public key is not an ed25519 point".into()))?;
        let name = format!("pkcs11:token={};object={}", settings.token, role.as_str());
        Ok(Some(Pkcs11Signer { session: Mutex::new(session), private, public, name }))
    }
}

/// An ed25519 public key from `CKA_EC_POINT`: the 32 bytes, bare or in a
/// DER OCTET STRING.
fn ed25519_point(point: &[u8]) -> Option<VerifyingKey> {
    let raw = match point {
        [0x04, 32, rest @ ..] if rest.len() == 32 => rest,
        bare if bare.len() == 32 => bare,
        _ => return None,
    };
    VerifyingKey::from_bytes(raw.try_into().ok()?).ok()
}

impl ExternalSigner for Pkcs11Signer {
    fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let signature = session.sign(&mechanism, self.private, message).map_err(|e| e.to_string())?;
        signature
            .try_into()
            .map_err(|s: Vec<u8>| format!("the device returned {} bytes, not a 64-byte signature", s.len()))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_point_reads_bare_or_wrapped_and_nothing_else() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(key.as_bytes());
        assert_eq!(ed25519_point(&wrapped), Some(key));
        assert_eq!(ed25519_point(key.as_bytes()), Some(key));
        assert_eq!(ed25519_point(&wrapped[..33]), None);
        assert_eq!(ed25519_point(&[0x04, 31, 1, 2]), None);
    }
}
