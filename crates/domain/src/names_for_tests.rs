//! Names the domain's tests write as plain strings.

use std::collections::BTreeSet;

use crate::UserName;

/// A user name known to be valid.
pub(crate) fn user(name: &str) -> UserName {
    UserName::parse(name).unwrap()
}

/// A set of user names known to be valid.
pub(crate) fn set(names: &[&str]) -> BTreeSet<UserName> {
    names.iter().map(|n| user(n)).collect()
}
