//! Measurements behind `revive bench`: every speed is reported next to a baseline measured in
//! the same run on the same machine, as a ratio.

pub mod covariance;
pub mod edit;
pub mod forward;
pub mod session;
pub mod matmul;
pub mod svd;

use std::time::Duration;

/// The median of a set of durations.
pub fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// The median of a set of numbers; NaN for none.
pub fn median_f64(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
