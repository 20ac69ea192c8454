//! `Nanos`, tokun's one money type: an integer number of nano-USD with checked
//! arithmetic, strict decimal parsing and a canonical display. Prices and cost
//! rounding live in `price`; balances and holds live in `ledger`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Nano-USD in one US dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// Decimal places of a nano-dollar.
const FRACTION_DIGITS: usize = 9;

/// An amount of money in nano-USD (`1 USD = 10^9`). Signed, because operator
/// adjustments and account floors can be negative; ledger amounts are not.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(i64);

/// Why a string or config number is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{input:?} is not a decimal USD amount (expected e.g. \"5\", \"5.00\", \"-0.25\")")]
    Invalid { input: String },
    #[error("{input:?} has more precision than a nano-dollar (at most 9 decimal places)")]
    TooPrecise { input: String },
    #[error("{input:?} is out of range for an amount of nano-USD")]
    Overflow { input: String },
    #[error("{input} is not a finite number")]
    NotFinite { input: String },
    #[error("{input} is negative; this amount must be zero or more")]
    Negative { input: String },
}

impl Nanos {
    pub const ZERO: Nanos = Nanos(0);
    pub const MAX: Nanos = Nanos(i64::MAX);

    pub const fn new(nanos: i64) -> Nanos {
        Nanos(nanos)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    /// Whole dollars, `None` on overflow.
    pub fn from_whole_usd(usd: i64) -> Option<Nanos> {
        usd.checked_mul(NANOS_PER_USD).map(Nanos)
    }

    pub fn checked_add(self, other: Nanos) -> Option<Nanos> {
        self.0.checked_add(other.0).map(Nanos)
    }

    pub fn checked_sub(self, other: Nanos) -> Option<Nanos> {
        self.0.checked_sub(other.0).map(Nanos)
    }

    /// `self × factor`, e.g. a per-unit amount times a count.
    pub fn checked_mul(self, factor: u64) -> Option<Nanos> {
        let factor = i64::try_from(factor).ok()?;
        self.0.checked_mul(factor).map(Nanos)
    }

    pub fn checked_neg(self) -> Option<Nanos> {
        self.0.checked_neg().map(Nanos)
    }

    pub fn saturating_add(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(other.0))
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses a strict decimal USD amount: an optional leading `-`, at least
    /// one digit, and optionally `.` followed by one to nine digits.
    /// No `+`, no exponent, no spaces, no thousands separators.
    pub fn parse_usd(input: &str) -> Result<Nanos, MoneyError> {
        let invalid = || MoneyError::Invalid {
            input: input.to_owned(),
        };
        let (negative, body) = match input.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let (whole, fraction) = match body.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (body, ""),
        };
        if !is_digits(whole) || (body.contains('.') && !is_digits(fraction)) {
            return Err(invalid());
        }
        if fraction.len() > FRACTION_DIGITS {
            return Err(MoneyError::TooPrecise {
                input: input.to_owned(),
            });
        }
        let overflow = || MoneyError::Overflow {
            input: input.to_owned(),
        };
        let whole = digits_value(whole).ok_or_else(overflow)?;
        let scale = 10u128.pow((FRACTION_DIGITS - fraction.len()) as u32);
        let fraction = digits_value(fraction).ok_or_else(overflow)? * scale;
        let magnitude = whole
            .checked_mul(NANOS_PER_USD as u128)
            .and_then(|n| n.checked_add(fraction))
            .ok_or_else(overflow)?;
        let magnitude = i128::try_from(magnitude).map_err(|_| overflow())?;
        let signed = if negative { -magnitude } else { magnitude };
        i64::try_from(signed).map(Nanos).map_err(|_| overflow())
    }

    /// Converts a USD amount read from configuration. The number is printed
    /// with `{}` (Rust's shortest decimal that reads back as the same `f64`)
    /// and that text is parsed exactly, so `0.15` becomes exactly
    /// 150,000,000 nanos — never 149,999,999 or 150,000,001. Negative, NaN and
    /// infinite values are errors, as are values finer than a nano-dollar.
    pub fn from_usd_f64(usd: f64) -> Result<Nanos, MoneyError> {
        if !usd.is_finite() {
            return Err(MoneyError::NotFinite {
                input: usd.to_string(),
            });
        }
        if usd < 0.0 {
            return Err(MoneyError::Negative {
                input: usd.to_string(),
            });
        }
        // `-0.0` prints as "-0", which parses to zero.
        Nanos::parse_usd(&format!("{usd}"))
    }
}

/// Prints USD with the nine nano digits trimmed of trailing zeros, but never
/// fewer than two decimals: `5.00`, `0.10`, `0.000123`, `-1.50`,
/// `0.000000001`. The output always parses back to the same amount.
impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let per_usd = NANOS_PER_USD as u64;
        let whole = magnitude / per_usd;
        let nanos = format!("{:09}", magnitude % per_usd);
        let trimmed = nanos.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &nanos[..2]
        } else {
            trimmed
        };
        write!(f, "{sign}{whole}.{shown}")
    }
}

impl FromStr for Nanos {
    type Err = MoneyError;

