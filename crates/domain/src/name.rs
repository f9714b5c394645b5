//! Names of people and groups, and e-mail addresses, validated once.

use serde::{Deserialize, Serialize};

/// Input that does not meet a rule for names, e-mail addresses or secrets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {why}")]
pub struct InvalidInput {
    /// What was being read ("user name", "e-mail address").
    pub what: &'static str,
    /// The offending value, shortened when long.
    pub value: String,
    /// Which rule it broke and what is allowed.
    pub why: String,
}

impl InvalidInput {
    pub fn new(what: &'static str, value: &str, why: impl Into<String>) -> Self {
        let value = if value.chars().count() > 80 {
            let mut short: String = value.chars().take(77).collect();
            short.push_str("...");
            short
        } else {
            value.to_owned()
        };
        InvalidInput { what, value, why: why.into() }
    }
}

/// The longest name custody accepts.
pub const MAX_NAME_LEN: usize = 64;

/// What every name must look like, in words for error messages.
pub const NAME_RULE: &str = "use 1 to 64 characters: lowercase letters a-z, digits 0-9, '-', '_' and '.', \
starting with a letter or digit, with no '..' and not ending in '.', '.git' or '.lock'";

/// Checks the characters shared by every kind of name.
///
/// Names become path components (repositories), URL segments and git ref
/// parts, so the rule is strict: no separators, no `..`, nothing a shell or
/// a URL would treat specially, and only lowercase so two names cannot
/// differ only in case.
fn check_name(what: &'static str, value: &str, reserved: &[&str]) -> Result<(), InvalidInput> {
    let fail = |why: &str| Err(InvalidInput::new(what, value, why));
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return fail(NAME_RULE);
    }
    let first = value.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail(NAME_RULE);
    }
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(&c);
    if !value.bytes().all(allowed) {
        return fail(NAME_RULE);
    }
    if value.contains("..") || value.ends_with('.') || value.ends_with(".git") || value.ends_with(".lock") {
        return fail(NAME_RULE);
    }
    if reserved.contains(&value) {
        return Err(InvalidInput::new(what, value, format!("{value:?} is reserved by custody; choose another name")));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as a name of this kind.
            pub fn parse(value: &str) -> Result<Self, InvalidInput> {
                check_name($what, value, $reserved)?;
                Ok($name(value.to_owned()))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(value: String) -> Result<Self, InvalidInput> {
                check_name($what, &value, $reserved)?;
                Ok($name(value))
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidInput;
            fn from_str(value: &str) -> Result<Self, InvalidInput> {
                Self::parse(value)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                name_schema($what, $reserved)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

/// The pattern (an ECMA-262 regular expression) of a name that is none of
/// `reserved`: [`NAME_RULE`] as a pattern.
pub fn name_pattern(reserved: &[&str]) -> String {
    let mut pattern = String::from("^");
    if !reserved.is_empty() {
        let words: Vec<String> = reserved.iter().map(|w| w.replace('.', "\\.")).collect();
        pattern.push_str(&format!("(?!(?:{})$)", words.join("|")));
    }
    pattern.push_str("(?!.*\\.(?:git|lock)$)[a-z0-9][a-z0-9_-]*(?:\\.[a-z0-9_-]+)*$");
    pattern
}

/// The schema of a name: its pattern, its length and its rule in words.
#[cfg(feature = "openapi")]
pub fn name_schema(what: &str, reserved: &[&str]) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(name_pattern(reserved)))
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_LEN))
        .description(Some(format!("A {what}: {NAME_RULE}.")))
        .into()
}

/// Names custody uses for itself in audit events and URLs.
pub const RESERVED_USER_NAMES: &[&str] =
    &["custody", "system", "builder", "deployer", "gate", "ledger", "anonymous", "me"];

name_type!(
    /// The unique, unchangeable name of a person.
    UserName,
    "user name",
    RESERVED_USER_NAMES
);

name_type!(
    /// The name of a group of people, such as `release-managers`.
    GroupName,
    "group name",
    &[]
);

/// Names that would collide with custody's own URL paths.
pub const RESERVED_PROJECT_NAMES: &[&str] = &[
    "api", "admin", "login", "logout", "static", "assets", "healthz", "readyz", "metrics", "new", "settings", "audit",
];

name_type!(
    /// The name of a project and its repository.
    ProjectName,
    "project name",
    RESERVED_PROJECT_NAMES
);

impl GroupName {
    /// The built-in group whose members are admins.
    pub fn admins() -> Self {
        GroupName("admins".to_owned())
    }

