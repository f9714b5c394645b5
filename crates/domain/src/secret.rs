//! The shape of the bearer secrets custody hands out: tokens and invite codes.
//!
//! A secret reads `PREFIX_ID_SECRET`. The prefix makes it recognisable (to
//! people and to secret scanners), the id finds the stored record without
//! revealing anything, and the secret part carries 256 random bits of which
//! only a hash is stored.

/// The kinds of bearer secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// An API and git token (`cst_…`).
    Token,
    /// A one-time invite code (`cin_…`).
    Invite,
}

impl SecretKind {
    /// The recognisable prefix of this kind.
    pub fn prefix(self) -> &'static str {
        match self {
            SecretKind::Token => "cst",
            SecretKind::Invite => "cin",
        }
    }

    fn what(self) -> &'static str {
        match self {
            SecretKind::Token => "token",
            SecretKind::Invite => "invite code",
        }
    }
}

/// Length of the public id part.
pub const ID_LEN: usize = 12;
/// Length of the secret part: 32 bytes in unpadded base64url.
pub const SECRET_LEN: usize = 43;

/// A bearer secret split into its stored id and its secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretParts<'a> {
    /// The public id of the record.
    pub id: &'a str,
    /// The secret part; only its hash is stored.
    pub secret: &'a str,
}

impl std::fmt::Debug for SecretParts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretParts").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Puts a secret together from its parts.
pub fn format_secret(kind: SecretKind, id: &str, secret: &str) -> String {
    format!("{}_{id}_{secret}", kind.prefix())
}

/// Splits a presented secret, checking its shape. The error never echoes the
/// secret back.
pub fn parse_secret(kind: SecretKind, presented: &str) -> Result<SecretParts<'_>, crate::InvalidInput> {
    let invalid = || {
        crate::InvalidInput::new(
            kind.what(),
            "(hidden)",
            format!("expected {}_ followed by an id and a secret, as custody printed it", kind.prefix()),
        )
    };
    let rest = presented.strip_prefix(kind.prefix()).and_then(|rest| rest.strip_prefix('_')).ok_or_else(invalid)?;
    let (id, secret) = rest.split_at_checked(ID_LEN).ok_or_else(invalid)?;
    let secret = secret.strip_prefix('_').ok_or_else(invalid)?;
    let id_ok = id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok =
        secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok || !secret_ok {
        return Err(invalid());
    }
    Ok(SecretParts { id, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_token_parses_back() {
        let secret = "A".repeat(SECRET_LEN);
        let token = format_secret(SecretKind::Token, "abcdefgh1234", &secret);
        let parts = parse_secret(SecretKind::Token, &token).unwrap();
        assert_eq!(parts.id, "abcdefgh1234");
        assert_eq!(parts.secret, secret);
    }

    #[test]
    fn an_invite_code_is_not_a_token() {
        let code = format_secret(SecretKind::Invite, "abcdefgh1234", &"A".repeat(SECRET_LEN));
        assert!(parse_secret(SecretKind::Token, &code).is_err());
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for bad in [
            "",
            "cst_",
            "cst_short_x",
            "cst_abcdefgh1234_tooshort",
            "cst_ABCDEFGH1234_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let err = parse_secret(SecretKind::Token, bad).unwrap_err();
            assert!(!err.to_string().contains("AAAA"), "{err}");
        }
    }
}
