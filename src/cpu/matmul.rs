//! Reference GEMM in f64.

/// C[b] = alpha * op(A[b]) * op(B[b]) + beta * C[b] with the same conventions as
/// `ops::matmul::gemm`: A is [M, K] ([K, M] when transposed), B is [K, N] ([N, K]);
/// `a_batched` / `b_batched` say whether the operand has a batch dimension (else it is shared).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    b: &[f32],
    c: Option<&[f32]>,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    a_batched: bool,
    b_batched: bool,
    alpha: f64,
    beta: f64,
) -> Vec<f64> {
    let mut out = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        let ab = if a_batched { bi * m * k } else { 0 };
        let bb = if b_batched { bi * k * n } else { 0 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if trans_a { a[ab + p * m + i] } else { a[ab + i * k + p] };
                    let bv = if trans_b { b[bb + j * k + p] } else { b[bb + p * n + j] };
                    acc += av as f64 * bv as f64;
                }
                let idx = bi * m * n + i * n + j;
                let old = c.map(|c| c[idx] as f64).unwrap_or(0.0);
                out[idx] = alpha * acc + if beta != 0.0 { beta * old } else { 0.0 };
            }
        }
    }
    out
}
