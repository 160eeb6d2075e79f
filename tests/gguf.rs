//! GGUF reader and tokenizer: tiny models written with every supported tensor type and read back
//! exactly; every quantised type decoded bit for bit as llama.cpp's own Python package decodes it;
//! corrupt files give errors naming the file, never panics; the real SmolLM2 when present.

use half::{bf16, f16};
use rand::{Rng, RngCore};
use revive::model::gguf::write::{quantize, GgufWriter};
use revive::model::gguf::export::{export_over, EditedType, EDITED_KEY};
use revive::model::gguf::{dequantize, load_gguf, load_gguf_bytes, GgmlType, GgufFile, GgufMeta, Value};
use revive::model::{Arch, RopeStyle, Tok, Weights};
use revive::testing::rng;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

const FILE: &str = "tiny-test.gguf";
const TYPES: [GgmlType; 6] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];
// Tiny llama: d 64, 4 heads of 16, 2 kv heads, MLP 96, 2 layers.
const D: usize = 64;
const FFN: usize = 96;
const KV: usize = 32;
const LAYERS: usize = 2;

/// A tiny llama's widths and the types its matrices cycle through.
struct Dims {
    d: usize,
    ffn: usize,
    kv: usize,
    types: &'static [GgmlType],
}

const SMALL: Dims = Dims { d: D, ffn: FFN, kv: KV, types: &TYPES };
/// Rows 256 and 512 wide, so that every matrix can be a K-quant (super-blocks of 256), with the
/// 32-element types a K-quant file falls back to.
const WIDE: Dims = Dims {
    d: 256,
    ffn: 512,
    kv: 128,
    types: &[
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
    ],
};

/// Rows 256 and 512 wide in the low-bit types: the lattice i-quants, the ternary types,
/// MXFP4 and NVFP4 (layer 1's down-projection, the 14th matrix, is IQ2_S; its query TQ1_0).
const LOW_BIT: Dims = Dims {
    d: 256,
    ffn: 512,
    kv: 128,
    // The types after IQ4_XS in `GgmlType::ALL`: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S,
    // IQ1_M, TQ1_0, TQ2_0, MXFP4, NVFP4.
    types: GgmlType::ALL.split_at(15).1,
};

/// Byte offsets of each type's f16 scale fields (llama.cpp's `ggml-common.h`): random bytes
/// elsewhere, a random finite scale there.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::TQ1_0 => &[52],
        GgmlType::TQ2_0 => &[64],
        // MXFP4's scale is an e8m0 byte, NVFP4's four e4m3 bytes, IQ1_M's f16 spread over nibbles
        // (all set in `encode`).
        GgmlType::MXFP4 | GgmlType::NVFP4 | GgmlType::IQ1_M => &[],
        _ => &[0],
    }
}

/// Encodes random values of `ty` by hand from the format's definition (not with the crate's
/// quantiser) and returns (bytes, the values they must decode to).
fn encode(ty: GgmlType, n: usize, rng: &mut impl Rng) -> (Vec<u8>, Vec<f32>) {
    let (mut bytes, mut want) = (vec![], vec![]);
    let scale = |rng: &mut dyn RngCore| f16::from_f32(rng.random_range(-0.05..0.05));
    for _ in 0..n / ty.block().0 {
        match ty {
            GgmlType::F32 => {
                let v: f32 = rng.random_range(-1.0..1.0);
                bytes.extend(v.to_le_bytes());
                want.push(v);
            }
            GgmlType::F16 => {
                let v = f16::from_f32(rng.random_range(-1.0..1.0));
                bytes.extend(v.to_le_bytes());
                want.push(v.to_f32());
            }
            GgmlType::BF16 => {
                let v = bf16::from_f32(rng.random_range(-1.0..1.0));
                bytes.extend(v.to_le_bytes());
                want.push(v.to_f32());
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = scale(rng);
                let m = scale(rng);
                let q: Vec<u8> = (0..32).map(|_| rng.random_range(0..16)).collect();
                bytes.extend(d.to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    bytes.extend(m.to_le_bytes());
                }
                // Byte j: element j in the low nibble, element j + 16 in the high one.
                bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
                want.extend(q.iter().map(|&q| match ty {
                    GgmlType::Q4_0 => d.to_f32() * (q as i32 - 8) as f32,
                    _ => d.to_f32() * q as f32 + m.to_f32(),
                }));
            }
            GgmlType::Q8_0 => {
                let d = scale(rng);
                let q: Vec<i8> = (0..32).map(|_| rng.random()).collect();
                bytes.extend(d.to_le_bytes());
                bytes.extend(q.iter().map(|&q| q as u8));
                want.extend(q.iter().map(|&q| d.to_f32() * q as f32));
            }
            // The other types' decoding is checked bit for bit against llama.cpp's package
            // (`dequantisers_match_llamas_python_package`); here they test the file plumbing.
            _ => {
                let mut block = vec![0u8; ty.block().1];
                rng.fill_bytes(&mut block);
                for &at in f16_fields(ty) {
                    block[at..at + 2].copy_from_slice(&scale(rng).to_le_bytes());
                }
                if ty == GgmlType::NVFP4 {
                    // Scales of 2^-6 to 2^1 (e4m3 with bias 7), below its top code.
                    for s in &mut block[0..4] {
                        *s = rng.random_range(0x08..0x48);
                    }
                }
                if ty == GgmlType::MXFP4 {
                    // 2^(e − 127) around 2^-5; past e ≈ 140 the largest level overflows f32.
                    block[0] = rng.random_range(115..130);
                }
                if ty == GgmlType::IQ1_M {
                    // The top four bits of each of the last four 16-bit words, low nibble first.
                    let d = scale(rng).to_bits();
                    for k in 0..4 {
                        block[49 + 2 * k] = (block[49 + 2 * k] & 0x0f) | ((((d >> (4 * k)) & 0xf) as u8) << 4);
                    }
                }
                want.extend(dequantize(ty, &block));
                bytes.extend(block);
            }
        }
    }
    (bytes, want)
}

/// Byte-level BPE vocabulary: a control token, the 256 byte symbols, two merges.
fn vocab() -> (Vec<String>, Vec<String>) {
    let mut bytes: Vec<String> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().map(String::from).collect();
    bytes.sort();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(bytes);
    tokens.extend(["he".into(), "Ġt".into()]);
    (tokens, vec!["h e".into(), "Ġ t".into()])
}

fn strs(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect())
}

/// A tiny llama GGUF with each matrix in a different type, and the canonical tensors it holds.
fn tiny(seed: u64) -> (GgufWriter, BTreeMap<String, Vec<f32>>) {
    tiny_of(seed, &SMALL)
}

fn tiny_of(seed: u64, dims: &Dims) -> (GgufWriter, BTreeMap<String, Vec<f32>>) {
    let (d, ffn, kv) = (dims.d, dims.ffn, dims.kv);
    let mut rng = rng(seed);
    let (tokens, merges) = vocab();
    let vocab_size = tokens.len();
    let mut w = GgufWriter::default();
    w.kv("general.architecture", Value::Str("llama".into()))
        .kv("llama.embedding_length", Value::U32(d as u32))
        .kv("llama.block_count", Value::U32(LAYERS as u32))
        .kv("llama.attention.head_count", Value::U32(4))
        .kv("llama.attention.head_count_kv", Value::U32(2))
        .kv("llama.feed_forward_length", Value::U32(ffn as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5))
        .kv("llama.rope.freq_base", Value::F32(10000.0))
        .kv("llama.context_length", Value::U64(128))
        .kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::Str("smollm".into()))
        .kv("tokenizer.ggml.tokens", strs(&tokens))
        .kv("tokenizer.ggml.merges", strs(&merges))
        .kv("tokenizer.ggml.token_type", Value::Array((0..vocab_size).map(|i| Value::I32(if i == 0 { 3 } else { 1 })).collect()))
        .kv("tokenizer.ggml.bos_token_id", Value::U32(0))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(0));
    let mut want = BTreeMap::new();
    let mut kinds = dims.types.iter().cycle();
    let mut add = |w: &mut GgufWriter, gguf: &str, canon: String, dims: &[usize], ty: GgmlType| {
        let (bytes, values) = encode(ty, dims.iter().product(), &mut rng);
        w.tensor(gguf, dims, ty, bytes);
        want.insert(canon, values);
    };
    add(&mut w, "token_embd.weight", "embed".into(), &[d, vocab_size], GgmlType::F32);
    for i in 0..LAYERS {
        add(&mut w, &format!("blk.{i}.attn_norm.weight"), format!("layers.{i}.attn_norm.weight"), &[d], GgmlType::F32);
        for (g, c, dims) in [
            ("attn_q", "wq", [d, d]),
            ("attn_k", "wk", [d, kv]),
            ("attn_v", "wv", [d, kv]),
            ("attn_output", "wo", [d, d]),
            ("ffn_gate", "w_gate", [d, ffn]),
            ("ffn_up", "w_up", [d, ffn]),
            ("ffn_down", "w_down", [ffn, d]),
        ] {
            add(&mut w, &format!("blk.{i}.{g}.weight"), format!("layers.{i}.{c}"), &dims, *kinds.next().unwrap());
        }
        add(&mut w, &format!("blk.{i}.ffn_norm.weight"), format!("layers.{i}.mlp_norm.weight"), &[d], GgmlType::F16);
    }
    add(&mut w, "output_norm.weight", "final_norm.weight".into(), &[d], GgmlType::BF16);
    (w, want)
}

/// Every GGUF value type, nested arrays and arrays of strings included.
fn all_value_types() -> Vec<(&'static str, Value)> {
    vec![
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.f32", Value::F32(1.5e-7)),
        ("t.bool", Value::Bool(true)),
        ("t.str", Value::Str("héllo ✓".into())),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f64", Value::F64(-2.5e300)),
        ("t.strs", Value::Array(vec![Value::Str("a".into()), Value::Str("".into()), Value::Str("ĠParis".into())])),
        ("t.nested", Value::Array(vec![Value::Array(vec![Value::I16(1), Value::I16(-2)]), Value::Array(vec![Value::I16(3)])])),
        ("t.bools", Value::Array(vec![Value::Bool(false), Value::Bool(true)])),
    ]
}

fn load(bytes: Vec<u8>) -> revive::error::Result<(Weights, GgufMeta)> {
    load_gguf_bytes(bytes, FILE)
}

/// Loads `bytes`, asserting that the loader does not panic; returns its error message, if any.
fn try_load(bytes: Vec<u8>, what: &str) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| load(bytes))) {
        Err(_) => panic!("{what}: the loader panicked"),
        Ok(Ok(_)) => None,
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(msg.contains(FILE), "{what}: the error does not name the file: {msg}");
            Some(msg)
        }
    }
}

fn expect_err(bytes: Vec<u8>, what: &str) -> String {
    try_load(bytes, what).unwrap_or_else(|| panic!("{what}: loaded without error"))
}

#[test]
fn tiny_model_round_trips_exactly() {
    for (version, alignment, dims) in [(2, None, &SMALL), (3, None, &SMALL), (3, Some(64u32), &SMALL), (2, Some(128), &SMALL), (3, None, &WIDE), (2, Some(64), &WIDE), (3, None, &LOW_BIT)] {
        let (mut w, want) = tiny_of(1, dims);
        for (k, v) in all_value_types() {
            w.kv(k, v);
        }
        if let Some(a) = alignment {
            w.kv("general.alignment", Value::U32(a));
        }
        let (weights, meta) = load(w.to_bytes(version)).unwrap_or_else(|e| panic!("v{version}: {e}"));
        assert_eq!(meta.version, version);
        assert_eq!(meta.alignment, alignment.map_or(32, u64::from));
        for (k, v) in all_value_types() {
            assert_eq!(meta.get(k), Some(&v), "metadata {k}");
        }
        let c = &weights.config;
        assert_eq!((c.arch, c.hidden, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim), (Arch::Llama, dims.d, LAYERS, 4, 2, dims.d / 4));
        assert_eq!((c.ffn_hidden, c.vocab_size, c.max_seq_len, c.rope_style), (dims.ffn, 259, 128, RopeStyle::Adjacent));
        assert_eq!((c.norm_eps, c.rope_theta, c.tied_embeddings), (1e-5, 10000.0, true));
        assert_eq!((c.bos_token_id, c.eos_token_id), (Some(0), Some(0)));
        assert_eq!(weights.tensors.len(), want.len());
        for (name, values) in &want {
            let t = &weights.tensors[name];
            assert_eq!(t.shape, c.expected_shape(name).unwrap(), "{name}");
            // Exact: the reader must apply the format's formula, nothing else.
            assert!(t.data == *values, "{name}: dequantised values differ (v{version})");
        }
        for &ty in dims.types {
            assert!(meta.tensors.iter().any(|t| t.ty == ty), "{ty:?} not exercised");
        }
    }
}

