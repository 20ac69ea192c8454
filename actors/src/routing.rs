//! `model: "auto"`: picking a concrete model by policy. The pick is a pure
//! function of the request's size and the candidates' prices, context windows
//! and health, so the same request on the same healthy set always gets the
//! same model; ties go to the earlier candidate in the configured order.

use tokun_storage::{Nanos, Price};

/// One model `auto` may choose.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub context_window: u64,
    pub price: Price,
    /// False while its first route's circuit is open.
    pub healthy: bool,
}

/// The `cheapest_fit` policy: the cheapest healthy candidate whose context
/// window holds the prompt plus the requested output, priced at that size.
/// Without a healthy fit it falls back to the cheapest fit regardless of
/// health (its routes may still fail over); `None` when nothing fits.
pub fn cheapest_fit<'a>(
    candidates: &[Candidate<'a>],
    prompt_tokens: u64,
    max_output_tokens: u64,
) -> Option<&'a str> {
    let needed = prompt_tokens.saturating_add(max_output_tokens.max(1));
    let estimate = |c: &Candidate<'_>| -> Nanos {
        c.price
            .input_cost(prompt_tokens)
            .saturating_add(c.price.output_cost(max_output_tokens.max(1)))
    };
    let fits: Vec<(usize, &Candidate<'a>)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.context_window >= needed)
        .collect();
    let cheapest = |healthy_only: bool| {
        fits.iter()
            .filter(|(_, c)| c.healthy || !healthy_only)
            .min_by_key(|(order, c)| (estimate(c), *order))
            .map(|(_, c)| c.id)
    };
    cheapest(true).or_else(|| cheapest(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: i64, output: i64) -> Price {
        Price::per_million(
            Nanos::new(input * 1_000_000),
            Nanos::new(output * 1_000_000),
            Nanos::new(input * 1_000_000),
        )
        .unwrap()
    }

    fn candidates() -> Vec<Candidate<'static>> {
        vec![
            Candidate {
                id: "big",
                context_window: 1_000_000,
                price: price(3_000, 15_000),
                healthy: true,
            },
            Candidate {
                id: "mini",
                context_window: 128_000,
                price: price(150, 600),
                healthy: true,
            },
            Candidate {
                id: "flash",
                context_window: 1_000_000,
                price: price(100, 400),
                healthy: true,
            },
            Candidate {
                id: "tiny",
                context_window: 8_000,
                price: price(10, 20),
                healthy: true,
            },
        ]
    }

    #[test]
    fn picks_the_cheapest_candidate_whose_window_fits() {
        let all = candidates();
        assert_eq!(cheapest_fit(&all, 1_000, 500), Some("tiny"));
        assert_eq!(cheapest_fit(&all, 10_000, 500), Some("flash"));
        assert_eq!(cheapest_fit(&all, 500_000, 1_000), Some("flash"));
        assert_eq!(cheapest_fit(&all, 2_000_000, 1), None, "nothing fits");
    }

    #[test]
    fn is_deterministic_and_breaks_ties_by_configured_order() {
        let mut all = candidates();
        all.push(Candidate {
            id: "flash-copy",
            context_window: 1_000_000,
            price: price(100, 400),
            healthy: true,
        });
        let first = cheapest_fit(&all, 10_000, 500);
        for _ in 0..100 {
            assert_eq!(cheapest_fit(&all, 10_000, 500), first);
        }
        assert_eq!(first, Some("flash"), "the earlier of two equal candidates");
    }

    #[test]
    fn avoids_unhealthy_candidates_while_a_healthy_one_fits() {
        let mut all = candidates();
        all[2].healthy = false;
        assert_eq!(cheapest_fit(&all, 10_000, 500), Some("mini"));
        all[1].healthy = false;
        assert_eq!(cheapest_fit(&all, 10_000, 500), Some("big"));
        all[0].healthy = false;
        assert_eq!(
            cheapest_fit(&all, 10_000, 500),
            Some("flash"),
            "all unhealthy: still the cheapest fit"
        );
        all[2].healthy = true;
        assert_eq!(cheapest_fit(&all, 10_000, 500), Some("flash"), "recovered");
    }
}
