//! `Price`: what a model costs per million tokens, and the one place where
//! token counts become money. Every conversion rounds up (a customer is never
//! charged less than a cost, tokun never gives away sub-nano fractions);
//! every product is computed in 128 bits and saturates instead of wrapping.

use serde::{Deserialize, Serialize};

use crate::money::{MoneyError, Nanos};

/// Tokens in the "per million tokens" of a price.
const TOKENS_PER_PRICE_UNIT: u128 = 1_000_000;

/// Prices in **nanos per million tokens**: $0.15 per million tokens is
/// `Nanos(150_000_000)`. All three are zero or more (checked on
/// construction and on deserialization).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "RawPrice")]
pub struct Price {
    input: Nanos,
    output: Nanos,
    cached_input: Nanos,
}

impl Price {
    /// Prices in nanos per million tokens; negative prices are an error.
    pub fn per_million(
        input: Nanos,
        output: Nanos,
        cached_input: Nanos,
    ) -> Result<Price, MoneyError> {
        for price in [input, output, cached_input] {
            if price.is_negative() {
                return Err(MoneyError::Negative {
                    input: price.to_string(),
                });
            }
        }
        Ok(Price {
            input,
            output,
            cached_input,
        })
    }

    /// Prices as configured: USD per million tokens (`price = { input = 0.15,
    /// output = 0.60, cached_input = 0.075 }`), converted exactly.
    pub fn from_usd_per_million(
        input: f64,
        output: f64,
        cached_input: f64,
    ) -> Result<Price, MoneyError> {
        Price::per_million(
            Nanos::from_usd_f64(input)?,
            Nanos::from_usd_f64(output)?,
            Nanos::from_usd_f64(cached_input)?,
        )
    }

    pub fn input(&self) -> Nanos {
        self.input
    }

    pub fn output(&self) -> Nanos {
        self.output
    }

    pub fn cached_input(&self) -> Nanos {
        self.cached_input
    }

    /// The cost of one request, rounded up once over the sum:
    /// `ceil((uncached × input + cached × cached_input + completion × output) / 10^6)`.
    /// `cached_tokens` is the part of `prompt_tokens` served from the cache
    /// (OpenAI's `prompt_tokens_details.cached_tokens`); more cached than
    /// prompt tokens counts as all cached.
    pub fn cost(&self, prompt_tokens: u64, cached_tokens: u64, completion_tokens: u64) -> Nanos {
        let cached = cached_tokens.min(prompt_tokens);
        let uncached = prompt_tokens - cached;
        let scaled = scaled(uncached, self.input)
            .saturating_add(scaled(cached, self.cached_input))
            .saturating_add(scaled(completion_tokens, self.output));
        to_nanos_rounding_up(scaled)
    }

    /// The cost of `tokens` uncached prompt tokens, rounded up.
    pub fn input_cost(&self, tokens: u64) -> Nanos {
        to_nanos_rounding_up(scaled(tokens, self.input))
    }

    /// The cost of `tokens` completion tokens, rounded up.
    pub fn output_cost(&self, tokens: u64) -> Nanos {
        to_nanos_rounding_up(scaled(tokens, self.output))
    }

    /// How many completion tokens `budget` pays for, rounding down, so that
    /// `output_cost(output_tokens_affordable(b)) <= b`. A free output price
    /// affords `u64::MAX`; a budget of zero or less affords nothing.
    pub fn output_tokens_affordable(&self, budget: Nanos) -> u64 {
        if budget.get() <= 0 {
            return 0;
        }
        let per_million = u128::from(self.output.get().unsigned_abs());
        if per_million == 0 {
            return u64::MAX;
        }
        let budget = u128::from(budget.get().unsigned_abs());
        let tokens = budget * TOKENS_PER_PRICE_UNIT / per_million;
        u64::try_from(tokens).unwrap_or(u64::MAX)
    }
}

/// The unchecked shape of a `Price` on the wire; `Price` deserializes through
/// it so a negative price never exists.
#[derive(Deserialize)]
struct RawPrice {
    input: Nanos,
    output: Nanos,
    cached_input: Nanos,
}

impl TryFrom<RawPrice> for Price {
    type Error = MoneyError;

    fn try_from(raw: RawPrice) -> Result<Price, MoneyError> {
        Price::per_million(raw.input, raw.output, raw.cached_input)
    }
}

/// `tokens × price_per_million` in nano-tokens; prices are never negative.
fn scaled(tokens: u64, per_million: Nanos) -> u128 {
    u128::from(tokens) * u128::from(per_million.get().unsigned_abs())
}

