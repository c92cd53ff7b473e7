//! Percentiles and small JSON helpers.

use serde_json::{Value, json};

/// Nearest-rank percentile of `sorted` (ascending), `p` in 0..=100.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// n, min, mean, p50, p90, p99, max of `v` (any order), rounded to 3 decimals.
pub fn summary(v: &[f64]) -> Value {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return json!({ "n": 0 });
    }
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    json!({
        "n": s.len(),
        "min": r3(s[0]),
        "mean": r3(mean),
        "p50": r3(pct(&s, 50.0)),
        "p90": r3(pct(&s, 90.0)),
        "p99": r3(pct(&s, 99.0)),
        "max": r3(*s.last().unwrap()),
    })
}

pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mib(kib: u64) -> f64 {
    r3(kib as f64 / 1024.0)
}
