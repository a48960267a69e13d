//! The policy phase's first check: a key with a `budget:` at or over it for the current
//! period is refused (429 `budget_exceeded`, `Retry-After` to the period's end). Runs before
//! the rpm/tpm/concurrency check so a refused request takes none of those. Spend is charged
//! after the fact by the request's meter, from the upstream's real usage.
//!
//! When the key's limits and the usage both live in the shared store, the check is left to
//! the key's admission (`stages::policy`): the same Redis script checks the budget before it
//! takes anything, so a budgeted key costs one round trip, not two.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{ErrorKind, GatewayError};
use crate::gateway::stages::auth::Principal;
use crate::usage::budget::Budget;
use crate::usage::pricing::Pricing;
use crate::usage::{backend, RequestMeter};

/// Admits the request under the key's budget, or answers why not. Tells `meter` the budget
/// period and the model's price, so the request's spend counts in the period.
pub async fn admit(
    principal: &Principal,
    model: Option<&str>,
    pricing: &Pricing,
    meter: Option<&mut RequestMeter>,
) -> Result<(), GatewayError> {
    let Some(budget) = principal.policy.as_ref().and_then(|p| p.budget) else {
        return Ok(());
    };
    let price = model.and_then(|m| pricing.price(m));
    if let Some(meter) = meter {
        meter.set_budget(budget.period, price);
    }
    if matches!(budget.limit, crate::usage::budget::Limit::Cost(_)) && price.is_none() {
        let shown: String = model.unwrap_or("(none)").chars().take(100).collect();
        return Err(GatewayError::new(
            ErrorKind::Forbidden,
            "model_not_priced",
            format!("This key has a cost budget and model {shown} has no price under pricing:"),
        ));
    }
    if principal
        .policy
        .as_ref()
        .is_some_and(|p| p.budget_in_admission())
    {
        return Ok(());
    }
    let now = SystemTime::now();
    let used = backend()
        .period_use(&principal.label, budget.period, now)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e.0, "usage store unavailable for a budget check");
            GatewayError::new(
                ErrorKind::Unavailable,
                "limits_unavailable",
                "The key's budget cannot be checked now; try again",
            )
        })?;
    if !budget.exhausted(&used) {
        return Ok(());
    }
    Err(exceeded(&budget, now))
}

/// 429 `budget_exceeded` with `Retry-After` to the end of the period holding `now`.
pub fn exceeded(budget: &Budget, now: SystemTime) -> GatewayError {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let wait = budget.period.seconds_left(secs);
    GatewayError::new(
        ErrorKind::RateLimited,
        "budget_exceeded",
        format!(
            "This key has used its {} budget for this {}; it renews in {wait} s",
            budget.unit(),
            budget.period.name()
        ),
    )
    .with_retry_after(wait)
}