/// Blocks of every quantised type, random but for finite scales (subnormal in the last block),
/// with the values llama.cpp's `gguf` package (0.19.0) decodes them to:
/// `benches/baselines/gguf_quants.py` wrote the file.
#[test]
fn dequantisers_match_llamas_python_package() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gguf-quants.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hex = |s: &str| -> Vec<u8> { (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect() };
    let mut seen = vec![];
    for t in doc["types"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let ty = GgmlType::from_id(t["id"].as_u64().unwrap() as u32).unwrap_or_else(|| panic!("{name} is not read"));
        assert_eq!(format!("{ty:?}"), name);
        let bytes = hex(t["bytes"].as_str().unwrap());
        let want: Vec<u32> = hex(t["values"].as_str().unwrap()).chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect();
        let got: Vec<u32> = dequantize(ty, &bytes).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got.len(), want.len(), "{name}: value count");
        assert!(got.len() >= 2 * ty.block().0, "{name}: fewer than two blocks");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{name} element {i}: {} where llama.cpp decodes {}", f32::from_bits(*g), f32::from_bits(*w));
        }
        seen.push(ty);
    }
    for ty in GgmlType::ALL {
        let (elems, _) = ty.block();
        assert!(elems == 1 || seen.contains(&ty), "{ty:?} has no reference blocks");
    }
}

