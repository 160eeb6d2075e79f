//! C0 = E[k kᵀ] as a value: what `covariance` computes and `cov_cache` stores.

use faer::Mat;

/// E[k kᵀ] of one layer's keys, row-major [dim, dim].
#[derive(Debug, Clone, PartialEq)]
pub struct SecondMoment {
    pub layer: usize,
    /// Tokens (keys) averaged over.
    pub tokens: usize,
    pub dim: usize,
    pub c0: Vec<f32>,
}

impl SecondMoment {
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.c0[i * self.dim + j]
    }

    /// C0 in f64, symmetrised (the f32 accumulation leaves it symmetric only to rounding).
    pub fn symmetric(&self) -> Mat<f64> {
        Mat::<f64>::from_fn(self.dim, self.dim, |i, j| 0.5 * (self.at(i, j) as f64 + self.at(j, i) as f64))
    }

    /// The mean of the diagonal: the mean squared key component.
    pub fn mean_diag(&self) -> f64 {
        (0..self.dim).map(|i| self.at(i, i) as f64).sum::<f64>() / self.dim.max(1) as f64
    }

    pub fn frobenius(&self) -> f64 {
        self.c0.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()
    }

    /// ‖self − other‖_F / ‖other‖_F.
    pub fn rel_diff(&self, other: &SecondMoment) -> f64 {
        let d: f64 = self.c0.iter().zip(&other.c0).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        d.sqrt() / other.frobenius().max(f64::MIN_POSITIVE)
    }
}
