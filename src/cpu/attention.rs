//! Reference causal grouped-query attention in f64.

/// q: [B, T, Hq, D] as `q_shape`; k, v: [B, Hkv, S, D] as `kv_shape`. Query t sits at position
/// pos0 + t and sees cache rows 0 ..= pos0 + t. Returns [B, T, Hq, D].
pub fn attention(q: &[f32], q_shape: [usize; 4], k: &[f32], v: &[f32], kv_shape: [usize; 4], pos0: usize, scale: f64) -> Vec<f64> {
    let [b, t, hq, d] = q_shape;
    let [_, hkv, s, _] = kv_shape;
    let group = hq / hkv;
    let mut out = vec![0.0f64; q.len()];
    for bi in 0..b {
        for ti in 0..t {
            for h in 0..hq {
                let qrow = &q[((bi * t + ti) * hq + h) * d..][..d];
                let kv = (bi * hkv + h / group) * s * d;
                let n = pos0 + ti + 1;
                let scores: Vec<f64> = (0..n)
                    .map(|j| scale * (0..d).map(|i| qrow[i] as f64 * k[kv + j * d + i] as f64).sum::<f64>())
                    .collect();
                let m = scores.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                let o = &mut out[((bi * t + ti) * hq + h) * d..][..d];
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..d {
                        o[i] += ej / sum * v[kv + j * d + i] as f64;
                    }
                }
            }
        }
    }
    out
}
