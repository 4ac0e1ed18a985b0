//! The ids every service shares: a group id ([`Gid`]), a message id
//! ([`MsgId`]) and a position in a group ([`Seq`]). On the wire they are
//! `uint64`, in storage signed 64-bit integers; each type holds only values
//! both can carry (ids positive, seqs from 0), so a value from a request is
//! checked once, at the edge (`TryFrom<u64>`), a row is checked as it is
//! read (`TryFrom<i64>`, which `#[sqlx(try_from = "i64")]` runs, turning a
//! bad row into a decode error rather than a silent 0), and the way back to
//! the wire cannot fail ([`Gid::wire`]).

use std::fmt;

use crate::Error;

/// A value that is not an id of its kind: zero, negative, or past the
/// storage range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {rule}, got {got}")]
pub struct InvalidId {
    what: &'static str,
    rule: &'static str,
    got: i128,
}

impl InvalidId {
    /// The refusal of a request whose `field` held it.
    pub fn at(self, field: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::invalid(field, format!("must be {}", self.rule))
    }
}

/// A stored value that is not an id is a fault of ours, not of the caller:
/// it fails as a storage decode error (INTERNAL), never as a silent 0. A
/// request's value is checked with `parse`, which names its field instead.
impl From<InvalidId> for Error {
    fn from(invalid: InvalidId) -> Self {
        Error::Storage(sqlx::Error::Decode(Box::new(invalid)))
    }
}

impl From<InvalidId> for tonic::Status {
    fn from(invalid: InvalidId) -> Self {
        Error::from(invalid).into()
    }
}

/// A request's positive id within storage range (a group, a message, a seq
/// that must follow another), for storage; the refusal names `field`.
pub fn positive(raw: u64, field: impl Into<std::borrow::Cow<'static, str>>) -> Result<i64, Error> {
    i64::try_from(raw)
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| Error::invalid(field, "must be a positive id"))
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:literal, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(i64);

        impl $name {
            /// The smallest value of this kind.
            pub const MIN: $name = $name($min);

            /// The value for the wire.
            pub fn wire(self) -> u64 {
                // Never negative: checked on the way in.
                self.0.unsigned_abs()
            }

            /// The value for storage.
            pub fn stored(self) -> i64 {
                self.0
            }

            /// Checks a request's `field`: the refusal names it.
            pub fn parse(raw: u64, field: impl Into<std::borrow::Cow<'static, str>>) -> Result<Self, Error> {
                Self::try_from(raw).map_err(|invalid| invalid.at(field))
            }

            fn invalid(got: i128) -> InvalidId {
                InvalidId { what: $what, rule: $rule, got }
            }
        }

        impl TryFrom<u64> for $name {
            type Error = InvalidId;

            fn try_from(raw: u64) -> Result<Self, InvalidId> {
                i64::try_from(raw)
                    .ok()
                    .filter(|&v| v >= $min)
                    .map(Self)
                    .ok_or_else(|| Self::invalid(i128::from(raw)))
            }
        }

        impl TryFrom<i64> for $name {
            type Error = InvalidId;

            fn try_from(raw: i64) -> Result<Self, InvalidId> {
                if raw >= $min {
                    Ok(Self(raw))
                } else {
                    Err(Self::invalid(i128::from(raw)))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A group id: positive.
    Gid, "a group id", 1, "a positive group id"
);
id_type!(
    /// A message id: positive.
    MsgId, "a message id", 1, "a positive message id"
);
id_type!(
    /// A position in a group: 0 before the first message, then 1, 2, …
    Seq, "a seq", 0, "0 or more, within 2^63"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_positive_and_seqs_start_at_zero_within_storage() {
        assert!(Gid::try_from(0u64).is_err());
        assert!(MsgId::try_from(0u64).is_err());
        assert_eq!(Seq::try_from(0u64).map(Seq::wire), Ok(0));
        for too_big in [u64::MAX, 1 << 63] {
            assert!(Gid::try_from(too_big).is_err());
            assert!(Seq::try_from(too_big).is_err());
        }
        let largest = (1u64 << 63) - 1;
        assert_eq!(Gid::try_from(largest).map(Gid::wire), Ok(largest));
        assert!(Gid::try_from(-1i64).is_err(), "a stored row is checked too");
        assert!(Seq::try_from(-1i64).is_err());
        assert_eq!(
            Gid::try_from(7i64).map(Gid::stored),
            Ok(7),
            "storage round trip"
        );
    }

    #[test]
    fn a_bad_request_field_is_named() {
        let refused: tonic::Status = Gid::parse(0, "groups[2].gid").expect_err("0").into();
        assert_eq!(
            crate::error::field_violations(&refused),
            vec![(
                "groups[2].gid".to_owned(),
                "must be a positive group id".to_owned()
            )]
        );
    }

    proptest::proptest! {
        #[test]
        fn the_wire_round_trips_whatever_is_taken(raw: u64) {
            if let Ok(gid) = Gid::try_from(raw) {
                proptest::prop_assert_eq!(gid.wire(), raw);
                proptest::prop_assert_eq!(Gid::try_from(gid.stored()), Ok(gid));
            }
            if let Ok(seq) = Seq::try_from(raw) {
                proptest::prop_assert_eq!(seq.wire(), raw);
            }
        }
    }
}
