//! What a token may be used for.

use serde::{Deserialize, Serialize};

/// One permission a token can carry. A token never gives more than its
/// owner has: an `admin` scope acts only while its owner is an admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read what its owner may read.
    Read,
    /// Change what its owner may change (push, open changes, review).
    Write,
    /// Administer users, groups and grants, when its owner is an admin.
    Admin,
}

impl Scope {
    /// Every scope, in order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = crate::InvalidInput;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == value)
            .ok_or_else(|| crate::InvalidInput::new("scope", value, "expected read, write or admin"))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes. `write` and `admin` each include `read`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);

    /// The set holding exactly these scopes, plus `read` when any is given.
    pub fn of(scopes: &[Scope]) -> Scopes {
        let mut set = Scopes::NONE;
        for scope in scopes {
            set.0 |= 1 << (*scope as u8);
        }
        if set != Scopes::NONE {
            set.0 |= 1 << (Scope::Read as u8);
        }
        set
    }

    /// Whether the set holds `scope`.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & (1 << (scope as u8)) != 0
    }

    /// The scopes in the set, in order.
    pub fn to_vec(self) -> Vec<Scope> {
        Scope::ALL.into_iter().filter(|s| self.contains(*s)).collect()
    }

    /// The scopes as a comma-separated list, as stored.
    pub fn to_list(self) -> String {
        self.to_vec().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Reads a comma-separated list such as `read,write`.
    pub fn parse_list(list: &str) -> Result<Scopes, crate::InvalidInput> {
        let scopes = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Scope>, _>>()?;
        if scopes.is_empty() {
            return Err(crate::InvalidInput::new("scopes", list, "name at least one of read, write, admin"));
        }
        Ok(Scopes::of(&scopes))
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_vec().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let scopes = Vec::<Scope>::deserialize(deserializer)?;
        if scopes.is_empty() {
            return Err(serde::de::Error::custom("name at least one of read, write, admin"));
        }
        Ok(Scopes::of(&scopes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_admin_imply_read() {
        let set = Scopes::of(&[Scope::Write]);
        assert!(set.contains(Scope::Read) && set.contains(Scope::Write) && !set.contains(Scope::Admin));
        assert_eq!(Scopes::parse_list("admin").unwrap().to_list(), "read,admin");
    }

    #[test]
    fn unknown_or_empty_scope_lists_are_refused() {
        assert!(Scopes::parse_list("read,root").is_err());
        assert!(Scopes::parse_list(" , ").is_err());
    }
}
