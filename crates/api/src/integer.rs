//! Integers as JSON Schema reads them: `5` and `5.0` are the same integer,
//! so a client whose JSON writes every number with a decimal point is
//! understood; `5.5`, or a number out of range, is refused.

use serde::de::{Deserializer, Error, Visitor};

struct Integer<T>(std::marker::PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> Visitor<'_> for Integer<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<T, E> {
        // Within ±2^53 a float holds every integer exactly.
        if value.fract() != 0.0 || value.abs() > 9_007_199_254_740_992.0 {
            return Err(E::custom(format!("{value} is not an integer")));
        }
        self.visit_i64(value as i64)
    }
}

/// An integer field.
pub fn required<'de, D: Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Integer(std::marker::PhantomData))
}

/// An optional integer field (with `#[serde(default)]`).
pub fn optional<'de, D: Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
    struct Maybe<T>(std::marker::PhantomData<T>);
    impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for Maybe<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            required(d).map(Some)
        }
    }
    d.deserialize_option(Maybe(std::marker::PhantomData))
}
