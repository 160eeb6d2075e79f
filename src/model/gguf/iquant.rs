//! The lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S: groups of 4 or 8
//! values looked up in a fixed grid, with signs), the ternary TQ1_0 and TQ2_0, MXFP4 and NVFP4
//! blocks — the types of llama.cpp's low-bit mixes (IQ2_M, IQ3_M, IQ1_M …) and of gpt-oss (an
//! NVFP4 file converted from an NVIDIA checkpoint also carries per-tensor `.scale` tensors, which
//! the loader refuses by name). Decoded with the
//! order of f32 operations of llama.cpp's Python package, which gives its bits (`tests/gguf.rs`).
//! The lattice types are read only: choosing a grid point is a search llama.cpp does with an
//! importance matrix, and an edited matrix is better written in a type that keeps it.

use super::iq_grids::{PackedGrid, KSIGNS};
use super::quant::{abs_max, f16_at};
use half::f16;
use std::sync::OnceLock;

const QK_K: usize = 256;

/// A grid unpacked: `entries × width` values.
struct Grid {
    width: usize,
    values: Vec<f32>,
}

impl Grid {
    fn unpack(p: &PackedGrid) -> Grid {
        // 2-bit indices sit four to a byte, 3-bit ones two to a byte (at bits 0 and 4).
        let bits = (usize::BITS - (p.levels.len() - 1).leading_zeros()) as usize;
        let per_byte = 8 / bits;
        let step = 8 / per_byte;
        let mut values = Vec::with_capacity(p.entries * p.width);
        for i in (0..p.hex.len()).step_by(2) {
            let byte = u8::from_str_radix(&p.hex[i..i + 2], 16).expect("the generated grid is hex");
            for k in 0..per_byte {
                values.push(p.levels[((byte >> (k * step)) & ((1 << bits) - 1)) as usize] as f32);
            }
        }
        assert_eq!(values.len(), p.entries * p.width, "a generated grid has the wrong size");
        Grid { width: p.width, values }
    }

    fn point(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }
}

fn grid(cell: &'static OnceLock<Grid>, packed: &PackedGrid) -> &'static Grid {
    cell.get_or_init(|| Grid::unpack(packed))
}

macro_rules! grid_of {
    ($name:ident) => {{
        static CELL: OnceLock<Grid> = OnceLock::new();
        grid(&CELL, &super::iq_grids::$name)
    }};
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn sign(bits: u32, j: usize) -> f32 {
    if (bits >> j) & 1 == 0 {
        1.0
    } else {
        -1.0
    }
}

/// One IQ2_XXS block (66 bytes, 256 values): per 32 values two words, four grid points and
/// four 7-bit sign codes in them, and a 4-bit scale.
pub(super) fn iq2_xxs(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ2_XXS);
    let d = f16_at(b, 0);
    for ib in 0..QK_K / 32 {
        let (points, aux) = (u32_at(b, 2 + 8 * ib), u32_at(b, 6 + 8 * ib));
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for l in 0..4 {
            let signs = KSIGNS[((aux >> (7 * l)) & 127) as usize] as u32;
            for (j, &v) in g.point(((points >> (8 * l)) & 0xff) as usize).iter().enumerate() {
                out.push(db * v * sign(signs, j));
            }
        }
    }
}

/// One IQ2_XS block (74 bytes): 32 codes of 9 grid bits and 7 sign bits, sixteen 4-bit scales.
pub(super) fn iq2_xs(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ2_XS);
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for i in 0..QK_K / 8 {
        let code = u16_at(b, 2 + 2 * i);
        let s = (scales[i / 4] >> (4 * ((i / 2) % 2))) & 0xf;
        let db = d * (0.5 + s as f32) * 0.25;
        let signs = KSIGNS[(code >> 9) as usize] as u32;
        for (j, &v) in g.point((code & 511) as usize).iter().enumerate() {
            out.push(db * v * sign(signs, j));
        }
    }
}

/// One IQ2_S block (82 bytes): 10-bit grid indices (low bytes, then 2 high bits each), one sign
/// bit per value, sixteen 4-bit scales.
pub(super) fn iq2_s(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ2_S);
    let d = f16_at(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for i in 0..QK_K / 8 {
        let index = qs[i] as usize | ((((qh[i / 4] >> (2 * (i % 4))) & 3) as usize) << 8);
        let s = (scales[i / 4] >> (4 * ((i / 2) % 2))) & 0xf;
        let db = d * (0.5 + s as f32) * 0.25;
        for (j, &v) in g.point(index).iter().enumerate() {
            out.push(db * v * sign(signs[i] as u32, j));
        }
    }
}

