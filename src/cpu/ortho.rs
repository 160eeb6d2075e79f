//! References for shaders/ortho.wgsl and shaders/project.wgsl, and the f64 SVD (faer) the
//! GPU subspace iteration is checked against.

use faer::Mat;

/// Lower Cholesky factor of a symmetric n×n matrix (row-major) with the GPU kernel's rule for
/// dependent columns: a pivot ≤ tol × the original diagonal marks the column dead, and its row
/// and column of L become e_j. Returns (L, dead flags).
pub fn cholesky(g: &[f64], n: usize, tol: f64) -> (Vec<f64>, Vec<bool>) {
    let mut a = g.to_vec();
    let diag: Vec<f64> = (0..n).map(|i| g[i * n + i]).collect();
    let mut dead = vec![false; n];
    for j in 0..n {
        let d = a[j * n + j];
        if d <= tol * diag[j] {
            dead[j] = true;
            for i in 0..n {
                a[i * n + j] = 0.0;
                a[j * n + i] = 0.0;
            }
            a[j * n + j] = 1.0;
            continue;
        }
        let l = d.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            a[i * n + j] /= l;
        }
        for i in j + 1..n {
            for c in j + 1..=i {
                a[i * n + c] -= a[i * n + j] * a[c * n + j];
            }
        }
    }
    for i in 0..n {
        for c in i + 1..n {
            a[i * n + c] = 0.0;
        }
    }
    (a, dead)
}

/// L⁻¹ of a lower-triangular matrix, with a zero diagonal entry for dead columns.
pub fn tri_inverse(l: &[f64], n: usize, dead: &[bool]) -> Vec<f64> {
    let mut x = vec![0.0; n * n];
    for c in 0..n {
        x[c * n + c] = 1.0 / l[c * n + c];
        for r in c + 1..n {
            let s: f64 = (c..r).map(|i| l[r * n + i] * x[i * n + c]).sum();
            x[r * n + c] = -s / l[r * n + r];
        }
        if dead[c] {
            x[c * n + c] = 0.0;
        }
    }
    x
}

/// (I − U Uᵀ) X (I − V Vᵀ) in f64: X m×n, U m×kl, V n×kr (row-major).
pub fn complement(x: &[f64], m: usize, n: usize, u: &[f64], kl: usize, v: &[f64], kr: usize) -> Vec<f64> {
    let mut a = x.to_vec();
    if kl > 0 {
        for j in 0..n {
            let coef: Vec<f64> = (0..kl).map(|c| (0..m).map(|i| u[i * kl + c] * x[i * n + j]).sum()).collect();
            for i in 0..m {
                a[i * n + j] -= (0..kl).map(|c| u[i * kl + c] * coef[c]).sum::<f64>();
            }
        }
    }
    if kr > 0 {
        for i in 0..m {
            let row = a[i * n..(i + 1) * n].to_vec();
            let coef: Vec<f64> = (0..kr).map(|c| (0..n).map(|j| row[j] * v[j * kr + c]).sum()).collect();
            for j in 0..n {
                a[i * n + j] -= (0..kr).map(|c| v[j * kr + c] * coef[c]).sum::<f64>();
            }
        }
    }
    a
}

/// The full SVD of an m×n row-major matrix in f64 (faer): (U m×r, σ, V n×r) with r = min(m, n),
/// row-major, σ non-increasing.
pub fn svd(w: &[f32], m: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mat = Mat::<f64>::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let s = mat.thin_svd().expect("faer thin SVD of a finite matrix");
    let r = m.min(n);
    let sv = s.S().column_vector();
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&a, &b| sv[b].total_cmp(&sv[a]));
    let (uu, vv) = (s.U(), s.V());
    let u = (0..m).flat_map(|i| order.iter().map(move |&c| uu[(i, c)])).collect();
    let v = (0..n).flat_map(|i| order.iter().map(move |&c| vv[(i, c)])).collect();
    (u, order.iter().map(|&c| sv[c]).collect(), v)
}

/// The sines of the principal angles between the column spans of A (n×ka) and B (n×kb), both
/// with orthonormal columns, largest first: the singular values of (I − A Aᵀ) B.
pub fn principal_sines(a: &[f64], ka: usize, b: &[f64], kb: usize, n: usize) -> Vec<f64> {
    let r = complement(b, n, kb, a, ka, &[], 0);
    let mat = Mat::<f64>::from_fn(n, kb, |i, j| r[i * kb + j]);
    let mut s: Vec<f64> = mat.singular_values().expect("faer singular values of a finite matrix");
    s.sort_by(|a, b| b.total_cmp(a));
    s
}