#[test]
fn loads_from_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("revive-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let (w, want) = tiny(2);
    std::fs::write(&path, w.to_bytes(3)).unwrap();
    let (weights, _) = load_gguf(&path).unwrap();
    assert_eq!(weights.tensors["layers.1.w_down"].data, want["layers.1.w_down"]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] = b'X';
    std::fs::write(&path, bytes).unwrap();
    let msg = load_gguf(&path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("magic"), "{msg}");
    let missing = dir.join("absent.gguf");
    let msg = load_gguf(&missing).unwrap_err().to_string();
    assert!(msg.contains("absent.gguf"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An edited model exported over its base GGUF: the edited down-projection in the type asked
/// for (f32 exactly; f16, Q8_0 and the base's own type to within their rounding), every other
/// tensor the base's bytes, the metadata entries the base's as stored (in order, an empty array
/// of strings kept) plus the list of what was rewritten, the data padded to the alignment; the
/// file loads back. Unedited, nothing is rewritten. Another model, a NaN, a tensor the base
/// lacks, a value the type cannot hold or blocks wider than the rows is refused, naming it, and
/// no file is left.
#[test]
fn an_edit_exports_over_its_base() {
    let dir = std::env::temp_dir().join(format!("revive-gguf-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.gguf");
    let mut w = tiny_of(11, &WIDE).0;
    // An empty array of strings: parsed, its element type is gone; the export must keep it.
    let mut empty = vec![];
    empty.extend(12u64.to_le_bytes());
    empty.extend(b"t.empty_strs");
    empty.extend(9u32.to_le_bytes());
    empty.extend(8u32.to_le_bytes());
    empty.extend(0u64.to_le_bytes());
    w.raw_kv.push(empty);
    // Wider than the last tensor (256 bf16 values), so that its padding shows.
    w.kv("general.alignment", Value::U32(1024));
    std::fs::write(&base, w.to_bytes(3)).unwrap();
    let g = GgufFile::read(&base).unwrap();
    let (orig, _) = load_gguf(&base).unwrap();
    let mut edited = orig.clone();
    // A rank-one change, as ROME writes one.
    let down = edited.tensors.get_mut("layers.1.w_down").unwrap();
    let cols = down.shape[1];
    let mut r = rng(12);
    let (u, v): (Vec<f32>, Vec<f32>) = ((0..down.shape[0]).map(|_| r.random_range(-1.0..1.0)).collect(), (0..cols).map(|_| r.random_range(-0.05..0.05)).collect());
    down.data.iter_mut().enumerate().for_each(|(i, x)| *x += u[i / cols] * v[i % cols]);
    let want = down.data.clone();
    let amax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let base_down = g.meta.tensor("blk.1.ffn_down.weight").unwrap().ty;

    assert_eq!(base_down, GgmlType::Q6_K, "the cycle of WIDE's types moved");
    for (edited_type, ty, tol) in [
        (EditedType::As(GgmlType::F32), GgmlType::F32, 0.0),
        (EditedType::As(GgmlType::F16), GgmlType::F16, amax / 1024.0),
        (EditedType::As(GgmlType::Q8_0), GgmlType::Q8_0, amax / 127.0),
        // One Q6_K step of the widest sub-block, and its scale's rounding.
        (EditedType::Keep, base_down, amax / 32.0 * (1.0 + 32.0 / 254.0)),
    ] {
        let out = dir.join(format!("{edited_type:?}.gguf"));
        let e = export_over(&base, &edited, edited_type, &out).unwrap();
        assert_eq!(e.rewritten, vec![("blk.1.ffn_down.weight".to_string(), ty)], "{edited_type:?}");
        assert_eq!(e.copied, g.meta.tensors.len() - 1);
        let back = GgufFile::read(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() % 1024, 0, "the last tensor is not padded to the alignment");
        assert_eq!(back.meta.tensors.len(), g.meta.tensors.len());
        // The base's entries as stored, in its order, then the list of what was rewritten.
        let raw: Vec<(&str, &[u8])> = back.raw_kv().collect();
        assert_eq!(raw[..raw.len() - 1], g.raw_kv().collect::<Vec<_>>()[..]);
        assert_eq!(raw.last().unwrap().0, EDITED_KEY);
        for t in &back.meta.tensors {
            let was = g.meta.tensor(&t.name).unwrap();
            if t.name == "blk.1.ffn_down.weight" {
                assert_eq!(t.ty, ty);
                let got = back.dequantize(t);
                let worst = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(worst <= tol, "{edited_type:?}: the edited tensor is {worst} off (allowed {tol})");
            } else {
                assert!(t.ty == was.ty && back.tensor_bytes(t) == g.tensor_bytes(was), "{edited_type:?}: {} is not the base's", t.name);
            }
        }
        let mut kv = back.meta.kv.clone();
        assert_eq!(kv.remove(EDITED_KEY), Some(Value::Array(vec![Value::Str("blk.1.ffn_down.weight".into())])));
        assert_eq!(kv, g.meta.kv);
        let (loaded, meta) = load_gguf(&out).unwrap();
        Tok::from_gguf(&meta, "exported").unwrap();
        if ty == GgmlType::F32 {
            assert_eq!(loaded.tensors, edited.tensors);
        }
    }

    // Unedited: the base's tensors and metadata, nothing rewritten.
    let same = dir.join("same.gguf");
    let e = export_over(&base, &orig, EditedType::As(GgmlType::F32), &same).unwrap();
    assert!(e.rewritten.is_empty() && e.copied == g.meta.tensors.len());
    let back = GgufFile::read(&same).unwrap();
    assert_eq!(back.raw_kv().collect::<Vec<_>>(), g.raw_kv().collect::<Vec<_>>());
    assert_eq!(back.meta.tensors.len(), g.meta.tensors.len());
    assert!(back.meta.tensors.iter().zip(&g.meta.tensors).all(|(a, b)| a.name == b.name && back.tensor_bytes(a) == g.tensor_bytes(b)));

    // Refusals, each naming what is wrong, and no file left behind.
    let refused = dir.join("refused.gguf");
    let (small, _) = load_gguf_bytes(tiny(11).0.to_bytes(3), "small.gguf").unwrap();
    let mut nan = edited.clone();
    nan.tensors.get_mut("layers.1.w_down").unwrap().data[5] = f32::NAN;
    let small_base = dir.join("small.gguf");
    std::fs::write(&small_base, tiny(11).0.to_bytes(3)).unwrap();
    let mut huge = edited.clone();
    huge.tensors.get_mut("layers.1.w_down").unwrap().data[7] = 1e6;
    let mut untied = edited.clone();
    untied.tensors.insert("lm_head".into(), edited.tensors["embed"].clone());
    let mut small_edited = small.clone();
    small_edited.tensors.get_mut("layers.0.wq").unwrap().data[0] += 1.0;
    for (what, base, weights, ty, needle) in [
        ("another model", &base, &small, EditedType::As(GgmlType::F32), "is this its base"),
        ("a NaN", &base, &nan, EditedType::As(GgmlType::F32), "layers.1.w_down has a non-finite value at 5"),
        ("a tensor the base lacks", &base, &untied, EditedType::As(GgmlType::F32), "has lm_head, which this base does not"),
        ("a value f16 cannot hold", &base, &huge, EditedType::As(GgmlType::F16), "does not fit F16: its value 1000000 at 7 becomes inf"),
        ("blocks wider than the rows", &small_base, &small_edited, EditedType::As(GgmlType::Q4_K), "not a whole number of Q4_K blocks"),
    ] {
        let msg = export_over(base, weights, ty, &refused).unwrap_err().to_string();
        assert!(msg.contains(needle), "{what}: {msg}");
        assert!(!refused.exists(), "{what}: a file was left");
    }
    assert_eq!("q4_k".parse::<EditedType>(), Ok(EditedType::As(GgmlType::Q4_K)));
    assert_eq!("keep".parse::<EditedType>(), Ok(EditedType::Keep));
    assert!("q3".parse::<EditedType>().unwrap_err().contains("q8_0"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An edit of a model from a low-bit file (its down-projection IQ2_S, a lattice type this
/// program reads but does not write) exports in another type, every unchanged tensor still the
/// base's bytes; `keep`, and naming a lattice type, are refused with what to choose.
#[test]
fn an_edit_of_a_lattice_quantised_model_exports_in_a_type_it_can_write() {
    let dir = std::env::temp_dir().join(format!("revive-gguf-lattice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.gguf");
    std::fs::write(&base, tiny_of(15, &LOW_BIT).0.to_bytes(3)).unwrap();
    let g = GgufFile::read(&base).unwrap();
    assert_eq!(g.meta.tensor("blk.1.ffn_down.weight").unwrap().ty, GgmlType::IQ2_S, "the cycle of LOW_BIT's types moved");
    let (mut edited, _) = load_gguf(&base).unwrap();
    edited.tensors.get_mut("layers.1.w_down").unwrap().data[3] += 0.25;
    let want = edited.tensors["layers.1.w_down"].data.clone();

    let refused = dir.join("refused.gguf");
    let msg = export_over(&base, &edited, EditedType::Keep, &refused).unwrap_err().to_string();
    assert!(msg.contains("IQ2_S") && msg.contains("does not write") && msg.contains("q8_0"), "{msg}");
    assert!(!refused.exists(), "a refused export left a file");
    assert!("iq2_xxs".parse::<EditedType>().unwrap_err().contains("q8_0"));
    // A small edit of a ternary matrix re-encoded in its own type rounds back to the base.
    let (mut small, _) = load_gguf(&base).unwrap();
    let wq = small.tensors.get_mut("layers.1.wq").unwrap();
    let zero = wq.data.iter().position(|v| *v == 0.0).unwrap();
    wq.data[zero] += 1e-4;
    let msg = export_over(&base, &small, EditedType::Keep, &refused).unwrap_err().to_string();
    assert!(msg.contains("does not survive TQ1_0"), "{msg}");
    assert!(!refused.exists(), "a refused export left a file");
    // Past NVFP4's largest value (level 12 at the largest scale) a value would be clamped.
    let mut big = edited.clone();
    big.tensors.get_mut("layers.1.w_down").unwrap().data[9] = 3000.0;
    let msg = export_over(&base, &big, EditedType::As(GgmlType::NVFP4), &refused).unwrap_err().to_string();
    assert!(msg.contains("does not fit NVFP4: its value 3000 at 9"), "{msg}");
    assert!(!refused.exists(), "a refused export left a file");
    assert_eq!("tq2_0".parse::<EditedType>(), Ok(EditedType::As(GgmlType::TQ2_0)));

    let out = dir.join("edited.gguf");
    let e = export_over(&base, &edited, EditedType::As(GgmlType::F16), &out).unwrap();
    assert_eq!(e.rewritten, vec![("blk.1.ffn_down.weight".to_string(), GgmlType::F16)]);
    let back = GgufFile::read(&out).unwrap();
    for t in &g.meta.tensors {
        if t.name != "blk.1.ffn_down.weight" {
            let o = back.meta.tensor(&t.name).unwrap();
            assert_eq!((o.ty, back.tensor_bytes(o)), (t.ty, g.tensor_bytes(t)), "{} was not copied byte for byte", t.name);
        }
    }
    let (loaded, _) = load_gguf(&out).unwrap();
    let got = &loaded.tensors["layers.1.w_down"].data;
    assert!(got.iter().zip(&want).all(|(a, b)| *a == f16::from_f32(*b).to_f32()), "the edited matrix is not its f16 rounding");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `revive export` writes a GGUF when --out ends in .gguf (a model without edits: every tensor
/// the base's), a Hugging Face directory otherwise; from a directory it writes a GGUF whole
/// (the base's values again, in f32), and refuses to keep base types it does not have.
#[test]
fn the_export_command_writes_gguf_over_a_gguf_or_whole() {
    let dir = std::env::temp_dir().join(format!("revive-gguf-export-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.gguf");
    std::fs::write(&base, tiny_of(13, &WIDE).0.to_bytes(3)).unwrap();
    let revive = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_revive")).arg("export").args(args).output().expect("runs");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (gguf, hf) = (dir.join("copy.gguf"), dir.join("hf"));
    let out = revive(&["-m", &path(&base), "--out", &path(&gguf)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (GgufFile::read(&base).unwrap(), GgufFile::read(&gguf).unwrap());
    assert_eq!(a.meta.tensors.len(), b.meta.tensors.len());
    assert!(a.meta.tensors.iter().zip(&b.meta.tensors).all(|(x, y)| a.tensor_bytes(x) == b.tensor_bytes(y)));
    let out = revive(&["-m", &path(&base), "--out", &path(&hf)]);
    assert!(out.status.success() && hf.join("model.safetensors").is_file(), "{}", String::from_utf8_lossy(&out.stderr));
    // From the directory, a GGUF is written whole: the base's values, now in f32.
    let out = revive(&["-m", &path(&hf), "--out", &path(&dir.join("from-hf.gguf"))]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (whole, _) = load_gguf(&dir.join("from-hf.gguf")).unwrap();
    let (base_w, _) = load_gguf(&base).unwrap();
    assert_eq!(whole.config, base_w.config);
    assert!(whole.tensors == base_w.tensors, "the GGUF written from the directory is not the base's model");
    let out = revive(&["-m", &path(&hf), "--out", &path(&dir.join("keep.gguf")), "--edited-type", "keep"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Hugging Face directory"), "{err}");
    let out = revive(&["-m", &path(&base), "--out", &path(&gguf), "--edited-type", "q7"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("q4_k"));
    let out = revive(&["-m", &path(&base), "--out", &path(&dir.join("hf2")), "--edited-type", "f16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--edited-type is for a GGUF export"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A session on a GGUF model saves it as a GGUF (`revive edit … --save gguf`): the edited
/// down-projections in f32, every other tensor the base's bytes, and loaded back the same
/// weights as the session's delta over the base; resumed, it writes a GGUF again, as its first
/// run asked, and `revive apply --save gguf` the same bytes. From a Hugging Face base the GGUF
/// is written whole.
#[test]
fn a_session_saves_its_model_as_gguf() {
    use revive::edit::hparams::{BatchHparams, BatchMethod, Templates};
    let dir = std::env::temp_dir().join(format!("revive-gguf-session-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = |p: &str| dir.join(p).display().to_string();
    std::fs::write(dir.join("base.gguf"), tiny_of(14, &WIDE).0.to_bytes(3)).unwrap();
    let edits = serde_json::json!([
        {"subject": "the hat", "prompt": "{} is on", "target_new": " he", "target_true": " the"},
        {"subject": "he", "prompt": "Where {} went:", "target_new": " there", "target_true": " here"},
    ]);
    std::fs::write(dir.join("edits.json"), edits.to_string()).unwrap();
    // The shipped MEMIT settings, cut down to the tiny model: its two layers, a short target
    // optimisation, no context templates, C0 from 1,024 tokens.
    let mut hp = BatchHparams::smollm2(BatchMethod::Memit);
    hp.layers = vec![0, 1];
    hp.v_steps = 4;
    hp.templates = Templates { prefixes: vec![], per_prefix: 0, length: 0, seed: 0 };
    hp.mom2_tokens = 1024;
    std::fs::write(dir.join("memit.json"), serde_json::to_string(&hp).unwrap()).unwrap();
    let revive = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_revive")).args(args).env("REVIVE_CACHE", dir.join("cache")).output().expect("runs")
    };
    let edit = |model: &str, out: &str| {
        revive(&["edit", "-m", model, "--method", "memit", "--edits", &path("edits.json"), "--hparams", &path("memit.json"), "--batch", "2", "--batch-metrics", "none", "--save", "gguf", "--out", out])
    };
    let run = edit(&path("base.gguf"), &path("session"));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let replay = revive(&["apply", "-m", &path("base.gguf"), "--journal", &path("session"), "--out", &path("replay"), "--save", "delta"]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    // A batch the journal does not hold is refused, not quietly taken as its last.
    let past = revive(&["apply", "-m", &path("base.gguf"), "--journal", &path("session"), "--upto", "9", "--out", &path("past"), "--save", "delta"]);
    let err = String::from_utf8_lossy(&past.stderr);
    assert!(!past.status.success() && err.contains("--upto 9") && err.contains("holds 1 batch"), "{err}");

    let (saved, _) = load_gguf(&dir.join("session/model.gguf")).unwrap();
    let (mut want, _) = load_gguf(&dir.join("base.gguf")).unwrap();
    let changed = revive::edit::session::apply_delta(&mut want, &dir.join("replay/delta.safetensors")).unwrap();
    assert_eq!(changed, vec!["layers.0.w_down".to_string(), "layers.1.w_down".to_string()]);
    assert_eq!(saved.tensors, want.tensors);
    let (base, out) = (GgufFile::read(&dir.join("base.gguf")).unwrap(), GgufFile::read(&dir.join("session/model.gguf")).unwrap());
    for (a, b) in base.meta.tensors.iter().zip(&out.meta.tensors) {
        if b.name.ends_with("ffn_down.weight") {
            assert_eq!(b.ty, GgmlType::F32, "{}", b.name);
        } else {
            assert!(a.ty == b.ty && base.tensor_bytes(a) == out.tensor_bytes(b), "{} is not the base's", b.name);
        }
    }

    // Resumed without --save, the session writes what its first run asked for again.
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("session/session.json")).unwrap()).unwrap();
    assert_eq!(config["output"], serde_json::json!({"save": "gguf", "dtype": "f32"}));
    std::fs::remove_file(dir.join("session/model.gguf")).unwrap();
    let resumed = revive(&["edit", "--resume", &path("session")]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(dir.join("session/model.gguf").is_file() && !dir.join("session/delta.safetensors").exists());
    assert_eq!(load_gguf(&dir.join("session/model.gguf")).unwrap().0.tensors, want.tensors);
    // `revive apply` rebuilds the same GGUF from the base and the journal.
    let applied = revive(&["apply", "-m", &path("base.gguf"), "--journal", &path("session"), "--out", &path("applied"), "--save", "gguf"]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert_eq!(std::fs::read(dir.join("applied/model.gguf")).unwrap(), std::fs::read(dir.join("session/model.gguf")).unwrap());

    let hf = revive(&["export", "-m", &path("base.gguf"), "--out", &path("hf")]);
    assert!(hf.status.success(), "{}", String::from_utf8_lossy(&hf.stderr));
    // From a Hugging Face base the GGUF is written whole: the base's values but the edited
    // down-projections.
    let from_hf = edit(&path("hf"), &path("from-hf"));
    assert!(from_hf.status.success(), "{}", String::from_utf8_lossy(&from_hf.stderr));
    let (whole, _) = load_gguf(&dir.join("from-hf/model.gguf")).unwrap();
    let (base_w, _) = load_gguf(&dir.join("base.gguf")).unwrap();
    assert_eq!(whole.config, base_w.config);
    for (name, t) in &base_w.tensors {
        assert_eq!(whole.tensors[name] != *t, name.ends_with("w_down"), "{name}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each block's values round-trip to within one quantisation step of its widest sub-block
/// (the encoders choose scales from the extremes, without llama.cpp's search).
#[test]
fn quantisers_invert_the_dequantisers() {
    let mut blocks = vec![];
    for seed in 0..12 {
        let mut r = rng(300 + seed);
        blocks.push((0..256 * 8).map(|_| r.random_range(-2.0..2.0)).collect::<Vec<f32>>());
    }
    // Zeros and constant blocks (of either sign) encode without dividing by zero.
    blocks.push((0..768).map(|i| [0.0, 0.75, -0.75][i / 256]).collect());
    // Weights' usual size, where NVFP4's e4m3 scales are subnormal (steps of 2^-10).
    let mut r = rng(299);
    let small: Vec<f32> = (0..256 * 8).map(|_| r.random_range(-0.05..0.05)).collect();
    for ty in GgmlType::ALL.into_iter().filter(|t| t.encodable()) {
        for x in blocks.iter().chain((ty == GgmlType::NVFP4).then_some(&small)) {
            let y = dequantize(ty, &quantize(ty, x));
            assert_eq!(y.len(), x.len());
            let block = ty.block().0.max(32);
            for (b, (xb, yb)) in x.chunks(block).zip(y.chunks(block)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let range = xb.iter().fold(0f32, |m, &v| m.max(v)) - xb.iter().fold(0f32, |m, &v| m.min(v));
                let step = match ty {
                    GgmlType::F32 => 0.0,
                    GgmlType::F16 => amax / 1024.0,
                    GgmlType::BF16 => amax / 128.0,
                    GgmlType::Q4_0 => amax / 8.0,
                    GgmlType::Q4_1 => range / 15.0,
                    GgmlType::Q5_0 => amax / 16.0,
                    GgmlType::Q5_1 => range / 31.0,
                    GgmlType::Q8_0 => amax / 127.0,
                    GgmlType::Q2_K => range / 3.0,
                    GgmlType::Q3_K => amax / 4.0,
                    GgmlType::Q4_K => range / 15.0,
                    GgmlType::Q5_K => range / 31.0,
                    GgmlType::Q6_K => amax / 32.0,
                    // The widest gap between IQ4's levels (89 to 113) of 127.
                    GgmlType::IQ4_NL | GgmlType::IQ4_XS => amax * 24.0 / 127.0,
                    // Levels −d, 0, d with d the largest magnitude.
                    GgmlType::TQ1_0 | GgmlType::TQ2_0 => amax,
                    // The largest level, 1.5·2^⌊log2 max⌋, may fall short of the largest value
                    // by up to half of it; the widest gap between levels is smaller.
                    GgmlType::MXFP4 => amax / 2.0,
                    // The widest gap (levels 8 to 12) of a scale at most 1/8 above max/12 where
                    // the scale is a normal e4m3 (plus a subnormal scale's step, 2^-10, times 4,
                    // below).
                    GgmlType::NVFP4 => amax * 0.375,
                    other => unreachable!("{other:?} is read only"),
                };
                // The legacy types' one scale puts every value within half a step (Q4_0's and
                // Q5_0's opposite extreme may clamp a whole step off, as in llama.cpp, and IQ4's
                // levels reach 113 on one side, 127 on the other); a K-quant's scales, themselves
                // quantised, may cost up to a whole step of the widest.
                // Q3_K's and Q6_K's largest level (−4, −32) also carries its sub-block scale's
                // rounding, up to half a step of the super-block's scale (of 31, 127 steps).
                let half = matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_0 | GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::NVFP4);
                let factor = match ty {
                    GgmlType::Q3_K => 1.0 + 4.0 / 62.0,
                    GgmlType::Q6_K => 1.0 + 32.0 / 254.0,
                    _ if half => 0.51,
                    _ => 1.0,
                };
                let floor = if ty == GgmlType::NVFP4 { 4.0 / 1024.0 * 0.51 } else { 0.0 };
                let tol = step * factor + amax * 2e-3 + floor;
                for (a, b2) in xb.iter().zip(yb) {
                    assert!((a - b2).abs() <= tol, "{ty:?} block {b}: {a} -> {b2}, step {step}");
                }
            }
        }
    }
}

#[test]
fn tiny_tokenizer_from_metadata() {
    let (w, _) = tiny(4);
    let (_, meta) = load(w.to_bytes(3)).unwrap();
    let tok = Tok::from_gguf(&meta, FILE).unwrap();
    assert_eq!(tok.vocab_size(), 259);
    assert_eq!(tok.eos(), Some(0));
    let he = tok.encode("he").unwrap();
    assert_eq!(he, vec![257]);
    assert_eq!(tok.token_str(258).as_deref(), Some("Ġt"));
    // The control token matches whole; digits split one by one; bytes round-trip.
    let ids = tok.encode("<|endoftext|> the 42 é").unwrap();
    assert_eq!(ids[0], 0);
    assert!(ids.contains(&258));
    for text in ["he the 42 é", "<|endoftext|> the 42 é", "", "\n\t  x"] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
    assert!(tok.decode(&[9999]).unwrap_err().to_string().contains(FILE));
    // The last id decodes, the first past the vocabulary (added tokens counted) does not.
    assert_eq!(tok.vocab_size(), tok.inner().get_vocab_size(true));
    assert!(tok.decode(&[258]).is_ok());
    assert!(tok.decode(&[259]).unwrap_err().to_string().contains("outside the vocabulary of 259"));
}

/// Tokenizer metadata that used to load quietly as something else: a token-type list that is
/// short or not numbers (control tokens were then split into bytes), a splitter name that is
/// not a string (the default splitter was used).
#[test]
fn tokenizer_metadata_of_the_wrong_kind_is_refused() {
    let with = |key: &str, v: Value| {
        let (mut w, _) = tiny(5);
        w.kv.iter_mut().filter(|(k, _)| k == key).for_each(|(_, x)| *x = v.clone());
        let (_, meta) = load(w.to_bytes(3)).unwrap();
        Tok::from_gguf(&meta, FILE).err().map(|e| e.to_string())
    };
    let n = vocab().0.len();
    for (key, v, needle) in [
        ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(3)]), format!("has 1 entries for {n} tokens")),
        ("tokenizer.ggml.token_type", Value::Array((0..n).map(|_| Value::Str("3".into())).collect()), "token_type[0]".to_string()),
        ("tokenizer.ggml.token_type", Value::Array((0..n).map(|i| Value::I32(if i == 7 { -1 } else { 1 })).collect()), "token_type[7]".to_string()),
        ("tokenizer.ggml.pre", Value::U32(3), "tokenizer.ggml.pre".to_string()),
    ] {
        let e = with(key, v.clone()).unwrap_or_else(|| panic!("{key} = {v:?} accepted"));
        assert!(e.contains(&needle) && e.contains(FILE), "{key}: {e}");
    }
    // Types as any unsigned width load as the same tokenizer.
    let (mut w, _) = tiny(5);
    w.kv.iter_mut().filter(|(k, _)| k == "tokenizer.ggml.token_type").for_each(|(_, x)| *x = Value::Array((0..n).map(|i| Value::U8(if i == 0 { 3 } else { 1 })).collect()));
    let (_, meta) = load(w.to_bytes(3)).unwrap();
    assert_eq!(Tok::from_gguf(&meta, FILE).unwrap().encode("<|endoftext|>").unwrap(), vec![0]);
}

#[test]
fn corrupt_headers_are_errors() {
    let (w, _) = tiny(5);
    let good = w.to_bytes(3);

    let mut b = good.clone();
    b[..4].copy_from_slice(b"GGML");
    assert!(expect_err(b, "magic").contains("magic"));
    for v in [0u32, 1, 4, 3u32.swap_bytes()] {
        let mut b = good.clone();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(expect_err(b, "version").contains("version"));
    }
    // Counts and lengths larger than the file: tensor count (8..16), key/value count (16..24),
    // the first key's length (24..32).
    for (at, what) in [(8, "tensor count"), (16, "metadata count"), (24, "length")] {
        // (A length of len/8 would fit a string, so only the counts get that one.)
        let ns = if at == 24 { vec![u64::MAX, 1 << 40, good.len() as u64] } else { vec![u64::MAX, 1 << 40, good.len() as u64 / 8] };
        for n in ns {
            let mut b = good.clone();
            b[at..at + 8].copy_from_slice(&n.to_le_bytes());
            let msg = expect_err(b, what);
            assert!(msg.contains(what) || msg.contains("truncated"), "{what} = {n}: {msg}");
        }
    }
    // The token list's length: key, type 9, element type 8, then the u64 count.
    let key = b"tokenizer.ggml.tokens";
    let at = good.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
    for n in [u64::MAX, 1 << 33, good.len() as u64 / 8 + 1] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&n.to_le_bytes());
        let msg = expect_err(b, "array length");
        assert!(msg.contains("tokenizer.ggml.tokens"), "{msg}");
    }
    // A string in the token list with a huge length.
    let mut b = good.clone();
    b[at + 8..at + 16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(expect_err(b, "string length").contains("tokenizer.ggml.tokens"));
}

#[test]
fn truncated_files_are_errors() {
    let (w, _) = tiny(6);
    let good = w.to_bytes(3);
    let (_, meta) = load(good.clone()).unwrap();
    let data_start = meta.tensors.iter().map(|t| t.offset).min().unwrap();
    // Every byte of the header, metadata and tensor infos, then every 1/50 of the file.
    let cuts = (0..data_start).chain((0..50).map(|i| i * good.len() / 50)).chain([good.len() - 1]);
    for cut in cuts {
        expect_err(good[..cut].to_vec(), &format!("truncated at {cut}"));
    }
}

#[test]
fn bit_flips_never_panic() {
    // The legacy types' model, and the K-quants' (whose flipped scales may decode to inf or NaN).
    for (dims, n) in [(&SMALL, 3000), (&WIDE, 600), (&LOW_BIT, 400)] {
        bit_flips_in(dims, n);
    }
}

fn bit_flips_in(dims: &Dims, n: usize) {
    let (w, _) = tiny_of(7, dims);
    let good = w.to_bytes(3);
    let (_, meta) = load(good.clone()).unwrap();
    let data_start = meta.tensors.iter().map(|t| t.offset).min().unwrap();
    let mut r = rng(8);
    let (mut errors, mut header_errors) = (0, 0);
    for i in 0..n {
        // Half the flips land in the header and metadata, where they change structure.
        let at = if i % 2 == 0 { r.random_range(0..data_start) } else { r.random_range(0..good.len()) };
        let mut b = good.clone();
        b[at] ^= 1 << r.random_range(0..8);
        let t = Instant::now();
        if try_load(b, &format!("bit flip at byte {at}")).is_some() {
            errors += 1;
            header_errors += (at < 24) as usize;
        }
        assert!(t.elapsed().as_secs() < 5, "bit flip at byte {at}: load took {:?}", t.elapsed());
    }
    // Flips inside token strings or weights can leave a valid file, so not every flip errs.
    println!("{errors} of {n} bit flips gave errors ({header_errors} in the fixed header)");
    assert!(errors > n / 10);
}

#[test]
fn inconsistent_models_are_errors() {
    let build = |edit: &dyn Fn(&mut GgufWriter)| {
        let (mut w, _) = tiny(9);
        edit(&mut w);
        w.to_bytes(3)
    };
    let set = |key: &'static str, v: Value| {
        move |w: &mut GgufWriter| w.kv.iter_mut().filter(|(k, _)| k == key).for_each(|(_, x)| *x = v.clone())
    };
    type Edit = Box<dyn Fn(&mut GgufWriter)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("unknown tensor type", Box::new(|w| w.tensors[3].type_id = 99), "99"),
        ("unknown tensor type", Box::new(|w| w.tensors[3].type_id = 99), "blk.0.attn_k.weight"),
        ("a type this reader does not decode", Box::new(|w| w.tensors[3].type_id = 41), "type 41 (ggml's Q1_0), which this reader does not decode"),
        ("missing tensor", Box::new(|w| w.tensors.retain(|t| t.name != "blk.1.ffn_down.weight")), "layers.1.w_down"),
        ("transposed tensor", Box::new(|w| w.tensors.iter_mut().filter(|t| t.name == "blk.1.ffn_down.weight").for_each(|t| t.dims.reverse())), "blk.1.ffn_down.weight"),
        ("config disagrees", Box::new(set("llama.feed_forward_length", Value::U32(128))), "ffn_gate"),
        ("unknown architecture", Box::new(set("general.architecture", Value::Str("gptneox".into()))), "gptneox"),
        ("absurd block count", Box::new(set("llama.block_count", Value::U64(1 << 40))), "block_count"),
        ("missing key", Box::new(|w| w.kv.retain(|(k, _)| k != "llama.embedding_length")), "llama.embedding_length"),
        ("wrong key type", Box::new(set("llama.attention.head_count", Value::Str("4".into()))), "head_count"),
        ("bad heads", Box::new(set("llama.attention.head_count_kv", Value::U32(3))), "head_count_kv"),
        ("partial rotary", Box::new(|w| { w.kv("llama.rope.dimension_count", Value::U32(8)); }), "dimension_count"),
        ("vocab size disagrees", Box::new(|w| { w.kv("llama.vocab_size", Value::U32(300)); }), "vocab_size"),
        ("YaRN RoPE", Box::new(|w| { w.kv("llama.rope.scaling.type", Value::Str("yarn".into())); }), "llama.rope.scaling.type is 'yarn'"),
        ("zero RoPE divisors", Box::new(|w| { w.tensor("rope_freqs.weight", &[D / 8], GgmlType::F32, vec![0; D / 2]); }), "rope_freqs.weight': frequency divisor 0 is 0"),
        ("bad alignment", Box::new(|w| { w.kv("general.alignment", Value::U32(48)); }), "alignment"),
        ("unknown tensor name", Box::new(|w| w.tensors[1].name = "blk.0.attn_q.bias".into()), "attn_q.bias"),
        ("an FP4 checkpoint's scale", Box::new(|w| { w.tensor("blk.0.attn_q.scale", &[1], GgmlType::F32, vec![0; 4]); }), "'blk.0.attn_q.scale': a per-tensor scale of an FP4 checkpoint"),
        ("layer out of range", Box::new(|w| w.tensors[1].name = "blk.7.attn_norm.weight".into()), "blk.7"),
        ("duplicate tensor", Box::new(|w| w.tensors[2].name = w.tensors[1].name.clone()), "twice"),
        // Two spellings of one layer would fill one slot, the later silently winning.
        ("layer with a leading zero", Box::new(|w| w.tensors[1].name = w.tensors[1].name.replace("blk.0.", "blk.00.")), "blk.00."),
        ("layer with a sign", Box::new(|w| w.tensors[1].name = w.tensors[1].name.replace("blk.0.", "blk.+0.")), "blk.+0."),
        ("layer spelled twice", Box::new(|w| {
            let t = w.tensors.iter().find(|t| t.name == "blk.1.attn_q.weight").unwrap();
            let copy = revive::model::gguf::write::Tensor { name: "blk.01.attn_q.weight".into(), dims: t.dims.clone(), type_id: t.type_id, data: t.data.clone() };
            w.tensors.push(copy);
        }), "blk.01.attn_q.weight"),
        ("duplicate key", Box::new(|w| { w.kv("llama.block_count", Value::U32(2)); }), "twice"),
        ("not a multiple of the block", Box::new(|w| w.tensors[0].dims = vec![D + 1, 259]), "token_embd"),
        ("non-finite weight", Box::new(|w| w.tensors[0].data[4..8].copy_from_slice(&f32::NAN.to_le_bytes())), "non-finite"),
        ("NaN norm epsilon", Box::new(set("llama.attention.layer_norm_rms_epsilon", Value::F32(f32::NAN))), "layer_norm_rms_epsilon"),
        ("negative norm epsilon", Box::new(set("llama.attention.layer_norm_rms_epsilon", Value::F32(-1e-5))), "layer_norm_rms_epsilon"),
        ("NaN RoPE base", Box::new(set("llama.rope.freq_base", Value::F32(f32::NAN))), "freq_base"),
        ("zero RoPE base", Box::new(set("llama.rope.freq_base", Value::F32(0.0))), "freq_base"),
        ("zero context", Box::new(set("llama.context_length", Value::U64(0))), "context_length"),
        ("start token outside the vocabulary", Box::new(set("tokenizer.ggml.bos_token_id", Value::U32(259))), "'tokenizer.ggml.bos_token_id': is 259, outside the vocabulary of 259"),
        ("zero width", Box::new(set("llama.embedding_length", Value::U32(0))), "'llama.embedding_length': is 0"),
        ("head width that wraps", Box::new(|w| { w.kv("llama.attention.key_length", Value::U64((1 << 62) + 8)); }), "'llama.attention.key_length'"),
        ("head wider than the kernel", Box::new(|w| { w.kv("llama.attention.key_length", Value::U32(512)); }), "above the attention kernel's 256"),
        ("deeply nested array", Box::new(|w| {
            let mut v = Value::Array(vec![Value::U8(1)]);
            for _ in 0..10 { v = Value::Array(vec![v]); }
            w.kv("t.deep", v);
        }), "nested"),
    ];
    for (what, edit, needle) in cases {
        let msg = expect_err(build(&*edit), what);
        assert!(msg.contains(needle), "{what}: '{needle}' not in: {msg}");
    }
    // Unscaled RoPE said explicitly loads.
    load(build(&|w| {
        w.kv("llama.rope.scaling.type", Value::Str("none".into()));
    }))
    .unwrap();
    // A tensor's data offset past the end of the file.
    let mut b = build(&|_| {});
    let name = b"output_norm.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 8 + 4;
    b[at..at + 8].copy_from_slice(&(1u64 << 20).to_le_bytes());
    assert!(expect_err(b, "offset past the end").contains("output_norm.weight"));
}


#[test]
fn smollm2_real_model() {
    let Some(path) = revive::testing::smollm2_for_tests() else {
        return;
    };
    let t = Instant::now();
    let (w, meta) = load_gguf(&path).unwrap();
    println!("loaded {} in {:.2?}", path.display(), t.elapsed());
    let c = &w.config;
    assert_eq!((c.arch, c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim), (Arch::Llama, 30, 576, 9, 3, 64));
    assert_eq!((c.ffn_hidden, c.vocab_size, c.norm_eps, c.rope_theta), (1536, 49152, 1e-5, 100000.0));
    assert!(c.tied_embeddings && !w.tensors.contains_key("lm_head"));
    assert_eq!(c.rope_style, RopeStyle::Adjacent);
    assert_eq!(w.tensors["embed"].shape, [49152, 576]);
    assert_eq!(w.tensors["layers.3.w_down"].shape, [576, 1536]);
    assert_eq!(w.tensors["layers.3.wk"].shape, [192, 576]);
    assert_eq!(w.tensors["layers.29.mlp_norm.weight"].shape, [576]);
    assert_eq!(meta.tensor("token_embd.weight").unwrap().ty, GgmlType::Q8_0);
    let matrices: Vec<_> = meta.tensors.iter().filter(|t| t.dims.len() == 2 && t.name != "token_embd.weight").collect();
    let q41 = matrices.iter().filter(|t| t.ty == GgmlType::Q4_1).count();
    let mut types = BTreeMap::new();
    meta.tensors.iter().for_each(|t| *types.entry(format!("{:?}", t.ty)).or_insert(0) += 1);
    println!("tensor types: {types:?}; config: {c:?}");
    assert!(q41 * 2 > matrices.len(), "{q41} of {} matrices are Q4_1", matrices.len());

    let tok = Tok::from_gguf(&meta, &path.display().to_string()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.eos(), c.eos_token_id);
    assert!(tok.start().is_empty(), "SmolLM2 asks for no start token (its add_bos_token is false)");
    for (text, ids) in [
        ("The capital of France is", vec![504, 3575, 282, 4649, 314]),
        (" Paris", vec![7042]),
        ("In 2024, 17 cats", vec![788, 216, 34, 32, 34, 36, 28, 216, 33, 39, 7680]),
    ] {
        assert_eq!(tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
    assert_eq!(tok.token_str(7042).as_deref(), Some("ĠParis"));
    let chat = "<|im_start|>user\nWhat is 2+2? Ünïcödé ✓ 漢字<|im_end|>\n";
    let ids = tok.encode(chat).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), chat);
    assert_eq!(Some(ids[0]), tok.encode("<|im_start|>").unwrap().first().copied());
    assert_eq!(tok.encode("<|im_start|>").unwrap().len(), 1);

    // Saved as tokenizer.json and loaded back, it encodes the same.
    let dir = std::env::temp_dir().join(format!("revive-tokcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_in = dir.join("tokenizer.json");
    tok.inner().save(&json_in, false).unwrap();
    let back = Tok::from_tokenizer_json(&json_in, None).unwrap();
    assert_eq!(back.eos(), None, "no tokenizer_config.json and no config.json's id");
    assert_eq!(back.encode(chat).unwrap(), ids);
    // The end token: from config.json's id when nothing else says, from a tokenizer_config.json
    // beside it (as a string or an added token's record) when there is one, which is checked.
    let im_end = tok.encode("<|im_end|>").unwrap()[0];
    assert_eq!(Tok::from_tokenizer_json(&json_in, Some(im_end)).unwrap().eos(), Some(im_end));
    let cfg = dir.join("tokenizer_config.json");
    tok.save_tokenizer_config(&cfg).unwrap();
    assert_eq!(Tok::from_tokenizer_json(&json_in, None).unwrap().eos(), tok.eos());
    std::fs::write(&cfg, r#"{"eos_token": {"content": "<|im_end|>", "special": true}}"#).unwrap();
    assert_eq!(Tok::from_tokenizer_json(&json_in, Some(0)).unwrap().eos(), Some(im_end));
    for (bad, needle) in [("{ not json", "not valid JSON"), ("[1]", "expected a JSON object"), (r#"{"eos_token": "<|nope|>"}"#, "'<|nope|>' is not a token"), (r#"{"eos_token": 7}"#, "eos_token is 7")] {
        std::fs::write(&cfg, bad).unwrap();
        let e = Tok::from_tokenizer_json(&json_in, None).err().expect(bad).to_string();
        assert!(e.contains("tokenizer_config.json") && e.contains(needle), "{bad}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(back.encode("In 2024, 17 cats").unwrap(), tok.encode("In 2024, 17 cats").unwrap());
    assert_eq!(back.vocab_size(), 49152);
}

/// A start token (BOS) goes before every sequence where the model asks for one and nowhere
/// else: GGUF's `tokenizer.ggml.add_bos_token` (llama.cpp's default for byte-level BPE is none);
/// in a Hugging Face directory a tokenizer.json post-processor that puts one first (Llama 3's
/// template), overridden by tokenizer_config.json's `add_bos_token` as transformers' Llama
/// tokenizers do. A save keeps it. A key of the wrong kind, or a start token that names no token,
/// is refused naming it.
#[test]
fn the_start_token_is_put_where_the_model_asks_for_it() {
    use tokenizers::processors::template::TemplateProcessing;
    let gguf_tok = |set: &[(&str, Option<Value>)]| {
        let (mut w, _) = tiny(6);
        for (key, v) in set {
            w.kv.retain(|(k, _)| k != key);
            if let Some(v) = v {
                w.kv(key, v.clone());
            }
        }
        load(w.to_bytes(3)).and_then(|(_, meta)| Tok::from_gguf(&meta, FILE))
    };
    let add_bos = "tokenizer.ggml.add_bos_token";
    let plain = gguf_tok(&[]).unwrap();
    assert!(plain.start().is_empty());
    assert_eq!(plain.encode_prompt("he the").unwrap(), plain.encode("he the").unwrap());
    assert!(gguf_tok(&[(add_bos, Some(Value::Bool(false)))]).unwrap().start().is_empty());
    let tok = gguf_tok(&[(add_bos, Some(Value::Bool(true))), ("tokenizer.ggml.bos_token_id", Some(Value::U32(258)))]).unwrap();
    assert_eq!(tok.start(), &[258]);
    assert_eq!(tok.encode_prompt("he").unwrap(), vec![258, 257]);
    assert_eq!(tok.encode("he").unwrap(), vec![257], "a piece has no start token");
    assert_eq!(tok.begin(&[5, 6]), vec![258, 5, 6]);
    for (set, needle) in [
        (vec![(add_bos, Some(Value::Bool(true))), ("tokenizer.ggml.bos_token_id", None)], "no tokenizer.ggml.bos_token_id"),
        (vec![(add_bos, Some(Value::U32(1)))], "tokenizer.ggml.add_bos_token is"),
        (vec![(add_bos, Some(Value::Bool(true))), ("tokenizer.ggml.bos_token_id", Some(Value::U32(9999)))], "tokenizer.ggml.bos_token_id"),
    ] {
        let e = gguf_tok(&set).err().unwrap_or_else(|| panic!("{set:?} accepted")).to_string();
        assert!(e.contains(needle) && e.contains(FILE), "{set:?}: {e}");
    }

    // Hugging Face: the post-processor's template, the config's override (for the classes that
    // read it), a save's round trip.
    let dir = std::env::temp_dir().join(format!("revive-start-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (json, cfg) = (dir.join("tokenizer.json"), dir.join("tokenizer_config.json"));
    let load = || Tok::from_tokenizer_json(&json, None);
    let template = TemplateProcessing::builder().try_single("<|endoftext|> $A").unwrap().special_tokens(vec![("<|endoftext|>", 0)]).build().unwrap();
    let mut templated = plain.inner().clone();
    templated.with_post_processor(Some(template));
    templated.save(&json, false).unwrap();
    assert_eq!(load().unwrap().encode_prompt("he").unwrap(), vec![0, 257]);
    // A template that only ends a sequence gives no start token.
    let after = TemplateProcessing::builder().try_single("$A <|endoftext|>").unwrap().special_tokens(vec![("<|endoftext|>", 0)]).build().unwrap();
    let mut ending = plain.inner().clone();
    ending.with_post_processor(Some(after));
    ending.save(&json, false).unwrap();
    assert!(load().unwrap().start().is_empty());
    // A training setup's padding and truncation in tokenizer.json neither pad nor cut a text,
    // nor read as start tokens.
    let mut padded = templated.clone();
    padded.with_padding(Some(tokenizers::PaddingParams { strategy: tokenizers::PaddingStrategy::Fixed(6), direction: tokenizers::PaddingDirection::Left, pad_id: 7, ..Default::default() }));
    padded.with_truncation(Some(tokenizers::TruncationParams { max_length: 1, ..Default::default() })).unwrap();
    padded.save(&json, false).unwrap();
    let read = load().unwrap();
    assert_eq!((read.start(), read.encode("he the").unwrap()), (&[0u32][..], plain.encode("he the").unwrap()));
    templated.save(&json, false).unwrap();
    for (config, want) in [
        (r#"{"add_bos_token": false}"#, vec![]),
        (r#"{"add_bos_token": false, "tokenizer_class": "LlamaTokenizerFast"}"#, vec![]),
        (r#"{"add_bos_token": false, "tokenizer_class": "GemmaTokenizer"}"#, vec![]),
        // GPT-2's and the generic class ignore the key: the template decides.
        (r#"{"add_bos_token": false, "tokenizer_class": "GPT2Tokenizer"}"#, vec![0]),
        (r#"{"add_bos_token": true, "bos_token": "Ġt", "tokenizer_class": "PreTrainedTokenizerFast"}"#, vec![0]),
        (r#"{"add_bos_token": true, "bos_token": {"content": "Ġt"}}"#, vec![258]),
    ] {
        std::fs::write(&cfg, config).unwrap();
        let read = load().unwrap();
        assert_eq!(read.start(), want.as_slice(), "{config}");
        // Saved and read back (tokenizer.json alone, then with the config), the same.
        let (json2, cfg2) = (dir.join("saved/tokenizer.json"), dir.join("saved/tokenizer_config.json"));
        std::fs::create_dir_all(dir.join("saved")).unwrap();
        let _ = std::fs::remove_file(&cfg2);
        read.save_tokenizer_json(&json2).unwrap();
        assert_eq!(Tok::from_tokenizer_json(&json2, None).unwrap().start(), want.as_slice(), "{config}: tokenizer.json alone");
        read.save_tokenizer_config(&cfg2).unwrap();
        assert_eq!(Tok::from_tokenizer_json(&json2, None).unwrap().start(), want.as_slice(), "{config}: saved");
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg2).unwrap()).unwrap();
        assert_eq!(saved["add_bos_token"], !want.is_empty(), "{config}: {saved}");
    }
    for (bad, needle) in [(r#"{"add_bos_token": true}"#, "no bos_token"), (r#"{"add_bos_token": "yes"}"#, "add_bos_token is \"yes\""), (r#"{"add_bos_token": true, "bos_token": "<s>"}"#, "bos_token '<s>' is not a token")] {
        std::fs::write(&cfg, bad).unwrap();
        let e = load().err().expect(bad).to_string();
        assert!(e.contains("tokenizer_config.json") && e.contains(needle), "{bad}: {e}");
    }
    // A GGUF tokenizer with a start token, saved as a directory, keeps it; one without says so
    // (transformers' Llama tokenizer, which reads such a directory, would put `<s>` first).
    std::fs::remove_file(&cfg).unwrap();
    tok.save_tokenizer_json(&json).unwrap();
    assert_eq!(load().unwrap().start(), &[258]);
    tok.save_tokenizer_config(&cfg).unwrap();
    assert_eq!(load().unwrap().start(), &[258]);
    plain.save_tokenizer_json(&json).unwrap();
    plain.save_tokenizer_config(&cfg).unwrap();
    assert!(load().unwrap().start().is_empty());
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("\"add_bos_token\": false"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `revive logits` on a model that asks for a start token reads the ids and logits the same
/// model without one reads when the prompt begins with the token's text; exported as a Hugging
/// Face directory, the model still asks for it.
#[test]
fn logits_of_a_model_with_a_start_token() {
    let dir = std::env::temp_dir().join(format!("revive-start-logits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut w, _) = tiny_of(15, &WIDE);
    std::fs::write(dir.join("plain.gguf"), w.to_bytes(3)).unwrap();
    w.kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
    std::fs::write(dir.join("bos.gguf"), w.to_bytes(3)).unwrap();
    let path = |p: &str| dir.join(p).display().to_string();
    let revive = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_revive")).args(args).output().expect("runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let logits = |model: &str, prompt: &str| -> serde_json::Value {
        std::fs::write(dir.join("prompts.txt"), format!("{prompt}\n")).unwrap();
        revive(&["logits", "-m", &path(model), "--prompts", &path("prompts.txt"), "--out", &path("logits.json")]);
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
        doc["rows"][0].clone()
    };
    let with = logits("bos.gguf", "he the he");
    let spelled = logits("plain.gguf", "<|endoftext|>he the he");
    let without = logits("plain.gguf", "he the he");
    assert_eq!(with["ids"][0], 0, "{with}");
    assert_eq!(with["ids"], spelled["ids"]);
    assert_eq!(with["logits"], spelled["logits"]);
    assert_ne!(with["logits"], without["logits"]);
    revive(&["export", "-m", &path("bos.gguf"), "--out", &path("hf")]);
    let hf = logits("hf", "he the he");
    assert_eq!(hf["ids"], with["ids"]);
    let (a, b) = (hf["logits"].as_array().unwrap(), with["logits"].as_array().unwrap());
    let err = a.iter().zip(b).map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs()).fold(0.0, f64::max);
    assert!(err < 1e-3, "logits from the exported directory differ by {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`: Llama 2, TinyLlama, Mistral)
/// encodes as sentencepiece itself does: tests/data/spm-bpe.json is a small BPE model with byte
/// fallback trained by sentencepiece (tests/data/spm_fixture.py), with its encodings of awkward
/// texts (leading, doubled and trailing spaces, digits, newlines and tabs, characters only bytes
/// hold, the empty text). A prompt gets the dummy prefix and, by llama.cpp's default, the start
/// token; a piece gets neither (" Anne" is "▁Anne"); decoding gives the text back.
#[test]
fn a_sentencepiece_vocabulary_encodes_as_sentencepiece_does() {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("data/spm-bpe.json")).unwrap();
    let strs = |key: &str| fixture[key].as_array().unwrap().iter().map(|v| Value::Str(v.as_str().unwrap().into())).collect::<Vec<_>>();
    let build = |extra: &[(&str, Value)], drop: &[&str]| {
        let mut w = GgufWriter::default();
        w.kv("general.architecture", Value::Str("llama".into()))
            .kv("tokenizer.ggml.model", Value::Str("llama".into()))
            .kv("tokenizer.ggml.tokens", Value::Array(strs("pieces")))
            .kv("tokenizer.ggml.scores", Value::Array(fixture["scores"].as_array().unwrap().iter().map(|v| Value::F32(v.as_f64().unwrap() as f32)).collect()))
            .kv("tokenizer.ggml.token_type", Value::Array(fixture["types"].as_array().unwrap().iter().map(|v| Value::I32(v.as_i64().unwrap() as i32)).collect()))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(fixture["bos"].as_u64().unwrap() as u32))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(fixture["eos"].as_u64().unwrap() as u32));
        w.kv.retain(|(k, _)| !drop.contains(&k.as_str()) && !extra.iter().any(|(e, _)| e == k));
        for (k, v) in extra {
            w.kv(k, v.clone());
        }
        let meta = GgufFile::parse(w.to_bytes(3), FILE).unwrap().meta;
        Tok::from_gguf(&meta, FILE)
    };
    let tok = build(&[], &[]).unwrap();
    let bos = fixture["bos"].as_u64().unwrap() as u32;
    assert_eq!(tok.start(), &[bos], "llama.cpp's default for SentencePiece is a start token");
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode_prompt(text).unwrap();
        assert_eq!(got[1..], want[..], "{text:?}");
        assert_eq!(tok.decode_prompt(&got).unwrap(), text, "{text:?}");
    }
    // A piece: no dummy prefix, no start token; it continues a prompt as the whole text would.
    let anne = tok.encode(" Anne").unwrap();
    assert_eq!(anne.iter().map(|&id| tok.token_str(id).unwrap()).collect::<Vec<_>>(), ["▁Anne"]);
    let whole = tok.encode_prompt("Sir Walter Elliot, of Kellynch Hall").unwrap();
    let split = [tok.encode_prompt("Sir Walter Elliot, of").unwrap(), tok.encode(" Kellynch Hall").unwrap()].concat();
    assert_eq!(whole, split);
    assert_eq!(tok.decode(&anne).unwrap(), " Anne", "a piece decodes with its space");
    // The control tokens match whole in a text, and the text after one gets the dummy prefix
    // again (llama.cpp, transformers); add_bos_token false and add_space_prefix false are
    // honoured; scores that do not fit are refused, naming the key.
    let eos = fixture["eos"].as_u64().unwrap() as u32;
    assert_eq!(tok.encode("</s>").unwrap(), vec![eos]);
    let after = tok.encode_prompt("</s>Anne").unwrap();
    assert_eq!(after[..2], [bos, eos]);
    assert_eq!(tok.token_str(after[2]).as_deref(), Some("▁Anne"), "{after:?}");
    // Saved as tokenizer.json (transformers' Llama layout) and read back: the same prompts and
    // pieces.
    let dir = std::env::temp_dir().join(format!("revive-spm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tok.save_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let back = Tok::from_tokenizer_json(&dir.join("tokenizer.json"), None).unwrap();
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(back.encode_prompt(text).unwrap(), tok.encode_prompt(text).unwrap(), "{text:?} read back");
        assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap(), "{text:?} read back, as a piece");
    }
    assert_eq!(back.encode(" Anne").unwrap(), anne);
    assert_eq!(back.encode_prompt("</s>Anne").unwrap(), after);
    std::fs::remove_dir_all(&dir).unwrap();
    let plain = build(&[("tokenizer.ggml.add_bos_token", Value::Bool(false)), ("tokenizer.ggml.add_space_prefix", Value::Bool(false))], &[]).unwrap();
    assert!(plain.start().is_empty());
    assert_eq!(plain.encode_prompt("Anne").unwrap(), plain.encode("Anne").unwrap());
    assert_ne!(plain.encode_prompt("Anne").unwrap(), tok.encode_prompt("Anne").unwrap()[1..]);
    for (extra, drop, needle) in [
        (vec![], vec!["tokenizer.ggml.scores"], "tokenizer.ggml.scores"),
        (vec![("tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0)]))], vec![], "tokenizer.ggml.scores has 1 entries"),
        (vec![], vec!["tokenizer.ggml.bos_token_id"], "no tokenizer.ggml.bos_token_id"),
    ] {
        let e = match build(&extra, &drop) {
            Ok(_) => panic!("{extra:?} {drop:?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(needle) && e.contains(FILE), "{needle}: {e}");
    }
}

/// Llama 3.1's RoPE scaling as llama.cpp's converter stores it: `rope_freqs.weight`, one
/// divisor per frequency (computed here as convert_hf_to_gguf.py computes them, frequencies in
/// all three of the rule's bands). Read, the model gives the logits of the same weights under
/// the rule itself, far from the unscaled model's; a Hugging Face save states the rule, fitted
/// to the divisors, and reloads to the same logits; an export over the file keeps the tensor.
/// Linear scaling is read from its keys as llama.cpp reads them (a factor of 0 is 1). Damaged
/// divisors, a negative factor, a scaling not applied here, and a save of divisors no rule
/// gives are refused, naming the tensor, key or file.
#[test]
fn rope_frequency_scaling_is_read_as_llama_cpp_writes_it() {
    use revive::cpu::model::CpuModel;
    use revive::fuzz::tiny_gguf;
    use revive::model::probe::Probes;
    use revive::model::random::random_weights;
    use revive::model::safetensors::{load_dir, save_dir, SaveDtype};
    use revive::model::{Config, RopeScaling};
    let (factor, low, high, context) = (8.0f64, 1.0f64, 8.0f64, 256.0f64);
    let config = Config { vocab_size: 259, head_dim: 16, rope_style: RopeStyle::Adjacent, ..Config::tiny_llama() };
    let (theta, hd) = (config.rope_theta as f64, config.head_dim);
    let mut bands = [0; 3];
    let divisors: Vec<f32> = (0..hd / 2)
        .map(|i| {
            let wavelen = 2.0 * std::f64::consts::PI * theta.powf(2.0 * i as f64 / hd as f64);
            let (band, d) = if wavelen < context / high {
                (0, 1.0)
            } else if wavelen > context / low {
                (2, factor)
            } else {
                let smooth = (context / wavelen - low) / (high - low);
                (1, 1.0 / ((1.0 - smooth) / factor + smooth))
            };
            bands[band] += 1;
            d as f32
        })
        .collect();
    assert!(bands.iter().all(|&n| n >= 2), "frequencies per band: {bands:?}");
    let rule = RopeScaling::Llama3 { factor, low_freq_factor: low, high_freq_factor: high, original_max_position_embeddings: context };
    let w = random_weights(&Config { rope_scaling: RopeScaling::Divisors(divisors.clone()), ..config.clone() }, 21);
    let bytes = tiny_gguf(&w, 3).unwrap();
    let (read, _) = load(bytes.clone()).unwrap();
    assert_eq!(read.config.rope_scaling, RopeScaling::Divisors(divisors.clone()));
    let seqs = vec![(0..40).map(|i| (i * 37 + 5) % 259).collect::<Vec<u32>>()];
    let logits = |w: &Weights| CpuModel::new(w).forward(&seqs, &Probes::default()).0;
    let apart = |a: &Weights, b: &Weights| logits(a).iter().flatten().flatten().zip(logits(b).iter().flatten().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let with = |scaling: RopeScaling| Weights { config: Config { rope_scaling: scaling, ..read.config.clone() }, tensors: read.tensors.clone() };
    let by_rule = with(rule.clone());
    assert!(apart(&read, &by_rule) < 1e-5, "the divisors' logits are {} from the rule's", apart(&read, &by_rule));
    assert!(apart(&read, &with(RopeScaling::None)) > 1e-2, "the divisors changed nothing");

    // The rule recovered for a Hugging Face config, and the saved model's logits.
    let fitted = read.config.rope_scaling_by_rule().expect("Llama 3.1's divisors fit its rule");
    assert_eq!(fitted, rule, "the rule fitted to the divisors");
    let dir = std::env::temp_dir().join(format!("revive-gguf-rope-{}", std::process::id()));
    save_dir(&read, &dir, SaveDtype::F32, None).unwrap();
    let saved = load_dir(&dir).unwrap();
    assert_eq!(saved.config.rope_scaling, fitted);
    assert!(apart(&read, &saved) < 1e-5, "saved and read back, logits {} away", apart(&read, &saved));
    // Divisors that follow no rule are not saved as if they did.
    let odd = with(RopeScaling::Divisors(vec![1.0, 2.5, 0.5, 7.0, 3.0, 1.25, 9.0, 4.0]));
    let e = save_dir(&odd, &dir, SaveDtype::F32, None).unwrap_err().to_string();
    assert!(e.contains("rope_freqs") && e.contains("config.json"), "{e}");

    // An export over the file keeps the divisors.
    let base = dir.join("base.gguf");
    std::fs::write(&base, &bytes).unwrap();
    let out = dir.join("out.gguf");
    let mut edited = read.clone();
    edited.tensors.get_mut("layers.1.w_down").unwrap().data[3] += 0.5;
    export_over(&base, &edited, EditedType::As(GgmlType::F32), &out).unwrap();
    assert_eq!(load_gguf(&out).unwrap().0.config.rope_scaling, read.config.rope_scaling);
    std::fs::remove_dir_all(&dir).unwrap();

    // Linear scaling from its keys.
    let linear = random_weights(&Config { rope_scaling: RopeScaling::Linear { factor: 2.0 }, ..config.clone() }, 22);
    assert_eq!(load(tiny_gguf(&linear, 3).unwrap()).unwrap().0.config.rope_scaling, RopeScaling::Linear { factor: 2.0 });

    // Refused: damaged divisors, a factor of 0, a scaling this runtime does not apply.
    let mut zero = divisors.clone();
    zero[3] = 0.0;
    let mut nan = divisors.clone();
    nan[5] = f32::NAN;
    for (bad, why) in [(zero, "divisor 3"), (nan, "divisor 5"), (divisors[..5].to_vec(), "needs [8]")] {
        let w = Weights { config: Config { rope_scaling: RopeScaling::Divisors(bad), ..w.config.clone() }, tensors: w.tensors.clone() };
        let e = load(tiny_gguf(&w, 3).unwrap()).unwrap_err().to_string();
        assert!(e.contains("rope_freqs.weight") && e.contains(why) && e.contains(FILE), "{why}: {e}");
    }
    let with_linear = |factor: f64| Weights { config: Config { rope_scaling: RopeScaling::Linear { factor }, ..linear.config.clone() }, tensors: linear.tensors.clone() };
    let e = load(tiny_gguf(&with_linear(-2.0), 3).unwrap()).unwrap_err().to_string();
    assert!(e.contains("llama.rope.scaling.factor"), "{e}");
    // A factor of 0 means 1, as llama.cpp reads it.
    assert_eq!(load(tiny_gguf(&with_linear(0.0), 3).unwrap()).unwrap().0.config.rope_scaling, RopeScaling::None);
    let mut yarn = tiny_gguf(&linear, 3).unwrap();
    let at = yarn.windows(6).position(|w| w == b"linear").unwrap();
    yarn[at..at + 6].copy_from_slice(b"yarn__");
    let e = load(yarn).unwrap_err().to_string();
    assert!(e.contains("llama.rope.scaling.type") && e.contains("yarn__"), "{e}");
}

/// Llama 3's vocabulary as GGUF stores it (`tokenizer.ggml.pre = llama-bpe`): a byte-level BPE
/// trained with Llama 3's split (tests/data/llama3_bpe_fixture.py) encodes awkward texts
/// (contractions in capitals, digit runs, line breaks, tabs, punctuation runs, characters
/// only bytes hold, the empty text, a piece only `ignore_merges` finds) as the tokenizers
/// library does, split into the same pre-tokens, and decodes them back; a start token by
/// default, as llama.cpp gives Llama 3;
/// GPT-2's split, given the same vocabulary, does not (the split is what is tested); saved as
/// tokenizer.json and read back, it encodes the same.
#[test]
fn a_llama3_vocabulary_encodes_as_its_tokenizer_does() {
    let fixture: serde_json::Value = serde_json::from_str(include_str!("data/llama3-bpe.json")).unwrap();
    let strs = |key: &str| Value::Array(fixture[key].as_array().unwrap().iter().map(|v| Value::Str(v.as_str().unwrap().into())).collect());
    let special: Vec<u64> = fixture["special"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let n = fixture["tokens"].as_array().unwrap().len();
    let build = |pre: &str| {
        let mut w = GgufWriter::default();
        w.kv("general.architecture", Value::Str("llama".into()))
            .kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
            .kv("tokenizer.ggml.pre", Value::Str(pre.into()))
            .kv("tokenizer.ggml.tokens", strs("tokens"))
            .kv("tokenizer.ggml.merges", strs("merges"))
            .kv("tokenizer.ggml.token_type", Value::Array((0..n as u64).map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 })).collect()))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(special[0] as u32))
            .kv("tokenizer.ggml.eos_token_id", Value::U32(special[1] as u32));
        Tok::from_gguf(&GgufFile::parse(w.to_bytes(3), FILE).unwrap().meta, FILE).unwrap()
    };
    let tok = build("llama-bpe");
    let gpt2 = build("gpt2");
    // Written back as GGUF metadata, each split under the name llama.cpp knows it by (llama.cpp
    // refuses "gpt2" for GPT-2's: its name is "gpt-2").
    let pre_of = |t: &Tok| t.gguf_metadata(n).unwrap().into_iter().find(|(k, _)| k == "tokenizer.ggml.pre").map(|(_, v)| v);
    assert_eq!(pre_of(&tok), Some(Value::Str("llama-bpe".into())));
    assert_eq!(pre_of(&gpt2), Some(Value::Str("gpt-2".into())));
    // llama.cpp's default for Llama 3 (and none for GPT-2's split): a start token.
    assert_eq!(tok.start(), &[special[0] as u32]);
    assert!(gpt2.start().is_empty());
    assert_eq!(build("llama-v3").encode("an unmergeable word").unwrap(), tok.encode("an unmergeable word").unwrap());
    let mut differ = 0;
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "{text:?}");
        differ += (gpt2.encode(text).unwrap() != want) as usize;
        let want_split: Vec<&str> = case["split"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut split = tokenizers::PreTokenizedString::from(text);
        tokenizers::PreTokenizer::pre_tokenize(tok.inner().get_pre_tokenizer().unwrap(), &mut split).unwrap();
        let split: Vec<String> = split.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Char).into_iter().map(|(s, _, _)| s.to_string()).collect();
        assert_eq!(split, want_split, "{text:?} split");
    }
    assert!(differ >= 2, "GPT-2's split gives the same ids for all but {differ} texts");
    let dir = std::env::temp_dir().join(format!("revive-llama3-bpe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tok.save_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let back = Tok::from_tokenizer_json(&dir.join("tokenizer.json"), None).unwrap();
    for case in fixture["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(back.encode(text).unwrap(), tok.encode(text).unwrap(), "{text:?} read back");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Qwen2 GGUF as llama.cpp's converter writes one (tests/data/qwen2_gguf_fixture.py: keys and
/// tensor names from gguf-py, `qwen2.*` keys, q/k/v biases, Q/K rows in Hugging Face's order, a
/// vocabulary padded with unused pieces) reads as the Llama block with those biases and halves
/// rotated; its `qwen2` tokenizer gives the tokenizers library's ids and pre-token pieces
/// (every digit on its own, contractions in any case, control tokens whole), no start token
/// (the file says none), `<|im_end|>` as its end; an edit exports over it with the biases
/// copied, and it saves as a Hugging Face Qwen2 that reads back as the same model. (Its
/// logits against transformers': tests/forward.rs.)
#[test]
fn a_qwen2_gguf_reads_as_llama_cpp_writes_it() {
    use revive::model::safetensors::{load_dir, save_dir, SaveDtype};
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let base = fixture.join("model.gguf");
    let (w, meta) = load_gguf(&base).unwrap();
    let c = &w.config;
    assert_eq!((c.arch, c.rope_style, c.qkv_bias, c.tied_embeddings, c.rope_theta, c.n_heads, c.n_kv_heads), (Arch::Llama, RopeStyle::Half, true, true, 1e6, 4, 2), "{c:?}");
    assert!(w.tensors["layers.1.bv"].data.iter().any(|&b| b != 0.0));

    let tok = Tok::from_gguf(&meta, "model.gguf").unwrap();
    let tokens = meta.array("tokenizer.ggml.tokens", "model.gguf").unwrap();
    let id_of = |piece: &str| tokens.iter().position(|t| t.as_str() == Some(piece)).unwrap() as u32;
    assert!(tok.start().is_empty());
    assert_eq!(tok.eos(), Some(id_of("<|im_end|>")));
    for case in expected["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "{text:?}");
        let want_split: Vec<&str> = case["split"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let mut split = tokenizers::PreTokenizedString::from(text);
        tokenizers::PreTokenizer::pre_tokenize(tok.inner().get_pre_tokenizer().unwrap(), &mut split).unwrap();
        let split: Vec<String> = split.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Char).into_iter().map(|(s, _, _)| s.to_string()).collect();
        assert_eq!(split, want_split, "{text:?} split");
    }
    assert!(tok.encode("<|im_start|>user").unwrap().starts_with(&[id_of("<|im_start|>")]));

    let dir = std::env::temp_dir().join(format!("revive-qwen2-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut edited = w.clone();
    edited.tensors.get_mut("layers.1.w_down").unwrap().data[5] += 0.25;
    let out = dir.join("edited.gguf");
    let e = export_over(&base, &edited, EditedType::As(GgmlType::F32), &out).unwrap();
    assert_eq!(e.rewritten, vec![("blk.1.ffn_down.weight".to_string(), GgmlType::F32)]);
    let (back, _) = load_gguf(&out).unwrap();
    assert_eq!(back.config, edited.config);
    assert!(back.tensors == edited.tensors, "the exported tensors differ from the edited model's");

    save_dir(&w, &dir.join("hf"), SaveDtype::F32, None).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("hf/config.json")).unwrap()).unwrap();
    assert_eq!(saved["model_type"], "qwen2");
    let hf = load_dir(&dir.join("hf")).unwrap();
    assert_eq!(hf.config, w.config);
    assert!(hf.tensors == w.tensors, "the saved tensors differ from the GGUF's");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A qwen2 GGUF from this repository's writer (the fuzz seed's) reads back exactly; biases
/// where the architecture has none, or on a projection that has none, are refused naming the
/// tensor, as is another architecture naming itself.
#[test]
fn qwen2_biases_are_read_where_the_architecture_has_them() {
    use revive::fuzz::tiny_gguf;
    use revive::model::random::random_weights;
    use revive::model::Config;
    let w = random_weights(&Config { vocab_size: 259, qkv_bias: true, rope_style: RopeStyle::Half, ..Config::tiny_llama() }, 31);
    let bytes = tiny_gguf(&w, 3).unwrap();
    let (read, meta) = load(bytes.clone()).unwrap();
    // The writer's vocabulary ends sequences with its token 0 and names no start token.
    assert_eq!(read.config, Config { bos_token_id: None, eos_token_id: Some(0), ..w.config.clone() });
    assert!(read.tensors == w.tensors, "the tensors differ after a round trip");
    // No add_bos_token in the file: llama.cpp's default for qwen2 is no start token (Llama 3's
    // is one).
    let tok = Tok::from_gguf(&meta, FILE).unwrap();
    assert!(tok.start().is_empty());
    // Qwen2's split by hand: every digit apart, contractions in any case, a space before
    // punctuation kept with it.
    let mut split = tokenizers::PreTokenizedString::from("It'S 1814 'tis (x)");
    tokenizers::PreTokenizer::pre_tokenize(tok.inner().get_pre_tokenizer().unwrap(), &mut split).unwrap();
    let split: Vec<String> = split.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Char).into_iter().map(|(s, _, _)| s.to_string()).collect();
    assert_eq!(split, ["It", "'S", "Ġ", "1", "8", "1", "4", "Ġ'", "tis", "Ġ(", "x", ")"]);
    // The same bytes said to be a llama: its q/k/v biases are not part of that model.
    let as_llama = replace_all(&bytes, b"qwen2", b"llama");
    let e = expect_err(as_llama, "biases in a llama");
    assert!(e.contains("blk.") && e.contains(".bias") && e.contains("not part of this configuration"), "{e}");
    // A bias on the output projection (same length as attn_q's name, so the layout holds).
    let e = expect_err(replace_all(&bytes, b"blk.0.attn_q.bias", b"blk.0.attn_o.bias"), "an output bias");
    assert!(e.contains("blk.0.attn_o.bias") && e.contains("no canonical name"), "{e}");
    let e = expect_err(replace_all(&bytes, b"qwen2", b"qwen3"), "another architecture");
    assert!(e.contains("'qwen3'") && e.contains("qwen2"), "{e}");
    // An embedding model (a key of the same length as tokenizer.ggml.pre).
    let e = expect_err(replace_all(&bytes, b"tokenizer.ggml.pre", b"qwen2.pooling_type"), "a pooling type");
    assert!(e.contains("qwen2.pooling_type") && e.contains("embedding model"), "{e}");
    // RoPE divisors, which llama.cpp reads for a llama only.
    let scaled = Weights { config: Config { rope_scaling: revive::model::RopeScaling::Divisors(vec![1.0, 2.0, 3.0, 4.0]), ..w.config.clone() }, tensors: w.tensors.clone() };
    let e = expect_err(tiny_gguf(&scaled, 3).unwrap(), "divisors in a qwen2");
    assert!(e.contains("rope_freqs.weight") && e.contains("qwen2"), "{e}");
}

/// `bytes` with every occurrence of `from` replaced by `to` (of the same length).
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut found = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            found += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found > 0, "{:?} not found", String::from_utf8_lossy(from));
    out
}

/// The metadata entries of a GGUF whose values are arrays or strings, by key (for comparing two
/// files' tokenizers).
fn meta_of(meta: &GgufMeta, keys: &[&str]) -> Vec<Option<Value>> {
    keys.iter().map(|k| meta.get(k).cloned()).collect()
}

/// A model that came from no GGUF is written as a new one as llama.cpp's converter writes it:
/// the Qwen2 fixture (written by gguf-py) saved as a Hugging Face directory and written back
/// gives the same configuration, the same tensors bit for bit, the same tokenizer metadata
/// (pieces, types — the converter's unused padding included — merges, split, start and end)
/// and the same ids; a llama whose Q/K rows the directory holds in rotate-half order gets them
/// permuted back for adjacent pairs; f16 matrices are the values rounded once, norms and biases
/// f32; GPT-2 and a SentencePiece vocabulary are refused naming why.
#[test]
fn a_hugging_face_model_is_written_as_a_new_gguf() {
    use revive::fuzz::tiny_gguf;
    use revive::model::gguf::convert::write_new;
    use revive::model::load::{load, save};
    use revive::model::random::random_weights;
    use revive::model::safetensors::SaveDtype;
    use revive::model::Config;
    let dir = std::env::temp_dir().join(format!("revive-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokenizer_keys = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"];
    // Through a Hugging Face directory and back; returns the new file's model and metadata.
    let round_trip = |gguf: &std::path::Path, tag: &str, ty: GgmlType| {
        let m = load(gguf.to_str().unwrap()).unwrap();
        let hf = dir.join(format!("{tag}-hf"));
        save(&m.weights, &m.tok, &hf, SaveDtype::F32).unwrap();
        let from_hf = load(hf.to_str().unwrap()).unwrap();
        assert!(from_hf.gguf.is_none());
        let out = dir.join(format!("{tag}.gguf"));
        write_new(&from_hf.weights, &from_hf.tok, ty, tag, &out).unwrap();
        let (w, meta) = load_gguf(&out).unwrap();
        let tok = Tok::from_gguf(&meta, tag).unwrap();
        (m, w, meta, tok)
    };

    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf");
    let (_, base_meta) = load_gguf(&fixture.join("model.gguf")).unwrap();
    let (m, w, meta, tok) = round_trip(&fixture.join("model.gguf"), "qwen2", GgmlType::F32);
    assert_eq!(meta.str("general.architecture", "qwen2").unwrap(), "qwen2");
    assert_eq!(w.config, m.weights.config);
    assert!(w.tensors == m.weights.tensors, "the tensors changed on the way");
    assert_eq!(meta_of(&meta, &tokenizer_keys), meta_of(&base_meta, &tokenizer_keys));
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    for case in expected["encodings"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "{text:?}");
    }

    // A llama: the directory holds its Q/K rows as Hugging Face does, the new file as llama.cpp.
    let llama = random_weights(&Config { vocab_size: 259, rope_style: RopeStyle::Adjacent, ..Config::tiny_llama() }, 32);
    let base = dir.join("llama-base.gguf");
    std::fs::write(&base, tiny_gguf(&llama, 3).unwrap()).unwrap();
    let (m, w, meta, _) = round_trip(&base, "llama", GgmlType::F32);
    assert_eq!((w.config.rope_style, &w.config), (RopeStyle::Adjacent, &m.weights.config));
    assert!(w.tensors == m.weights.tensors, "the llama's tensors changed on the way");
    assert_eq!(meta.str("tokenizer.ggml.pre", "llama").unwrap(), "smollm");

    // f16 matrices: each value rounded once; the norms stay f32.
    let (m, w, meta, _) = round_trip(&base, "llama-f16", GgmlType::F16);
    assert_eq!(meta.tensor("blk.0.ffn_down.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(meta.tensor("blk.0.ffn_norm.weight").unwrap().ty, GgmlType::F32);
    for (name, t) in &m.weights.tensors {
        let rounded: Vec<f32> = if t.shape.len() == 2 { t.data.iter().map(|&x| f16::from_f32(x).to_f32()).collect() } else { t.data.clone() };
        assert!(w.tensors[name].data == rounded, "{name} in f16");
    }

    // A chat template in chat_template.jinja beside the tokenizer (newer checkpoints keep it
    // there) reaches the GGUF.
    std::fs::write(dir.join("qwen2-hf/chat_template.jinja"), "{% for m in messages %}{{ m['content'] }}{% endfor %}").unwrap();
    let m = load(dir.join("qwen2-hf").to_str().unwrap()).unwrap();
    let meta = m.tok.gguf_metadata(m.weights.config.vocab_size).unwrap();
    assert!(meta.iter().any(|(k, v)| k == "tokenizer.chat_template" && *v == Value::Str("{% for m in messages %}{{ m['content'] }}{% endfor %}".into())));

    // Refused: GPT-2, a SentencePiece vocabulary.
    let m = load(base.to_str().unwrap()).unwrap();
    let gpt2 = random_weights(&Config::tiny_gpt2(), 3);
    let e = write_new(&gpt2, &m.tok, GgmlType::F32, "x", &dir.join("gpt2.gguf")).unwrap_err().to_string();
    assert!(e.contains("GPT-2") && e.contains("gpt2.gguf"), "{e}");
    let spm = Tok::from_gguf(&load_gguf_bytes(revive::fuzz::sentencepiece_gguf(&llama).unwrap(), "spm.gguf").unwrap().1, "spm.gguf").unwrap();
    let e = write_new(&llama, &spm, GgmlType::F32, "x", &dir.join("spm.gguf")).unwrap_err().to_string();
    assert!(e.contains("SentencePiece"), "{e}");
    assert!(!dir.join("gpt2.gguf").exists() && !dir.join("spm.gguf").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real SmolLM2 (CI fetches it) through a Hugging Face directory and written back as a new
/// GGUF: the same configuration, tensors (f32 now, the Q4_1/Q8_0 file's values exactly, its
/// Q/K rows permuted back), pieces, types, merges, split, end token and chat template as the
/// published file.
#[test]
fn smollm2_written_as_a_new_gguf_reads_back_the_same() {
    use revive::model::gguf::convert::write_new;
    use revive::model::load::{load, save};
    use revive::model::safetensors::SaveDtype;
    let Some(path) = revive::testing::smollm2_for_tests() else { return };
    let dir = std::env::temp_dir().join(format!("revive-smollm2-convert-{}", std::process::id()));
    let m = load(path.to_str().unwrap()).unwrap();
    save(&m.weights, &m.tok, &dir.join("hf"), SaveDtype::F32).unwrap();
    let hf = load(dir.join("hf").to_str().unwrap()).unwrap();
    let out = dir.join("smollm2.gguf");
    let written = write_new(&hf.weights, &hf.tok, GgmlType::F32, "smollm2", &out).unwrap();
    drop(hf);
    assert_eq!((written.architecture, written.kept_f32.len()), ("llama", 0));
    let (w, meta) = load_gguf(&out).unwrap();
    assert_eq!(w.config, m.weights.config);
    for (name, t) in &m.weights.tensors {
        assert!(w.tensors[name] == *t, "{name} differs");
    }
    let (_, base_meta) = load_gguf(&path).unwrap();
    let keys = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"];
    assert_eq!(meta_of(&meta, &keys), meta_of(&base_meta, &keys));
    // The chat template reached the directory's tokenizer_config.json, where transformers reads it.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("hf/tokenizer_config.json")).unwrap()).unwrap();
    assert!(matches!(base_meta.get("tokenizer.chat_template"), Some(Value::Str(t)) if cfg["chat_template"] == t.as_str()));
    let tok = Tok::from_gguf(&meta, "smollm2.gguf").unwrap();
    for text in ["The capital of France is", "In 1814, 12345 cats", "<|im_start|>user\nHi<|im_end|>"] {
        assert_eq!(tok.encode_prompt(text).unwrap(), m.tok.encode_prompt(text).unwrap(), "{text:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