    fn from_str(input: &str) -> Result<Nanos, MoneyError> {
        Nanos::parse_usd(input)
    }
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The value of a run of ASCII digits, `None` if it does not fit in `u128`.
fn digits_value(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |acc, b| {
        acc.checked_mul(10)?.checked_add(u128::from(b - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn usd(text: &str) -> i64 {
        Nanos::parse_usd(text).unwrap().get()
    }

    #[test]
    fn parses_strict_decimals() {
        assert_eq!(usd("5"), 5_000_000_000);
        assert_eq!(usd("5.00"), 5_000_000_000);
        assert_eq!(usd("0.000000001"), 1);
        assert_eq!(usd("-1.5"), -1_500_000_000);
        assert_eq!(usd("0.15"), 150_000_000);
        assert_eq!(usd("-0"), 0);
        assert_eq!(usd("9223372036.854775807"), i64::MAX);
        assert_eq!(usd("-9223372036.854775808"), i64::MIN);
    }

    #[test]
    fn rejects_malformed_amounts() {
        for bad in [
            "", "-", ".", "5.", ".5", "+5", "1e3", " 5", "5 ", "1,000", "--1", "0x10",
        ] {
            assert!(
                matches!(Nanos::parse_usd(bad), Err(MoneyError::Invalid { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn rejects_sub_nano_precision_and_overflow() {
        let err = Nanos::parse_usd("0.0000000001").unwrap_err();
        assert!(
            err.to_string()
                .contains("more precision than a nano-dollar"),
            "{err}"
        );
        assert!(matches!(
            Nanos::parse_usd("9223372036.854775808"),
            Err(MoneyError::Overflow { .. })
        ));
        assert!(matches!(
            Nanos::parse_usd("99999999999999999999999999999999999999999"),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn converts_config_floats_exactly() {
        let cases = [(0.15, 150_000_000), (0.075, 75_000_000), (0.6, 600_000_000)];
        for (value, nanos) in cases {
            assert_eq!(Nanos::from_usd_f64(value).unwrap().get(), nanos, "{value}");
        }
        assert_eq!(Nanos::from_usd_f64(0.0375).unwrap().get(), 37_500_000);
        assert_eq!(Nanos::from_usd_f64(5.0).unwrap().get(), 5_000_000_000);
        assert_eq!(Nanos::from_usd_f64(-0.0).unwrap(), Nanos::ZERO);
        assert_eq!(Nanos::from_usd_f64(1e-9).unwrap().get(), 1);
        assert!(matches!(
            Nanos::from_usd_f64(f64::NAN),
            Err(MoneyError::NotFinite { .. })
        ));
        assert!(matches!(
            Nanos::from_usd_f64(f64::INFINITY),
            Err(MoneyError::NotFinite { .. })
        ));
        assert!(matches!(
            Nanos::from_usd_f64(-0.5),
            Err(MoneyError::Negative { .. })
        ));
        assert!(matches!(
            Nanos::from_usd_f64(1e-10),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            Nanos::from_usd_f64(1e20),
            Err(MoneyError::Overflow { .. })
        ));
    }

    #[test]
    fn displays_at_least_two_decimals() {
        let cases = [
            (5_000_000_000, "5.00"),
            (0, "0.00"),
            (100_000_000, "0.10"),
            (123_000, "0.000123"),
            (-1_500_000_000, "-1.50"),
            (1, "0.000000001"),
            (-1, "-0.000000001"),
            (1_230_000_000, "1.23"),
            (1_234_000_000, "1.234"),
            (i64::MIN, "-9223372036.854775808"),
            (i64::MAX, "9223372036.854775807"),
        ];
        for (nanos, text) in cases {
            assert_eq!(Nanos::new(nanos).to_string(), text);
        }
    }

    #[test]
    fn checked_arithmetic_reports_overflow() {
        assert_eq!(Nanos::MAX.checked_add(Nanos::new(1)), None);
        assert_eq!(Nanos::new(i64::MIN).checked_sub(Nanos::new(1)), None);
        assert_eq!(Nanos::new(3).checked_mul(4), Some(Nanos::new(12)));
        assert_eq!(Nanos::new(2).checked_mul(u64::MAX), None);
        assert_eq!(Nanos::new(1).saturating_sub(Nanos::new(3)), Nanos::new(-2));
        assert!(Nanos::new(-1).is_negative());
        assert_eq!(Nanos::from_whole_usd(5), Some(Nanos::new(5_000_000_000)));
    }

    #[test]
    fn serializes_as_a_plain_integer() {
        assert_eq!(serde_json::to_string(&Nanos::new(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<Nanos>("-7").unwrap(), Nanos::new(-7));
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in any::<i64>()) {
            let amount = Nanos::new(nanos);
            prop_assert_eq!(Nanos::parse_usd(&amount.to_string()), Ok(amount));
        }

        #[test]
        fn parse_of_nine_digit_decimals_is_exact(whole in 0i64..9_000_000_000, frac in 0i64..1_000_000_000) {
            let text = format!("{whole}.{frac:09}");
            prop_assert_eq!(usd(&text), whole * NANOS_PER_USD + frac);
        }

        #[test]
        fn config_floats_match_their_decimal_text(cents in 0u32..10_000_000) {
            let value = f64::from(cents) / 100.0;
            let expected = i64::from(cents) * 10_000_000;
            prop_assert_eq!(Nanos::from_usd_f64(value).map(Nanos::get), Ok(expected));
        }
    }
}
