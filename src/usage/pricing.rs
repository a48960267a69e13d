//! `pricing:`: model globs (as in `routes`) → price per 1M input and output tokens, any
//! currency. An exact model name wins; otherwise the longest matching pattern.

/// Price per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    /// The cost of this many tokens.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input + output_tokens as f64 * self.output) / 1_000_000.0
    }
}

#[derive(Debug, Clone, Default)]
pub struct Pricing {
    /// Most specific first: exact names, then patterns by length (longest first).
    entries: Vec<(String, Price)>,
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Pricing {
    pub fn new(mut entries: Vec<(String, Price)>) -> Self {
        entries.sort_by(|(a, _), (b, _)| {
            is_pattern(a)
                .cmp(&is_pattern(b))
                .then(b.len().cmp(&a.len()))
                .then(a.cmp(b))
        });
        Pricing { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The price of `model` (the client's model name), if any entry matches.
    pub fn price(&self, model: &str) -> Option<Price> {
        self.entries
            .iter()
            .find(|(p, _)| crate::glob::matches(p, model))
            .map(|(_, price)| *price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(input: f64, output: f64) -> Price {
        Price { input, output }
    }

    #[test]
    fn most_specific_entry_wins() {
        let pricing = Pricing::new(vec![
            ("*".into(), p(1.0, 1.0)),
            ("DeepSeek-*".into(), p(2.0, 8.0)),
            ("DeepSeek-R1-*".into(), p(4.0, 16.0)),
            ("DeepSeek-V3".into(), p(0.5, 0.5)),
        ]);
        assert_eq!(pricing.price("DeepSeek-V3"), Some(p(0.5, 0.5)));
        assert_eq!(pricing.price("DeepSeek-R1-0528"), Some(p(4.0, 16.0)));
        assert_eq!(pricing.price("DeepSeek-Coder"), Some(p(2.0, 8.0)));
        assert_eq!(pricing.price("gpt-4o"), Some(p(1.0, 1.0)));
        assert_eq!(Pricing::default().price("gpt-4o"), None);
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let price = p(2.0, 8.0);
        assert!((price.cost(1_000_000, 0) - 2.0).abs() < 1e-12);
        assert!((price.cost(500_000, 250_000) - 3.0).abs() < 1e-12);
        assert_eq!(price.cost(0, 0), 0.0);
    }
}
