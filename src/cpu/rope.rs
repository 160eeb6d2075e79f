//! Reference rotary position embedding in f64.

use crate::model::RopeStyle;

/// x: [B, T, H, D] as `shape`; token t at position pos0 + t.
pub fn rope(x: &[f32], shape: [usize; 4], pos0: usize, theta: f64, style: RopeStyle) -> Vec<f64> {
    let [b, t, h, d] = shape;
    let half = d / 2;
    let mut out = vec![0.0f64; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                let base = ((bi * t + ti) * h + hi) * d;
                for i in 0..half {
                    let angle = (pos0 + ti) as f64 * theta.powf(-2.0 * i as f64 / d as f64);
                    let (ia, ib) = match style {
                        RopeStyle::Adjacent => (base + 2 * i, base + 2 * i + 1),
                        RopeStyle::Half => (base + i, base + i + half),
                    };
                    let (xa, xb) = (x[ia] as f64, x[ib] as f64);
                    out[ia] = xa * angle.cos() - xb * angle.sin();
                    out[ib] = xa * angle.sin() + xb * angle.cos();
                }
            }
        }
    }
    out
}
