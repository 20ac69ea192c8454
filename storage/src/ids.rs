//! Typed ids for accounts, API keys and holds. They print as `acct_7`,
//! `key_12`, `hold_3` and parse back from exactly that text; in storage they
//! are plain integers. Handing out new ids is `Store::next_id`'s job.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that is not the id it was expected to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid id (expected {prefix}<digits>)")]
pub struct IdError {
    pub prefix: &'static str,
    pub input: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// What `Display` puts before the number.
            pub const PREFIX: &'static str = $prefix;

            pub const fn new(id: u64) -> Self {
                Self(id)
            }

            pub const fn get(self) -> u64 {
                self.0
            }

            /// Big-endian bytes, so keys sort in id order.
            pub(crate) const fn to_key(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(input: &str) -> Result<Self, IdError> {
                parse_prefixed(input, $prefix)
                    .map(Self)
                    .ok_or_else(|| IdError { prefix: $prefix, input: input.to_owned() })
            }
        }
    };
}

id_type!(
    /// An account, the unit that owns a balance.
    AccountId,
    "acct_"
);
id_type!(
    /// An API key; the secret itself is never stored, only its SHA-256.
    KeyId,
    "key_"
);
id_type!(
    /// A hold: money reserved for one in-flight request.
    HoldId,
    "hold_"
);

/// The number after `prefix`, in canonical form only (no sign, no leading
/// zeros), so that parsing and printing are exact inverses.
fn parse_prefixed(input: &str, prefix: &str) -> Option<u64> {
    let digits = input.strip_prefix(prefix)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical { digits.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn displays_with_prefix() {
        assert_eq!(AccountId::new(7).to_string(), "acct_7");
        assert_eq!(KeyId::new(12).to_string(), "key_12");
        assert_eq!(HoldId::new(3).to_string(), "hold_3");
    }

    #[test]
    fn parses_only_canonical_text() {
        assert_eq!("acct_42".parse::<AccountId>(), Ok(AccountId::new(42)));
        assert_eq!("key_0".parse::<KeyId>(), Ok(KeyId::new(0)));
        for bad in [
            "acct_",
            "acct_+1",
            "acct_01",
            "key_1",
            "ACCT_1",
            "acct_1 ",
            "acct_99999999999999999999",
        ] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad:?} parsed");
        }
        let err = "hold_x".parse::<HoldId>().unwrap_err();
        assert_eq!(err.prefix, "hold_");
    }

    #[test]
    fn serializes_as_plain_number() {
        assert_eq!(serde_json::to_string(&HoldId::new(9)).unwrap(), "9");
    }

    proptest! {
        #[test]
        fn display_round_trips(n in any::<u64>()) {
            prop_assert_eq!(AccountId::new(n).to_string().parse::<AccountId>(), Ok(AccountId::new(n)));
            prop_assert_eq!(KeyId::new(n).to_string().parse::<KeyId>(), Ok(KeyId::new(n)));
            prop_assert_eq!(HoldId::new(n).to_string().parse::<HoldId>(), Ok(HoldId::new(n)));
        }
    }
}