    /// The built-in group whose members may read everything.
    pub fn auditors() -> Self {
        GroupName("auditors".to_owned())
    }

    /// Whether this is the built-in `admins` group.
    pub fn is_admins(&self) -> bool {
        self.0 == "admins"
    }

    /// Whether custody created this group itself and keeps it.
    pub fn is_builtin(&self) -> bool {
        self.0 == "admins" || self.0 == "auditors"
    }
}

/// An e-mail address, kept in lowercase so that two spellings of one address
/// cannot belong to two people.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// [`Email::parse`]'s rule as a pattern (an ECMA-262 regular expression),
/// with at most 254 characters.
pub const EMAIL_PATTERN: &str = "^[^@\\s<>\\u0000-\\u001f\\u007f-\\u009f]+@(?=[^@]*\\.)[^@\\s<>.\\u0000-\\u001f\\u007f-\\u009f](?:[^@\\s<>\\u0000-\\u001f\\u007f-\\u009f]*[^@\\s<>.\\u0000-\\u001f\\u007f-\\u009f])?$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Email {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(EMAIL_PATTERN))
            .min_length(Some(3))
            .max_length(Some(254))
            .description(Some("An e-mail address such as name@example.com: no spaces, one '@', a domain with a dot."))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Email {}

impl Email {
    /// Validates and normalises an address: one `@`, a non-empty local part,
    /// a domain with a dot, no spaces or control characters, at most 254 bytes.
    pub fn parse(value: &str) -> Result<Self, InvalidInput> {
        const RULE: &str = "expected an address like name@example.com (at most 254 characters, no spaces)";
        let fail = || Err(InvalidInput::new("e-mail address", value, RULE));
        if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail();
        }
        let Some((local, domain)) = value.split_once('@') else {
            return fail();
        };
        if local.is_empty()
            || domain.contains('@')
            || !domain.contains('.')
            || domain.starts_with('.')
            || domain.ends_with('.')
            || value.contains(['<', '>'])
        {
            return fail();
        }
        Ok(Email(value.to_lowercase()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = InvalidInput;
    fn try_from(value: String) -> Result<Self, InvalidInput> {
        Email::parse(&value)
    }
}

impl std::str::FromStr for Email {
    type Err = InvalidInput;
    fn from_str(value: &str) -> Result<Self, InvalidInput> {
        Email::parse(value)
    }
}

impl From<Email> for String {
    fn from(email: Email) -> String {
        email.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an environment's name: the rules of every name.
pub fn check_environment_name(value: &str) -> Result<(), InvalidInput> {
    check_name("environment name", value, &[])
}

/// The schema of an environment's name: [`check_environment_name`]'s rule.
#[cfg(feature = "openapi")]
pub fn environment_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    name_schema("environment name", &[])
}

/// Checks a display name: 1 to 128 characters, no control characters.
pub fn check_display_name(value: &str) -> Result<(), InvalidInput> {
    if value.trim().is_empty() || value.chars().count() > 128 || value.chars().any(char::is_control) {
        return Err(InvalidInput::new("display name", value, "use 1 to 128 characters without control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_accepted() {
        for name in ["alice", "bob-2", "release.managers", "qa_team", "7eleven"] {
            assert_eq!(UserName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn names_that_could_escape_a_path_or_alias_another_are_refused() {
        for name in [
            "",
            "..",
            "a/b",
            "a\\b",
            "../etc",
            "a..b",
            "Alice",
            "-rf",
            ".hidden",
            "a b",
            "x.",
            "x.lock",
            "x.git",
            "a\0b",
            "ünïcode",
            "a:b",
            "a@b",
            &"x".repeat(65),
        ] {
            let err = UserName::parse(name).unwrap_err();
            assert!(err.to_string().contains("not valid"), "{name:?}: {err}");
        }
    }

    #[test]
    fn reserved_user_names_are_refused_with_a_reason() {
        let err = UserName::parse("custody").unwrap_err();
        assert!(err.why.contains("reserved"), "{err}");
    }

    #[test]
    fn project_names_cannot_take_custodys_own_paths() {
        assert!(ProjectName::parse("payments").is_ok());
        for name in ["api", "metrics", "../payments", "payments.git"] {
            assert!(ProjectName::parse(name).is_err(), "{name}");
        }
    }

    #[test]
    fn emails_are_lowercased_so_spellings_cannot_split_a_person() {
        assert_eq!(Email::parse("Alice@Example.COM").unwrap().as_str(), "alice@example.com");
        for bad in ["alice", "@example.com", "alice@", "alice@localhost", "a b@x.org", "a@b@c.org", "<a@b.org>"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