/// One IQ3_XXS block (98 bytes): 64 indices of 4-value points, per 32 values a word of four sign
/// codes and a 4-bit scale.
pub(super) fn iq3_xxs(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ3_XXS);
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for ib in 0..QK_K / 32 {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS[((aux >> (7 * l)) & 127) as usize] as u32;
            let (first, second) = (g.point(qs[8 * ib + 2 * l] as usize), g.point(qs[8 * ib + 2 * l + 1] as usize));
            for (j, &v) in first.iter().chain(second).enumerate() {
                out.push(db * v * sign(signs, j));
            }
        }
    }
}

/// One IQ3_S block (110 bytes): 9-bit indices of 4-value points, a sign bit per value, eight
/// 4-bit odd scales.
pub(super) fn iq3_s(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ3_S);
    let d = f16_at(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for i in 0..QK_K / 4 {
        let index = qs[i] as usize | ((((qh[i / 8] >> (i % 8)) & 1) as usize) << 8);
        let ib = i / 8;
        let s = (scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
        let db = d * (1 + 2 * s) as f32;
        for (j, &v) in g.point(index).iter().enumerate() {
            let e = 4 * i + j;
            out.push(db * v * sign(signs[e / 8] as u32, e % 8));
        }
    }
}

/// IQ1's shift of every grid value, its sign from a bit per group.
const IQ1_DELTA: f32 = 0.125;

/// One IQ1_S block (50 bytes): 11-bit indices of 8-value points in {-1, 0, 1}, per 32 values
/// a 3-bit odd scale and the sign of a shift.
pub(super) fn iq1_s(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ1_S);
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for ib in 0..QK_K / 32 {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
        for l in 0..4 {
            let index = qs[4 * ib + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
            out.extend(g.point(index).iter().map(|&v| dl * (v + delta)));
        }
    }
}

/// One IQ1_M block (56 bytes): IQ1's points with a shift sign per 8 values and a 3-bit scale
/// per 16; the block's f16 scale is spread over the top four bits of four 16-bit words.
pub(super) fn iq1_m(b: &[u8], out: &mut Vec<f32>) {
    let g = grid_of!(IQ1_S);
    let (qs, qh) = (&b[0..32], &b[32..48]);
    let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
    let d = f16::from_bits((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000)).to_f32();
    for i in 0..QK_K / 8 {
        let s = (sc[i / 8] >> (3 * ((i / 2) % 4))) & 7;
        let dl = d * (2 * s + 1) as f32;
        let nibble = qh[i / 2] >> (4 * (i % 2));
        let index = qs[i] as usize | (((nibble & 7) as usize) << 8);
        let delta = if nibble & 8 == 0 { IQ1_DELTA } else { -IQ1_DELTA };
        out.extend(g.point(index).iter().map(|&v| dl * (v + delta)));
    }
}

const TQ_POWERS: [u8; 5] = [1, 3, 9, 27, 81];

/// One TQ1_0 block (54 bytes): ternary values five to a byte (base 3, scaled to 0..255), the
/// last sixteen four to a byte, and an f16 scale.
pub(super) fn tq1_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 52);
    let trit = |byte: u8, power: u8| ((byte.wrapping_mul(power) as u16 * 3) >> 8) as i8 - 1;
    for (bytes, powers) in [(&b[0..32], &TQ_POWERS[..]), (&b[32..48], &TQ_POWERS[..]), (&b[48..52], &TQ_POWERS[..4])] {
        for &p in powers {
            out.extend(bytes.iter().map(|&byte| d * trit(byte, p) as f32));
        }
    }
}

/// One TQ2_0 block (66 bytes): ternary values as 2-bit codes 0..2, and an f16 scale.
pub(super) fn tq2_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 64);
    for half in b[..64].chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            out.extend(half.iter().map(|&q| d * (((q >> shift) & 3) as i8 - 1) as f32));
        }
    }
}

/// MXFP4's e2m1 values, doubled (its scale is halved to match).
const MXFP4_LEVELS: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of 2^(e − 127), the e8m0 scale of MXFP4, as ggml computes it from the bits.
fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(if e < 2 { 0x0020_0000 << e } else { ((e - 1) as u32) << 23 })
}

/// One MXFP4 block (17 bytes, 32 values): an e8m0 scale and 4-bit e2m1 codes, the first 16
/// values in the low nibbles.
pub(super) fn mxfp4(b: &[u8], out: &mut Vec<f32>) {
    fp4_values(e8m0_half(b[0]), &b[1..17], out);
}

/// The e2m1 values of `codes` at scale `d`, MXFP4's and NVFP4's layout: the low nibbles' values
/// first, then the high nibbles'.
fn fp4_values(d: f32, codes: &[u8], out: &mut Vec<f32>) {
    for shift in [0, 4] {
        out.extend(codes.iter().map(|&q| d * MXFP4_LEVELS[((q >> shift) & 0xf) as usize] as f32));
    }
}

