//! Reference causal grouped-query attention in f64, forward and backward.

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// q: [B, T, Hq, D] as `q_shape`; k, v: [B, Hkv, S, D] as `kv_shape`. Query t sits at position
/// pos0 + t and sees cache rows 0 ..= pos0 + t. Returns [B, T, Hq, D].
pub fn attention(q: &[f32], q_shape: [usize; 4], k: &[f32], v: &[f32], kv_shape: [usize; 4], pos0: usize, scale: f64) -> Vec<f64> {
    attention64(&f64s(q), q_shape, &f64s(k), &f64s(v), kv_shape, pos0, scale)
}

/// The softmax weights of query row (bi, ti, h) over its visible keys, and the row's kv block.
fn probs(q: &[f64], q_shape: [usize; 4], k: &[f64], kv_shape: [usize; 4], pos0: usize, scale: f64, (bi, ti, h): (usize, usize, usize)) -> (Vec<f64>, usize) {
    let [_, t, hq, d] = q_shape;
    let [_, hkv, s, _] = kv_shape;
    let qrow = &q[((bi * t + ti) * hq + h) * d..][..d];
    let kv = (bi * hkv + h / (hq / hkv)) * s * d;
    let scores: Vec<f64> = (0..pos0 + ti + 1).map(|j| scale * (0..d).map(|i| qrow[i] * k[kv + j * d + i]).sum::<f64>()).collect();
    let m = scores.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
    let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    (e.iter().map(|x| x / sum).collect(), kv)
}

/// `attention` on f64 inputs (for finite differences).
pub fn attention64(q: &[f64], q_shape: [usize; 4], k: &[f64], v: &[f64], kv_shape: [usize; 4], pos0: usize, scale: f64) -> Vec<f64> {
    let [b, t, hq, d] = q_shape;
    let mut out = vec![0.0f64; q.len()];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..hq {
                let (p, kv) = probs(q, q_shape, k, kv_shape, pos0, scale, (bi, ti, h));
                let o = &mut out[((bi * t + ti) * hq + h) * d..][..d];
                for (j, pj) in p.iter().enumerate() {
                    for i in 0..d {
                        o[i] += pj * v[kv + j * d + i];
                    }
                }
            }
        }
    }
    out
}

/// Gradients of `attention` for d_out: [B, T, Hq, D]: (dq [B, T, Hq, D], dk, dv), dk and dv
/// token-major [B, pos0 + T, Hkv, D] and summed over each kv group's query heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(q: &[f32], q_shape: [usize; 4], k: &[f32], v: &[f32], kv_shape: [usize; 4], pos0: usize, scale: f64, d_out: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    attention_bwd64(&f64s(q), q_shape, &f64s(k), &f64s(v), kv_shape, pos0, scale, &f64s(d_out))
}

/// `attention_bwd` on f64 inputs.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd64(q: &[f64], q_shape: [usize; 4], k: &[f64], v: &[f64], kv_shape: [usize; 4], pos0: usize, scale: f64, d_out: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let [b, t, hq, d] = q_shape;
    let [_, hkv, s, _] = kv_shape;
    let l = pos0 + t;
    let mut dq = vec![0.0f64; q.len()];
    let mut dk = vec![0.0f64; b * l * hkv * d];
    let mut dv = vec![0.0f64; b * l * hkv * d];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..hq {
                let (p, kv) = probs(q, q_shape, k, kv_shape, pos0, scale, (bi, ti, h));
                let row = ((bi * t + ti) * hq + h) * d;
                let g = h / (hq / hkv);
                let dp: Vec<f64> = (0..p.len()).map(|j| (0..d).map(|i| d_out[row + i] * v[kv + j * d + i]).sum()).collect();
                let dr: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (j, (pj, dpj)) in p.iter().zip(&dp).enumerate() {
                    let ds = pj * (dpj - dr);
                    let o = ((bi * l + j) * hkv + g) * d;
                    for i in 0..d {
                        dq[row + i] += scale * ds * k[kv + j * d + i];
                        dk[o + i] += scale * ds * q[row + i];
                        dv[o + i] += pj * d_out[row + i];
                    }
                }
            }
        }
    }
    debug_assert!(l <= s);
    (dq, dk, dv)
}
