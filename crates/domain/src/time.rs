//! Points in time, stored as milliseconds and shown as RFC 3339.

use serde::{Deserialize, Serialize};

/// A moment in UTC with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The moment `ms` milliseconds after the Unix epoch.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Reads an RFC 3339 time such as `2026-11-28T19:00:00Z`.
    pub fn parse_rfc3339(value: &str) -> Result<Self, crate::InvalidInput> {
        let parsed = ::time::OffsetDateTime::parse(value, &::time::format_description::well_known::Rfc3339)
            .map_err(|_| crate::InvalidInput::new("time", value, "expected RFC 3339, such as 2026-11-28T19:00:00Z"))?;
        Ok(Timestamp((parsed.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    /// The time in RFC 3339, UTC, with milliseconds.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        let moment =
            ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(::time::OffsetDateTime::UNIX_EPOCH);
        let format =
            ::time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
        moment.format(&format).unwrap_or_default()
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_to_the_millisecond() {
        let t = Timestamp::parse_rfc3339("2026-11-28T19:42:40.123Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-28T19:42:40.123Z");
        assert_eq!(Timestamp::parse_rfc3339("2026-11-28T20:42:40.123+01:00").unwrap(), t);
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
