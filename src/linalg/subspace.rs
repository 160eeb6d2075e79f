//! Singular subspaces of a matrix and how other matrices sit in them: the top-k basis of an
//! original weight, the share of an update in its spans, and the overlap of two bases.

use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::ops::matmul::{gemm, Gemm};
use crate::ops::reduce::{frobenius, reduce_all_value, ReduceOp};
use serde::{Deserialize, Serialize};

/// The top-k singular triplets of an original weight.
pub struct Basis {
    pub u: Tensor,
    pub v: Tensor,
    pub sigma: Vec<f64>,
}

/// How much of an update lies in the protected subspaces.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Leak {
    /// ‖U_kᵀ ΔW‖_F / ‖ΔW‖_F.
    pub left: f64,
    /// ‖ΔW V_k‖_F / ‖ΔW‖_F.
    pub right: f64,
}

impl Leak {
    /// The shares of `x` (‖x‖_F = `norm`) in the column span of `u` and the row span of `vᵀ`:
    /// ‖uᵀx‖_F / norm and ‖x v‖_F / norm.
    pub fn of(gpu: &Gpu, u: &Tensor, v: &Tensor, x: &Tensor, norm: f64) -> Result<Leak> {
        // A zero update (all of it filtered out) has nothing anywhere: no share, not 0/0.
        if norm == 0.0 {
            return Ok(Leak { left: 0.0, right: 0.0 });
        }
        let left = frobenius(gpu, &gemm(gpu, u, x, None, Gemm { trans_a: true, ..Gemm::default() })?)? / norm;
        let right = frobenius(gpu, &gemm(gpu, x, v, None, Gemm::default())?)? / norm;
        Ok(Leak { left, right })
    }
}

/// ‖Aᵀ B‖²_F / k for two n×k orthonormal bases.
pub fn subspace_similarity(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<f64> {
    let k = a.shape()[1];
    let p = gemm(gpu, a, b, None, Gemm { trans_a: true, ..Gemm::default() })?;
    Ok(reduce_all_value(gpu, &p, ReduceOp::SumSq)? as f64 / k as f64)
}

/// The projector I − U Uᵀ onto the orthogonal complement of an orthonormal basis U (d×k),
/// on the host in f64: for the few vectors of width d (targets, keys) that need it between GPU
/// passes, where a dispatch would cost more than the arithmetic.
#[derive(Debug, Clone)]
pub struct HostComplement {
    /// The basis vectors one after another (k×d): column j of U is `basis[j*d..(j+1)*d]`.
    basis: Vec<f64>,
    d: usize,
}

impl HostComplement {
    /// From U as stored on the GPU (d×k, row-major).
    pub fn new(gpu: &Gpu, u: &Tensor) -> Result<Self> {
        let [d, k] = match *u.shape() {
            [d, k] => [d, k],
            _ => return Err(crate::error::Error::shape("complement", format!("a basis of shape {:?}", u.shape()))),
        };
        Ok(Self::from_rows(&gpu.download(u)?, d, k))
    }

    /// From U's values, row-major d×k.
    pub fn from_rows(u: &[f32], d: usize, k: usize) -> Self {
        let mut basis = vec![0.0; k * d];
        for i in 0..d {
            for j in 0..k {
                basis[j * d + i] = u[i * k + j] as f64;
            }
        }
        HostComplement { basis, d }
    }

    /// The width of the vectors it projects.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// U itself, d×k in f64.
    pub fn basis(&self) -> faer::Mat<f64> {
        let k = self.basis.len() / self.d.max(1);
        faer::Mat::<f64>::from_fn(self.d, k, |i, j| self.basis[j * self.d + i])
    }

    /// x − U(Uᵀx), in place: all coefficients first, as the guard's projector forms it (not
    /// one basis vector after another, which differs where U is orthonormal only to f32).
    pub fn project(&self, x: &mut [f64]) {
        assert_eq!(x.len(), self.d, "a vector of width {} against a basis of width {}", x.len(), self.d);
        let coefficients: Vec<f64> = self.basis.chunks_exact(self.d).map(|col| col.iter().zip(x.iter()).map(|(a, b)| a * b).sum()).collect();
        for (col, c) in self.basis.chunks_exact(self.d).zip(coefficients) {
            x.iter_mut().zip(col).for_each(|(xi, a)| *xi -= c * a);
        }
    }

    /// x − U(Uᵀx) of an f32 vector, computed in f64.
    pub fn project_f32(&self, x: &mut [f32]) {
        let mut y: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        self.project(&mut y);
        x.iter_mut().zip(y).for_each(|(xi, yi)| *xi = yi as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::HostComplement;

    /// Against (I − UUᵀ)x formed densely, on an orthonormal U from a QR of a random matrix,
    /// with k = 0, 1 and a prime; and the projection is idempotent.
    #[test]
    fn host_complement_equals_the_dense_projector() {
        let d = 37;
        let mut r = crate::testing::rng(4);
        for k in [0usize, 1, 7] {
            let a = faer::Mat::<f64>::from_fn(d, k.max(1), |_, _| rand::Rng::random_range(&mut r, -1.0..1.0));
            let q = a.qr().compute_thin_Q();
            let u: Vec<f32> = (0..d).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| q[(i, j)] as f32).collect();
            let c = HostComplement::from_rows(&u, d, k);
            let x: Vec<f64> = (0..d).map(|_| rand::Rng::random_range(&mut r, -2.0..2.0)).collect();
            let mut got = x.clone();
            c.project(&mut got);
            let want: Vec<f64> = (0..d)
                .map(|i| x[i] - (0..k).map(|j| u[i * k + j] as f64 * (0..d).map(|l| u[l * k + j] as f64 * x[l]).sum::<f64>()).sum::<f64>())
                .collect();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "k = {k}: {err}");
            let mut twice = got.clone();
            c.project(&mut twice);
            let moved = twice.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(moved < 1e-6, "k = {k}: a second projection moved {moved}");
            if k == 0 {
                assert_eq!(got, x);
            }
        }
    }
}
