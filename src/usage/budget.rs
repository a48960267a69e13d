//! A key's `budget:`: at most so many tokens, or so much cost (by `pricing:`), per calendar
//! period. Spend is charged after the fact from the upstream's real `usage`, so a request in
//! flight when the budget runs out finishes and may take the key past its limit.

use super::backend::PeriodUse;
use super::period::Period;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// Input plus output tokens.
    Tokens(u64),
    /// Cost in `pricing:`'s currency.
    Cost(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub limit: Limit,
    pub period: Period,
}

impl Budget {
    /// `tokens` or `cost`: the unit of the limit.
    pub fn unit(&self) -> &'static str {
        match self.limit {
            Limit::Tokens(_) => "tokens",
            Limit::Cost(_) => "cost",
        }
    }

    pub fn limit_value(&self) -> f64 {
        match self.limit {
            Limit::Tokens(n) => n as f64,
            Limit::Cost(c) => c,
        }
    }

    /// What of `used` counts against the limit.
    pub fn used(&self, used: &PeriodUse) -> f64 {
        match self.limit {
            Limit::Tokens(_) => used.tokens as f64,
            Limit::Cost(_) => used.cost,
        }
    }

    /// What is left (never negative).
    pub fn remaining(&self, used: &PeriodUse) -> f64 {
        (self.limit_value() - self.used(used)).max(0.0)
    }

    /// At or over the limit: the key's next request is refused until the period ends.
    pub fn exhausted(&self, used: &PeriodUse) -> bool {
        self.used(used) >= self.limit_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_is_exhausted() {
        let b = Budget {
            limit: Limit::Tokens(100),
            period: Period::Day,
        };
        let mut used = PeriodUse {
            tokens: 99,
            ..PeriodUse::default()
        };
        assert!(!b.exhausted(&used));
        assert_eq!(b.remaining(&used), 1.0);
        used.tokens = 100;
        assert!(b.exhausted(&used));
        used.tokens = 150;
        assert_eq!(b.remaining(&used), 0.0);
    }

    #[test]
    fn cost_budgets_count_cost_only() {
        let b = Budget {
            limit: Limit::Cost(0.5),
            period: Period::Month,
        };
        let used = PeriodUse {
            tokens: 1_000_000,
            cost: 0.25,
            ..PeriodUse::default()
        };
        assert!(!b.exhausted(&used));
        assert_eq!(b.unit(), "cost");
        assert!((b.remaining(&used) - 0.25).abs() < 1e-12);
    }
}
