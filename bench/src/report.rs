//! One scenario's results, as the table and the JSON report give them.

use std::collections::BTreeMap;

use crate::Scenario;
use crate::run::Tally;

/// Results of one scenario.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Outcome {
    pub(crate) scenario: &'static str,
    pub(crate) calls: u64,
    pub(crate) seconds: f64,
    pub(crate) throughput: f64,
    /// The median of `ratios_by_round`.
    pub(crate) ratio_to_health: Option<f64>,
    /// Throughput over the same round's `health` throughput, per round.
    pub(crate) ratios_by_round: Vec<f64>,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) max_us: u64,
    pub(crate) errors: BTreeMap<String, u64>,
}

/// The median of some numbers (the mean of the middle two for an even
/// count); `None` for none.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[mid]),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// One scenario's results over every round it ran in.
pub(crate) fn outcome(
    scenario: Scenario,
    total: Tally,
    seconds: f64,
    ratios_by_round: Vec<f64>,
) -> Outcome {
    let l = &total.latency;
    Outcome {
        scenario: scenario.name(),
        calls: total.calls,
        seconds,
        throughput: total.calls as f64 / seconds,
        ratio_to_health: median(&ratios_by_round),
        ratios_by_round,
        p50_us: l.value_at_quantile(0.50),
        p90_us: l.value_at_quantile(0.90),
        p99_us: l.value_at_quantile(0.99),
        max_us: l.max(),
        errors: total.errors,
    }
}

pub(crate) fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}
