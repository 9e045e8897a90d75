//! Percentiles and the number formats of the table.

use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples_ms`; `None` when there are none.
    pub fn of(mut samples_ms: Vec<f64>) -> Option<Self> {
        if samples_ms.is_empty() {
            return None;
        }
        samples_ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * samples_ms.len() as f64).ceil() as usize;
            samples_ms[rank.clamp(1, samples_ms.len()) - 1]
        };
        Some(Self {
            count: samples_ms.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: *samples_ms.last().expect("not empty"),
            mean_ms: samples_ms.iter().sum::<f64>() / samples_ms.len() as f64,
        })
    }

    /// `p50 4.1 / p99 9.8 / max 12.0 ms`
    pub fn short(&self) -> String {
        format!(
            "p50 {} / p99 {} / max {} ms",
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.max_ms)
        )
    }
}

/// A count or rate with thousands separators: `21,394`.
pub fn int(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return "—".into();
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds with a precision that suits the size.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A ratio: `0.69`, or `155×` when large.
pub fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{}×", int(value))
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).unwrap();
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert!(Percentiles::of(Vec::new()).is_none());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(int(21_394.4), "21,394");
        assert_eq!(int(999.0), "999");
        assert_eq!(int(1_000_000.0), "1,000,000");
    }
}
