//! `pricing:` (model globs → price per 1M tokens) and a key's `budget:` (tokens or cost per
//! calendar period).

use std::collections::BTreeMap;

use super::Collector;
use crate::config::raw::{RawBudget, RawPrice};
use crate::config::yaml_path::{k, Segment};
use crate::usage::budget::{Budget, Limit};
use crate::usage::period::Period;
use crate::usage::pricing::{Price, Pricing};

pub(super) fn pricing(c: &mut Collector, raw: Option<BTreeMap<String, RawPrice>>) -> Pricing {
    let mut entries = Vec::new();
    for (glob, price) in raw.unwrap_or_default() {
        let mut ok = !glob.trim().is_empty();
        if !ok {
            c.err(&[k("pricing")], "a model pattern must not be empty");
        }
        for (name, v) in [("input", price.input), ("output", price.output)] {
            if !v.is_finite() || v < 0.0 {
                ok = false;
                c.err(
                    &[k("pricing"), k(&glob), k(name)],
                    format!("must be a price per 1M tokens (a number ≥ 0), got {v}"),
                );
            }
        }
        if ok {
            entries.push((
                glob,
                Price {
                    input: price.input,
                    output: price.output,
                },
            ));
        }
    }
    Pricing::new(entries)
}

/// A key's budget; `None` (with errors) when unusable. `line_path` locates `budget:` of the
/// key, `shown` names it without the key.
pub(super) fn budget(
    c: &mut Collector,
    raw: RawBudget,
    line_path: &[Segment],
    shown: &str,
    priced: bool,
) -> Option<Budget> {
    let at = |name: &str| {
        let mut p = line_path.to_vec();
        p.push(k(name));
        p
    };
    let period = match raw.period.as_deref() {
        Some(p) => match Period::parse(p) {
            Some(p) => Some(p),
            None => {
                c.err_masked(
                    &at("period"),
                    &format!("{shown}.period"),
                    format!("unknown period `{p}`: expected day, week or month"),
                );
                None
            }
        },
        None => {
            c.err_masked(
                line_path,
                &format!("{shown}.period"),
                "a budget needs a period: day, week or month",
            );
            None
        }
    };
    let limit = match (raw.tokens, raw.cost) {
        (Some(_), Some(_)) | (None, None) => {
            c.err_masked(
                line_path,
                shown,
                "a budget has exactly one of `tokens` or `cost`",
            );
            None
        }
        (Some(0), None) => {
            c.err_masked(
                &at("tokens"),
                &format!("{shown}.tokens"),
                "must be at least 1 (omit the budget for no limit)",
            );
            None
        }
        (Some(n), None) => Some(Limit::Tokens(n)),
        (None, Some(x)) if !x.is_finite() || x <= 0.0 => {
            c.err_masked(
                &at("cost"),
                &format!("{shown}.cost"),
                format!("must be a positive amount, got {x}"),
            );
            None
        }
        (None, Some(_)) if !priced => {
            c.err_masked(
                &at("cost"),
                &format!("{shown}.cost"),
                "a cost budget needs prices: add a `pricing:` section (model globs → input/output per 1M tokens)",
            );
            None
        }
        (None, Some(x)) => Some(Limit::Cost(x)),
    };
    Some(Budget {
        limit: limit?,
        period: period?,
    })
}
