//! Reference for shaders/jacobi.wgsl: one-sided Jacobi in f64 with the kernel's pair order
//! (the circle method), rotation formula and stopping rule, so a GPU run of a given number of
//! sweeps can be compared with the same sweeps here.

// The negated comparison skips a NaN pair as the kernel does; the index loops rotate two rows.
#![allow(clippy::neg_cmp_op_on_partial_ord, clippy::needless_range_loop)]

/// The pairs of round `round` of a sweep over p columns (p' = p rounded up to even, p' − 1
/// rounds of p'/2 disjoint pairs; a pair with the place p, for odd p, is left out).
pub fn round_pairs(p: usize, round: usize) -> Vec<(usize, usize)> {
    let last = p + p % 2 - 1;
    (0..=last / 2)
        .map(|pair| if pair == 0 { (last, round) } else { ((round + pair) % last, (round + last - pair) % last) })
        .filter(|&(i, j)| i < p && j < p)
        .collect()
}

/// S = U diag(σ) Vᵀ of a row-major p×p matrix by at most `max_sweeps` sweeps of pair tolerance
/// `tol`: (U, σ, V, sweeps run), U and V row-major with columns by non-increasing σ (ties by
/// index), U's column zero where σ = 0.
pub fn one_sided_jacobi(s: &[f64], p: usize, tol: f64, max_sweeps: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>, usize) {
    // Column i of S is row i of `a`; of V, row i of `v`.
    let mut a: Vec<Vec<f64>> = (0..p).map(|i| (0..p).map(|r| s[r * p + i]).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..p).map(|i| (0..p).map(|r| if r == i { 1.0 } else { 0.0 }).collect()).collect();
    let dot = |x: &[f64], y: &[f64]| -> f64 { x.iter().zip(y).map(|(a, b)| a * b).sum() };
    let mut sweeps = 0;
    while sweeps < max_sweeps {
        sweeps += 1;
        let mut rotated = 0;
        for round in 0..p + p % 2 - 1 {
            for (i, j) in round_pairs(p, round) {
                let (alpha, beta, gamma) = (dot(&a[i], &a[i]), dot(&a[j], &a[j]), dot(&a[i], &a[j]));
                if !(gamma.abs() > tol * alpha.sqrt() * beta.sqrt()) {
                    continue;
                }
                let zeta = (beta - alpha) / (2.0 * gamma);
                // The kernel's sign rule: ζ = −0 (equal norms, γ < 0) turns the positive way.
                let sign = if zeta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let sn = c * t;
                if sn == 0.0 {
                    continue;
                }
                // The kernel's form of (c x − s y, s x + c y), which f32 needs (see the shader).
                let tau = sn / (1.0 + c);
                for m in [&mut a, &mut v] {
                    for r in 0..p {
                        let (x, y) = (m[i][r], m[j][r]);
                        m[i][r] = x - sn * (y + tau * x);
                        m[j][r] = y + sn * (x - tau * y);
                    }
                }
                rotated += 1;
            }
        }
        if rotated == 0 {
            break;
        }
    }
    let sigma: Vec<f64> = a.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..p).collect();
    order.sort_by(|&x, &y| sigma[y].total_cmp(&sigma[x]).then(x.cmp(&y)));
    let mut u = vec![0.0; p * p];
    let mut vs = vec![0.0; p * p];
    for (place, &i) in order.iter().enumerate() {
        for r in 0..p {
            u[r * p + place] = if sigma[i] == 0.0 { 0.0 } else { a[i][r] / sigma[i] };
            vs[r * p + place] = v[i][r];
        }
    }
    (u, order.iter().map(|&i| sigma[i]).collect(), vs, sweeps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_meets_once_per_sweep() {
        for p in [1, 2, 3, 4, 7, 10, 31] {
            let mut seen = std::collections::BTreeSet::new();
            for round in 0..p + p % 2 - 1 {
                let pairs = round_pairs(p, round);
                let mut cols: Vec<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
                cols.sort();
                cols.dedup();
                assert_eq!(cols.len(), 2 * pairs.len(), "p = {p}, round {round}: pairs share a column");
                for (i, j) in pairs {
                    assert!(seen.insert((i.min(j), i.max(j))), "p = {p}: ({i}, {j}) twice");
                }
            }
            assert_eq!(seen.len(), p * (p - 1) / 2, "p = {p}");
        }
    }

    #[test]
    fn the_reference_reconstructs_and_matches_faer() {
        let p = 9;
        let s: Vec<f64> = (0..p * p).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0 + if i % (p + 1) == 0 { 2.0 } else { 0.0 }).collect();
        let (u, sigma, v, sweeps) = one_sided_jacobi(&s, p, 1e-15, 30);
        assert!(sweeps < 30);
        for r in 0..p {
            for c in 0..p {
                let x: f64 = (0..p).map(|k| u[r * p + k] * sigma[k] * v[c * p + k]).sum();
                assert!((x - s[r * p + c]).abs() < 1e-12, "({r}, {c}): {x} vs {}", s[r * p + c]);
            }
        }
        let (_, want, _) = super::super::ortho::svd(&s.iter().map(|&x| x as f32).collect::<Vec<_>>(), p, p);
        for k in 0..p {
            assert!((sigma[k] - want[k]).abs() < 1e-6 * want[0], "σ_{k} {} vs {}", sigma[k], want[k]);
        }
    }
}
