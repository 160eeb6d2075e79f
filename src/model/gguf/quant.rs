//! ggml's tensor element types: the block layouts of llama.cpp's `ggml-common.h`, decoded to f32
//! (`dequantize`) and encoded from f32 (`quantize`, for tests and for tools that build models).
//!
//! GGUF files on model hubs are mostly "K-quant" mixes (Q4_K_M, Q5_K_M, Q6_K, …): 256-element
//! super-blocks for matrices whose rows are a multiple of 256 wide, and a legacy 32-element type
//! (Q5_0, Q5_1, Q8_0, IQ4_NL) for the rest — SmolLM2's 576-wide rows among them. Every type such
//! a mix uses is read here, and the lattice i-quants (IQ1–IQ3) and ternary types of the low-bit
//! mixes, with MXFP4 and NVFP4 (`iquant.rs`). The decoders follow the order of f32 operations of
//! llama.cpp's reference C code and of its Python package, and give the same bits as that package (checked in
//! `tests/gguf.rs`; a compiled ggml that fuses a multiply-add may differ in the last bit).
//!
//! The encoders are simple — one scale per (sub-)block from its extremes, no search over scales
//! as llama.cpp's quantisers do — so they round-trip to within a quantisation step, which is what
//! tests need; they are not meant to make good model files. The lattice types are read only.

use super::iquant;
use half::{bf16, f16};

/// The tensor element types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ3_XXS,
    IQ3_S,
    IQ1_S,
    IQ1_M,
    TQ1_0,
    TQ2_0,
    MXFP4,
    NVFP4,
}

/// Elements of a K-quant super-block.
const QK_K: usize = 256;

/// IQ4_NL's and IQ4_XS's 16 non-linear levels.
const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

impl GgmlType {
    pub const ALL: [GgmlType; 26] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
    ];

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::IQ4_NL => 20,
            GgmlType::IQ4_XS => 23,
            GgmlType::IQ2_XXS => 16,
            GgmlType::IQ2_XS => 17,
            GgmlType::IQ3_XXS => 18,
            GgmlType::IQ1_S => 19,
            GgmlType::IQ3_S => 21,
            GgmlType::IQ2_S => 22,
            GgmlType::IQ1_M => 29,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::MXFP4 => 39,
            GgmlType::NVFP4 => 40,
        }
    }

    /// Whether [`quantize`] writes this type: all but the lattice i-quants, whose grid points
    /// llama.cpp chooses by a search with an importance matrix (`iquant`).
    pub fn encodable(self) -> bool {
        !matches!(self, GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S | GgmlType::IQ1_S | GgmlType::IQ1_M)
    }

    /// (elements, bytes) of one block; rows (ne[0]) are a whole number of blocks.
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 | GgmlType::IQ4_NL => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2_K => (QK_K, 84),
            GgmlType::Q3_K => (QK_K, 110),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q5_K => (QK_K, 176),
            GgmlType::Q6_K => (QK_K, 210),
            GgmlType::IQ4_XS => (QK_K, 136),
            GgmlType::IQ2_XXS => (QK_K, 66),
            GgmlType::IQ2_XS => (QK_K, 74),
            GgmlType::IQ2_S => (QK_K, 82),
            GgmlType::IQ3_XXS => (QK_K, 98),
            GgmlType::IQ3_S => (QK_K, 110),
            GgmlType::IQ1_S => (QK_K, 50),
            GgmlType::IQ1_M => (QK_K, 56),
            GgmlType::TQ1_0 => (QK_K, 54),
            GgmlType::TQ2_0 => (QK_K, 66),
            GgmlType::MXFP4 => (32, 17),
            GgmlType::NVFP4 => (64, 36),
        }
    }
}

/// ggml's name for a type id, read or not (for messages about files this reader refuses).
pub fn type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 42] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64",
        "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0", "TQ2_0", "", "", "", "MXFP4", "NVFP4", "Q1_0",
    ];
    NAMES.get(id as usize).copied().filter(|n| !n.is_empty())
}

/// The types this reader decodes, for error messages: "F32 0, F16 1, …".
pub fn supported_list() -> String {
    GgmlType::ALL.iter().map(|t| format!("{t:?} {}", t.id())).collect::<Vec<_>>().join(", ")
}

pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K's and Q5_K's 6-bit scale and min of sub-block `j` from their 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q3_K's 6-bit scale of sub-block `i` (0..16) from its 12 packed bytes: the low four bits in
/// bytes 0..8 (low nibbles first), the high two in bytes 8..12.
fn scale_q3k(i: usize, q: &[u8]) -> i8 {
    let low = (q[i % 8] >> (4 * (i / 8))) & 0xf;
    let high = (q[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// Decodes one block of `ty` into `out` (exactly one block of values).
fn dequantize_block(ty: GgmlType, b: &[u8], out: &mut Vec<f32>) {
    match ty {
        GgmlType::F32 => out.push(f32::from_le_bytes(b.try_into().expect("4 bytes"))),
        GgmlType::F16 => out.push(f16_at(b, 0)),
        GgmlType::BF16 => out.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        // Nibble order: byte j holds element j (low) and element j + 16 (high).
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            out.extend(qs.iter().map(|&q| d * ((q & 0xf) as i32 - 8) as f32));
            out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            out.extend(qs.iter().map(|&q| d * (q & 0xf) as f32 + m));
            out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
        }
        // The fifth bit of element j is bit j of a little-endian u32.
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let legacy_min = ty == GgmlType::Q5_1;
            let d = f16_at(b, 0);
            let m = if legacy_min { f16_at(b, 2) } else { 0.0 };
            let at = if legacy_min { 4 } else { 2 };
            let qh = u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
            let qs = &b[at + 4..at + 20];
            let value = |low: u8, j: usize| {
                let q = (low as u32 | ((qh >> j) & 1) << 4) as i32;
                if legacy_min {
                    d * q as f32 + m
                } else {
                    d * (q - 16) as f32
                }
            };
            out.extend(qs.iter().enumerate().map(|(j, &q)| value(q & 0xf, j)));
            out.extend(qs.iter().enumerate().map(|(j, &q)| value(q >> 4, j + 16)));
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
        }
        GgmlType::IQ4_NL => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            out.extend(qs.iter().map(|&q| d * IQ4_LEVELS[(q & 0xf) as usize] as f32));
            out.extend(qs.iter().map(|&q| d * IQ4_LEVELS[(q >> 4) as usize] as f32));
        }
        // K-quants: element e of a super-block is in sub-block e / 16 (e / 32 for Q4_K, Q5_K and
        // IQ4_XS); each half of 128 elements takes its 2-bit fields from 32 bytes, four shifts deep.
        GgmlType::Q2_K => {
            let (scales, qs) = (&b[0..16], &b[16..80]);
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            for e in 0..QK_K {
                let (half, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let sc = scales[e / 16];
                let (dl, ml) = (d * (sc & 0xf) as f32, dmin * (sc >> 4) as f32);
                out.push(dl * ((qs[32 * half + l] >> (2 * j)) & 3) as f32 - ml);
            }
        }
        GgmlType::Q3_K => {
            let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
            let d = f16_at(b, 108);
            for e in 0..QK_K {
                let (half, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let dl = d * scale_q3k(e / 16, scales) as f32;
                let low = ((qs[32 * half + l] >> (2 * j)) & 3) as i8;
                let high_set = hmask[l] & (1 << (4 * half + j)) != 0;
                out.push(dl * (low - if high_set { 0 } else { 4 }) as f32);
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let scales = &b[4..16];
            let (qh, ql) = if ty == GgmlType::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
            for e in 0..QK_K {
                // Chunks of 64: 32 bytes, low nibbles the first 32 elements, high the next.
                let (chunk, upper, l) = (e / 64, (e % 64) / 32, e % 32);
                let (sc, m) = scale_min_k4(e / 32, scales);
                let (d1, m1) = (d * sc as f32, dmin * m as f32);
                let mut q = (ql[32 * chunk + l] >> (4 * upper)) & 0xf;
                if let Some(qh) = qh {
                    q |= ((qh[l] >> (2 * chunk + upper)) & 1) << 4;
                }
                out.push(d1 * q as f32 - m1);
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            for e in 0..QK_K {
                // In each half, quarter k of 32 elements takes its low four bits from ql's
                // bytes 32·(k % 2).. (low nibbles for k < 2, high for k ≥ 2) and its top two
                // from bits 2k..2k+2 of qh's 32 bytes.
                let (half, k, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = (ql[64 * half + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
                let high = (qh[32 * half + l] >> (2 * k)) & 3;
                let q = (low | (high << 4)) as i8 - 32;
                out.push(d * scales[e / 16] as i8 as f32 * q as f32);
            }
        }
        GgmlType::IQ4_XS => {
            let d = f16_at(b, 0);
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            let (scales_l, qs) = (&b[4..8], &b[8..136]);
            for e in 0..QK_K {
                let (ib, j) = (e / 32, e % 32);
                let ls = ((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) | ((((scales_h >> (2 * ib)) & 3) as u8) << 4);
                let dl = d * (ls as i32 - 32) as f32;
                let q = (qs[16 * ib + j % 16] >> (4 * (j / 16))) & 0xf;
                out.push(dl * IQ4_LEVELS[q as usize] as f32);
            }
        }
        GgmlType::IQ2_XXS => iquant::iq2_xxs(b, out),
        GgmlType::IQ2_XS => iquant::iq2_xs(b, out),
        GgmlType::IQ2_S => iquant::iq2_s(b, out),
        GgmlType::IQ3_XXS => iquant::iq3_xxs(b, out),
        GgmlType::IQ3_S => iquant::iq3_s(b, out),
        GgmlType::IQ1_S => iquant::iq1_s(b, out),
        GgmlType::IQ1_M => iquant::iq1_m(b, out),
        GgmlType::TQ1_0 => iquant::tq1_0(b, out),
        GgmlType::TQ2_0 => iquant::tq2_0(b, out),
        GgmlType::MXFP4 => iquant::mxfp4(b, out),
        GgmlType::NVFP4 => iquant::nvfp4(b, out),
    }
}

/// Decodes `bytes` (a whole number of blocks of `ty`) to f32.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let (block_elems, block_bytes) = ty.block();
    let mut out = Vec::with_capacity(bytes.len() / block_bytes * block_elems);
    for b in bytes.chunks_exact(block_bytes) {
        dequantize_block(ty, b, &mut out);
    }
    out
}

/// Encodes f32 values (a whole number of blocks) into `ty`'s layout. The values must be finite
/// (a NaN takes some finite code); a caller that may hold others checks first, as the export does.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    assert!(ty.encodable(), "{ty:?} is read only: callers check GgmlType::encodable");
    let (block, _) = ty.block();
    assert!(x.len().is_multiple_of(block), "{} values are not a whole number of {ty:?} blocks", x.len());
    let mut out = Vec::new();
    for b in x.chunks_exact(block) {
        quantize_block(ty, b, &mut out);
    }
    out
}

fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The largest magnitude.
pub(super) fn abs_max(b: &[f32]) -> f32 {
    b.iter().fold(0f32, |m, &v| m.max(v.abs()))
}

/// The value of largest magnitude, with its sign.
fn signed_max(b: &[f32]) -> f32 {
    b.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn extremes(b: &[f32]) -> (f32, f32) {
    (b.iter().copied().fold(f32::INFINITY, f32::min), b.iter().copied().fold(f32::NEG_INFINITY, f32::max))
}

/// The nearest of `levels` to v.
fn nearest(levels: &[i8], v: f32) -> u8 {
    (0..levels.len()).min_by(|&a, &b| (levels[a] as f32 - v).abs().total_cmp(&(levels[b] as f32 - v).abs())).expect("levels") as u8
}

/// A super-block's f16 scale for sub-block scales up to `max` stored in `levels` steps, and the
/// f32 value it decodes to.
fn super_scale(max: f32, levels: f32) -> (f16, f32) {
    let d = f16::from_f32(max / levels);
    (d, d.to_f32())
}

/// Packs 16 values of 0..16 (two per byte, element j low and j + 16 high) for the 32-element types.
fn nibbles(q: &[u8]) -> impl Iterator<Item = u8> + '_ {
    (0..16).map(|j| (q[j] & 0xf) | ((q[j + 16] & 0xf) << 4))
}

fn quantize_block(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    match ty {
        GgmlType::F32 => out.extend(b[0].to_le_bytes()),
        GgmlType::F16 => out.extend(f16::from_f32(b[0]).to_le_bytes()),
        GgmlType::BF16 => out.extend(bf16::from_f32(b[0]).to_le_bytes()),
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            // The value of largest magnitude maps to the most negative level.
            let half = if ty == GgmlType::Q4_0 { 8.0 } else { 16.0 };
            let d = signed_max(b) / -half;
            let id = inverse(d);
            let q: Vec<u8> = b.iter().map(|&v| ((v * id + half + 0.5) as u8).min(2 * half as u8 - 1)).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            if ty == GgmlType::Q5_0 {
                out.extend(high_bits(&q).to_le_bytes());
            }
            out.extend(nibbles(&q));
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let top = if ty == GgmlType::Q4_1 { 15u8 } else { 31 };
            let (min, max) = extremes(b);
            let d = (max - min) / top as f32;
            let id = inverse(d);
            let q: Vec<u8> = b.iter().map(|&v| (((v - min) * id + 0.5) as u8).min(top)).collect();
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(f16::from_f32(min).to_le_bytes());
            if ty == GgmlType::Q5_1 {
                out.extend(high_bits(&q).to_le_bytes());
            }
            out.extend(nibbles(&q));
        }
        GgmlType::Q8_0 => {
            let amax = abs_max(b);
            let d = amax / 127.0;
            let id = inverse(d);
            out.extend(f16::from_f32(d).to_le_bytes());
            out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
        }
        GgmlType::IQ4_NL => {
            let d = f16::from_f32(signed_max(b) / IQ4_LEVELS[0] as f32);
            let id = inverse(d.to_f32());
            let q: Vec<u8> = b.iter().map(|&v| nearest(&IQ4_LEVELS, v * id)).collect();
            out.extend(d.to_le_bytes());
            out.extend(nibbles(&q));
        }
        GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K => quantize_k_with_min(ty, b, out),
        GgmlType::Q3_K | GgmlType::Q6_K | GgmlType::IQ4_XS => quantize_k_symmetric(ty, b, out),
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => iquant::quantize_ternary(ty == GgmlType::TQ1_0, b, out),
        GgmlType::MXFP4 => iquant::quantize_mxfp4(b, out),
        GgmlType::NVFP4 => iquant::quantize_nvfp4(b, out),
        GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S | GgmlType::IQ3_XXS | GgmlType::IQ3_S | GgmlType::IQ1_S | GgmlType::IQ1_M => {
            unreachable!("quantize refuses the read-only types first")
        }
    }
}

/// The fifth bits of 32 five-bit values, element j in bit j.
fn high_bits(q: &[u8]) -> u32 {
    q.iter().enumerate().fold(0u32, |h, (j, &v)| h | (((v >> 4) & 1) as u32) << j)
}

/// Q2_K, Q4_K, Q5_K: value = d·scale·q − dmin·min per sub-block, q from 0.
fn quantize_k_with_min(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    let (sub, top, scale_bits) = match ty {
        GgmlType::Q2_K => (16, 3u8, 15.0),
        GgmlType::Q4_K => (32, 15, 63.0),
        _ => (32, 31, 63.0),
    };
    // Per sub-block: the step and the (non-negative) amount subtracted.
    let subs: Vec<(f32, f32)> = b
        .chunks(sub)
        .map(|c| {
            let (min, max) = extremes(c);
            let min = min.min(0.0);
            ((max - min) / top as f32, -min)
        })
        .collect();
    let (d, dv) = super_scale(subs.iter().fold(0f32, |m, s| m.max(s.0)), scale_bits);
    let (dmin, dminv) = super_scale(subs.iter().fold(0f32, |m, s| m.max(s.1)), scale_bits);
    let level = |v: f32, scale: f32| ((v * inverse(scale)).round() as i32).clamp(0, scale_bits as i32) as u8;
    let ls: Vec<u8> = subs.iter().map(|s| level(s.0, dv)).collect();
    let lm: Vec<u8> = subs.iter().map(|s| level(s.1, dminv)).collect();
    let q: Vec<u8> = b
        .iter()
        .enumerate()
        .map(|(e, &v)| {
            let (dl, ml) = (dv * ls[e / sub] as f32, dminv * lm[e / sub] as f32);
            (((v + ml) * inverse(dl)).round() as i32).clamp(0, top as i32) as u8
        })
        .collect();
    match ty {
        GgmlType::Q2_K => {
            out.extend(ls.iter().zip(&lm).map(|(s, m)| s | (m << 4)));
            out.extend(two_bit_planes(&q));
            out.extend(d.to_le_bytes());
            out.extend(dmin.to_le_bytes());
        }
        _ => {
            out.extend(d.to_le_bytes());
            out.extend(dmin.to_le_bytes());
            let mut scales = [0u8; 12];
            for j in 0..8 {
                if j < 4 {
                    scales[j] = ls[j];
                    scales[j + 4] = lm[j];
                } else {
                    scales[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
                    scales[j - 4] |= (ls[j] >> 4) << 6;
                    scales[j] |= (lm[j] >> 4) << 6;
                }
            }
            out.extend(scales);
            if ty == GgmlType::Q5_K {
                out.extend((0..32).map(|l| (0..8).fold(0u8, |h, bit| h | ((q[32 * bit + l] >> 4) & 1) << bit)));
            }
            // Chunks of 64: byte l holds element l (low nibble) and element l + 32 (high).
            out.extend((0..QK_K / 2).map(|i| {
                let (chunk, l) = (i / 32, i % 32);
                (q[64 * chunk + l] & 0xf) | ((q[64 * chunk + 32 + l] & 0xf) << 4)
            }));
        }
    }
}

/// Q2_K's and Q3_K's 2-bit fields: in each half of 128, byte l of its 32 holds elements
/// l, l + 32, l + 64, l + 96 at shifts 0, 2, 4, 6.
fn two_bit_planes(q: &[u8]) -> Vec<u8> {
    (0..QK_K / 4).map(|i| (0..4).fold(0u8, |byte, j| byte | (q[128 * (i / 32) + 32 * j + i % 32] & 3) << (2 * j))).collect()
}

/// Q3_K, Q6_K, IQ4_XS: value = d·scale·level per sub-block, signed scales and levels.
fn quantize_k_symmetric(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    // Sub-block width, the most negative level (the largest magnitude maps to it) and the
    // largest scale magnitude stored.
    let (sub, most_negative, scale_top) = match ty {
        GgmlType::Q3_K => (16, -4.0, 31.0),
        GgmlType::Q6_K => (16, -32.0, 127.0),
        _ => (32, IQ4_LEVELS[0] as f32, 31.0),
    };
    let subs: Vec<f32> = b.chunks(sub).map(|c| signed_max(c) / most_negative).collect();
    let (d, dv) = super_scale(abs_max(&subs), scale_top);
    let ls: Vec<i32> = subs.iter().map(|s| ((s * inverse(dv)).round() as i32).clamp(-(scale_top as i32) - 1, scale_top as i32)).collect();
    let level = |e: usize, v: f32| -> u8 {
        let x = v * inverse(dv * ls[e / sub] as f32);
        match ty {
            GgmlType::Q3_K => ((x.round() as i32).clamp(-4, 3) + 4) as u8,
            GgmlType::Q6_K => ((x.round() as i32).clamp(-32, 31) + 32) as u8,
            _ => nearest(&IQ4_LEVELS, x),
        }
    };
    let q: Vec<u8> = b.iter().enumerate().map(|(e, &v)| level(e, v)).collect();
    match ty {
        GgmlType::Q3_K => {
            // Stored as q + 4: two low bits in the planes, the third in hmask.
            out.extend((0..32).map(|l| (0..8).fold(0u8, |h, bit| h | ((q[32 * bit + l] >> 2) & 1) << bit)));
            out.extend(two_bit_planes(&q));
            let mut scales = [0u8; 12];
            for (i, &s) in ls.iter().enumerate() {
                let s = (s + 32) as u8;
                scales[i % 8] |= (s & 0xf) << (4 * (i / 8));
                scales[8 + i % 4] |= (s >> 4) << (2 * (i / 4));
            }
            out.extend(scales);
            out.extend(d.to_le_bytes());
        }
        GgmlType::Q6_K => {
            let mut ql = [0u8; 128];
            let mut qh = [0u8; 64];
            for (e, &v) in q.iter().enumerate() {
                let (half, k, l) = (e / 128, (e % 128) / 32, e % 32);
                ql[64 * half + 32 * (k % 2) + l] |= (v & 0xf) << (4 * (k / 2));
                qh[32 * half + l] |= (v >> 4) << (2 * k);
            }
            out.extend(ql);
            out.extend(qh);
            out.extend(ls.iter().map(|&s| s as i8 as u8));
            out.extend(d.to_le_bytes());
        }
        _ => {
            out.extend(d.to_le_bytes());
            let stored: Vec<u8> = ls.iter().map(|&s| (s + 32) as u8).collect();
            let high = stored.iter().enumerate().fold(0u16, |h, (ib, &s)| h | (((s >> 4) & 3) as u16) << (2 * ib));
            out.extend(high.to_le_bytes());
            out.extend((0..4).map(|i| (stored[2 * i] & 0xf) | ((stored[2 * i + 1] & 0xf) << 4)));
            out.extend((0..QK_K / 2).map(|i| {
                let (ib, j) = (i / 16, i % 16);
                q[32 * ib + j] | (q[32 * ib + j + 16] << 4)
            }));
        }
    }
}