/// Half of an unsigned e4m3 scale (bias 7; 0 and 0x7f are zero), as ggml decodes NVFP4's.
fn ue4m3_half(x: u8) -> f32 {
    let (exp, man) = ((x >> 3) & 0xf, (x & 7) as f32);
    let raw = if exp == 0 { man * (1.0 / 512.0) } else { (1.0 + man / 8.0) * 2f32.powi(exp as i32 - 7) };
    if x == 0 || x == 0x7f {
        0.0
    } else {
        raw * 0.5
    }
}

/// The largest magnitude NVFP4 holds: level 12 at the largest e4m3 scale (0x7e, 448 halved).
pub(super) const NVFP4_LARGEST: f32 = 2688.0;

/// One NVFP4 block (36 bytes, 64 values): four e4m3 scales, one per 16 values, then their e2m1
/// codes, eight bytes each: the first 8 values in the low nibbles, the next 8 in the high.
pub(super) fn nvfp4(b: &[u8], out: &mut Vec<f32>) {
    for (s, codes) in b[4..36].chunks_exact(8).enumerate() {
        fp4_values(ue4m3_half(b[s]), codes, out);
    }
}

/// NVFP4 from f32 (64 values): per 16, the smallest e4m3 scale whose largest level reaches the
/// largest magnitude (or the largest scale), each value the nearest code.
pub(super) fn quantize_nvfp4(b: &[f32], out: &mut Vec<u8>) {
    let mut codes = vec![];
    for part in b.chunks_exact(16) {
        let max = abs_max(part);
        // Codes 0x01..=0x7e rise with their value; 12 is the largest level.
        let scale = (1..=0x7eu8).find(|&x| ue4m3_half(x) * 12.0 >= max).unwrap_or(0x7e);
        let scale = if max == 0.0 { 0 } else { scale };
        out.push(scale);
        codes.extend(part.iter().map(|&v| nearest_level(ue4m3_half(scale), v)));
    }
    for c in codes.chunks_exact(16) {
        out.extend((0..8).map(|j| c[j] | c[8 + j] << 4));
    }
}

/// The code of MXFP4's and NVFP4's levels nearest `v` at scale `d` (the first of equals).
fn nearest_level(d: f32, v: f32) -> u8 {
    let mut best = 0;
    for (k, &level) in MXFP4_LEVELS.iter().enumerate() {
        if (d * level as f32 - v).abs() < (d * MXFP4_LEVELS[best] as f32 - v).abs() {
            best = k;
        }
    }
    best as u8
}

/// TQ1_0 and TQ2_0 from f32 (32 × 8 values): each value the nearest of −d, 0, d with d the
/// block's largest magnitude, as llama.cpp's Python package encodes them.
pub(super) fn quantize_ternary(tq1: bool, b: &[f32], out: &mut Vec<u8>) {
    let d = abs_max(b);
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    // 0, 1 or 2 for −1, 0, 1.
    let q: Vec<u8> = b.iter().map(|&v| ((v * id).round().clamp(-1.0, 1.0) as i8 + 1) as u8).collect();
    if tq1 {
        let pack = |values: &[u8], width: usize, powers: &[u8]| -> Vec<u8> {
            (0..width)
                .map(|j| {
                    let sum: u16 = powers.iter().enumerate().map(|(k, &p)| values[(powers.len() - 1 - k) * width + j] as u16 * p as u16).sum();
                    (sum * 256).div_ceil(243) as u8
                })
                .collect()
        };
        // The first power multiplies the last value of the five: its trit is read first.
        out.extend(pack(&q[0..160], 32, &[1, 3, 9, 27, 81]));
        out.extend(pack(&q[160..240], 16, &[1, 3, 9, 27, 81]));
        out.extend(pack(&q[240..256], 4, &[3, 9, 27, 81]));
    } else {
        for half in q.chunks_exact(128) {
            out.extend((0..32).map(|j| half[j] | half[32 + j] << 2 | half[64 + j] << 4 | half[96 + j] << 6));
        }
    }
    out.extend(f16::from_f32(d).to_le_bytes());
}

/// MXFP4 from f32 (32 values): the scale 2^(⌊log2 max⌋ − 2), each value the nearest code.
pub(super) fn quantize_mxfp4(b: &[f32], out: &mut Vec<u8>) {
    let max = abs_max(b);
    let e = if max > 0.0 { (max.log2().floor() - 2.0 + 127.0).clamp(0.0, 255.0) as u8 } else { 0 };
    let d = e8m0_half(e);
    let code = |v: f32| nearest_level(d, v);
    out.push(e);
    out.extend((0..16).map(|j| code(b[j]) | code(b[16 + j]) << 4));
}
