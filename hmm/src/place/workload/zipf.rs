//! A key-value store with Zipf-skewed popularity whose hot set moves: every `phase_requests`
//! requests the popularity ranking is reshuffled (a phase change), as tiering studies use.

use super::{Emit, Layout, Lazy, Setup, WorkloadDef, or};
use crate::place::params::{ParamDef, Params};
use crate::place::{PAGE, Rng};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Zipf key-value gets and puts.
pub const ZIPF: WorkloadDef = WorkloadDef {
    name: "zipf",
    help: "Zipf-skewed key-value gets/puts with phase changes of the hot set",
    params: &[
        ParamDef::float("alpha", 0.99, 0.0, 3.0, "Zipf exponent"),
        ParamDef::int("record", 512, 64, 65536, "bytes per record"),
        ParamDef::float("writes", 0.1, 0.0, 1.0, "fraction of requests that are puts"),
        ParamDef::int("requests", 1, 1, 10_000, "requests per record per step"),
        ParamDef::int("phases", 2, 1, 100, "hot-set changes (steps)"),
    ],
    build: |p: &Params, s: &Setup| {
        let record = p.int("record") as u64;
        let keys = (s.pages as u64 * PAGE / record).max(1) as usize;
        let alpha = p.float("alpha");
        let writes = p.float("writes");
        let per_step = keys as u64 * p.int("requests") as u64;
        let steps = or(s.iterations, p.int("phases") as u32);
        let mut l = Layout::of(s);
        let table = l.array(keys as u64 * record);
        // Cumulative popularity of ranks 1..=keys.
        let mut cdf = Vec::with_capacity(keys);
        let mut sum = 0.0;
        for k in 1..=keys {
            sum += 1.0 / pow(k as f64, alpha);
            cdf.push(sum);
        }
        let mut rng = Rng::new(s.seed);
        let mut rank: Vec<u32> = (0..keys as u32).collect();
        let on = s.device;
        Ok(Box::new(Lazy::laid_out("zipf", &l, move |step| {
            if step >= steps {
                return None;
            }
            // A new hot set each step: shuffle which key has which rank.
            for i in (1..keys).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                rank.swap(i, j);
            }
            let mut e = Emit::default();
            for _ in 0..per_step {
                let x = rng.unit() * sum;
                let r = cdf.partition_point(|&c| c < x).min(keys - 1);
                let key = rank[r] as u64;
                e.range(table + key * record, record, rng.unit() < writes);
            }
            Some(vec![e.phase("kv", on)])
        })))
    },
};

/// `x^y` for x ≥ 1 without `std`: exp(y·ln x) by series after range reduction.
pub fn pow(x: f64, y: f64) -> f64 {
    exp(y * ln(x))
}

fn ln(x: f64) -> f64 {
    // x = m · 2^e with m in [1, 2): ln x = e·ln2 + ln m; ln m = 2·atanh((m-1)/(m+1)).
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & !(0x7ff << 52)) | (1023 << 52));
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let (mut s, mut term) = (0.0, t);
    for k in 0..20 {
        s += term / (2 * k + 1) as f64;
        term *= t2;
    }
    e as f64 * core::f64::consts::LN_2 + 2.0 * s
}

fn exp(x: f64) -> f64 {
    // e^x = 2^k · e^r with |r| ≤ ln2/2.
    let k = (x / core::f64::consts::LN_2 + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
    let r = x - k as f64 * core::f64::consts::LN_2;
    let (mut s, mut term) = (1.0, 1.0);
    for i in 1..20 {
        term *= r / i as f64;
        s += term;
    }
    s * f64::from_bits(((k + 1023).clamp(1, 2046) as u64) << 52)
}

#[cfg(test)]
mod tests {
    #[test]
    fn pow_matches_std() {
        for x in [1.0, 1.5, 2.0, 10.0, 1000.0, 123456.0] {
            for y in [0.0, 0.5, 0.99, 1.2, 2.0] {
                let (a, b) = (super::pow(x, y), f64::powf(x, y));
                assert!((a - b).abs() <= 1e-9 * b, "{x}^{y}: {a} vs {b}");
            }
        }
    }
}