fn to_nanos_rounding_up(scaled: u128) -> Nanos {
    let nanos = scaled.div_ceil(TOKENS_PER_PRICE_UNIT);
    Nanos::new(i64::try_from(nanos).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn price(input: f64, output: f64, cached: f64) -> Price {
        Price::from_usd_per_million(input, output, cached).unwrap()
    }

    #[test]
    fn one_token_rounds_up_to_whole_nanos() {
        let mini = price(0.15, 0.60, 0.075);
        assert_eq!(mini.input(), Nanos::new(150_000_000));
        assert_eq!(mini.cost(1, 0, 0), Nanos::new(150));
        assert_eq!(mini.cost(0, 0, 1), Nanos::new(600));
        assert_eq!(price(0.0375, 0.0, 0.0).cost(1, 0, 0), Nanos::new(38));
        assert_eq!(price(0.0375, 0.0, 0.0).input_cost(1), Nanos::new(38));
    }

    #[test]
    fn rounds_once_over_the_sum() {
        // 0.5 + 0.5 nanos: one rounding gives 1, rounding each part would give 2.
        let half =
            Price::per_million(Nanos::new(500_000), Nanos::new(500_000), Nanos::ZERO).unwrap();
        assert_eq!(half.cost(1, 0, 1), Nanos::new(1));
        assert_eq!(half.input_cost(1).get() + half.output_cost(1).get(), 2);
    }

    #[test]
    fn cached_tokens_use_the_cached_price() {
        let mini = price(0.15, 0.60, 0.075);
        // 1,000 prompt tokens of which 400 cached, 100 completion tokens.
        let expected =
            (600 * 150_000_000 + 400 * 75_000_000 + 100 * 600_000_000_u64).div_ceil(1_000_000);
        assert_eq!(mini.cost(1_000, 400, 100).get() as u64, expected);
        // More cached than prompt tokens counts as all cached.
        assert_eq!(mini.cost(10, 50, 0), mini.cost(10, 10, 0));
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let dear = Price::per_million(Nanos::MAX, Nanos::MAX, Nanos::MAX).unwrap();
        assert_eq!(dear.cost(u64::MAX, 0, u64::MAX), Nanos::MAX);
        assert_eq!(dear.output_cost(u64::MAX), Nanos::MAX);
    }

    #[test]
    fn affordable_output_tokens() {
        let mini = price(0.15, 0.60, 0.075);
        assert_eq!(mini.output_tokens_affordable(Nanos::new(600)), 1);
        assert_eq!(mini.output_tokens_affordable(Nanos::new(599)), 0);
        assert_eq!(mini.output_tokens_affordable(Nanos::new(-5)), 0);
        assert_eq!(
            mini.output_tokens_affordable(Nanos::from_whole_usd(6).unwrap()),
            10_000_000
        );
        assert_eq!(
            price(1.0, 0.0, 0.0).output_tokens_affordable(Nanos::new(1)),
            u64::MAX
        );
    }

    #[test]
    fn rejects_negative_prices_everywhere() {
        assert!(Price::per_million(Nanos::new(-1), Nanos::ZERO, Nanos::ZERO).is_err());
        assert!(Price::from_usd_per_million(0.1, -0.1, 0.0).is_err());
        let json = r#"{"input":-1,"output":0,"cached_input":0}"#;
        assert!(serde_json::from_str::<Price>(json).is_err());
        let mini = price(0.15, 0.60, 0.075);
        let back: Price = serde_json::from_str(&serde_json::to_string(&mini).unwrap()).unwrap();
        assert_eq!(back, mini);
    }

    proptest! {
        #[test]
        fn cost_is_the_exact_ceiling(
            input in 0i64..100_000_000_000,
            output in 0i64..100_000_000_000,
            cached in 0i64..100_000_000_000,
            prompt in 0u64..10_000_000,
            hit in 0u64..10_000_000,
            completion in 0u64..10_000_000,
        ) {
            let p = Price::per_million(Nanos::new(input), Nanos::new(output), Nanos::new(cached)).unwrap();
            let hit = hit.min(prompt);
            let exact = (prompt - hit) as u128 * input as u128
                + hit as u128 * cached as u128
                + completion as u128 * output as u128;
            let cost = p.cost(prompt, hit, completion).get() as u128;
            prop_assert!(cost * 1_000_000 >= exact);
            prop_assert!(cost == 0 || (cost - 1) * 1_000_000 < exact);
        }

        #[test]
        fn affordable_tokens_never_cost_more_than_the_budget(
            output in 1i64..100_000_000_000,
            budget in 0i64..1_000_000_000_000,
        ) {
            let p = Price::per_million(Nanos::ZERO, Nanos::new(output), Nanos::ZERO).unwrap();
            let tokens = p.output_tokens_affordable(Nanos::new(budget));
            prop_assert!(p.output_cost(tokens).get() <= budget);
            prop_assert!(p.output_cost(tokens + 1).get() > budget);
        }
    }
}
