//! Reference rotary position embedding in f64.

use crate::model::{Rope, RopeStyle};

/// Rotates one head vector in place for position `pos`, in f64.
pub fn rope_head(x: &mut [f64], pos: usize, rope: &Rope) {
    rotate(x, pos, rope, 1.0);
}

/// Rotation by `sign` × the position's angles: −1 is the transpose.
fn rotate(x: &mut [f64], pos: usize, rope: &Rope, sign: f64) {
    let d = x.len();
    assert_eq!(rope.inv_freq.len(), d / 2, "one RoPE frequency per pair of the head");
    for (i, f) in rope.inv_freq.iter().enumerate() {
        let angle = sign * pos as f64 * f;
        let (sin, cos) = angle.sin_cos();
        let (ia, ib) = match rope.style {
            RopeStyle::Adjacent => (2 * i, 2 * i + 1),
            RopeStyle::Half => (i, i + d / 2),
        };
        let (a, b) = (x[ia], x[ib]);
        x[ia] = a * cos - b * sin;
        x[ib] = a * sin + b * cos;
    }
}

/// x: [B, T, H, D] as `shape`; token t at position pos0 + t.
pub fn rope(x: &[f32], shape: [usize; 4], pos0: usize, rope: &Rope) -> Vec<f64> {
    let [_, t, _, d] = shape;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    // Rows are [B, T, H] in order: row r is token (r / H) % T.
    let h = shape[2];
    for (r, head) in out.chunks_mut(d).enumerate() {
        rope_head(head, pos0 + (r / h) % t, rope);
    }
    out
}

/// The transpose of `rope_head`'s rotation (its gradient w.r.t. the input), in place.
pub fn rope_head_bwd(dy: &mut [f64], pos: usize, rope: &Rope) {
    rotate(dy, pos, rope, -1.0);
}

/// dx of `rope` for dy: [B, T, H, D] as `shape`.
pub fn rope_bwd(dy: &[f32], shape: [usize; 4], pos0: usize, rope: &Rope) -> Vec<f64> {
    let [_, t, h, d] = shape;
    let mut out: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    for (r, head) in out.chunks_mut(d).enumerate() {
        rope_head_bwd(head, pos0 + (r / h) % t, rope);
    }
    out
}
