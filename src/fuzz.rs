//! Mutational fuzzing of every parser of outside data: GGUF, safetensors (one file, shards with
//! an index), config.json, tokenizer.json, edit requests (CounterFact and zsRE layouts),
//! hyper-parameters, facts files, cache files and journal records (as whole files, and as
//! re-signed record texts so that mutations reach past the checksums). Stable Rust has no coverage-guided fuzzer
//! here (cargo-fuzz needs nightly), so this is a plain mutator over real seed files: bit flips,
//! byte insertions and deletions, truncations, lying lengths and counts, spliced seeds, and in
//! JSON wrong types and NaN/Inf. `tests/fuzz.rs` runs it briefly on fixed seeds;
//! `cargo run --release --example fuzz -- --seconds 600 --target gguf` runs it long.
//!
//! Pass condition for an input: the loader returns (no panic), an error names the file it was
//! reading, and no single allocation exceeds a bound derived from the input's size (the caller's
//! global allocator measures that; see `Limits`).

use crate::error::{Error, Result};
use crate::model::gguf::write::{GgufWriter, Tensor as GgufTensor};
use crate::model::gguf::{GgmlType, Value};
use crate::model::random::random_weights;
use crate::model::safetensors::{save_dir, SaveDtype};
use crate::model::{Config, RopeScaling, RopeStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Loader = Box<dyn Fn(&Path, &[u8]) -> Result<()>>;

/// One parser under test: where its input goes and how it is loaded.
pub struct Target {
    pub name: &'static str,
    /// The file name the mutated bytes are written as; every error must name it.
    pub file: &'static str,
    pub seeds: Vec<Vec<u8>>,
    load: Loader,
}

/// What a run found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub inputs: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Inputs that panicked: the panic message.
    pub panics: Vec<String>,
    /// Errors that do not name the file.
    pub unnamed: Vec<String>,
    /// Inputs whose largest single allocation exceeded the bound: (bytes, input size).
    pub oversized: Vec<(usize, usize)>,
    /// Seeds the loader refused unmutated: a harness whose seeds fail tests nothing past the
    /// first check.
    pub bad_seeds: Vec<String>,
    pub seconds: f64,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.panics.is_empty() && self.unnamed.is_empty() && self.oversized.is_empty() && self.bad_seeds.is_empty()
    }
}

/// The caller's allocation probe: reset before an input, the largest single allocation after.
pub struct Limits<'a> {
    pub reset: &'a dyn Fn(),
    pub peak: &'a dyn Fn() -> usize,
}

/// The largest single allocation an input of `len` bytes may cause: dequantised weights are up
/// to 8× their 4-bit encoding, and a parser may hold a few copies.
pub fn allocation_bound(len: usize) -> usize {
    64 * len + (64 << 20)
}

/// Every target, its seeds written under `work` (a scratch directory it owns).
pub fn targets(work: &Path) -> Result<Vec<Target>> {
    std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
    let tiny = Config { vocab_size: 259, ..Config::tiny_llama() };
    let weights = random_weights(&tiny, 3);
    let model_dir = work.join("seed-model");
    save_dir(&weights, &model_dir, SaveDtype::F32, None)?;
    let st_bytes = read(&model_dir.join("model.safetensors"))?;
    let cfg_bytes = read(&model_dir.join("config.json"))?;
    let names: Vec<String> = safetensors::SafeTensors::deserialize(&st_bytes).map_err(|e| Error::Edit(e.to_string()))?.names().into_iter().map(str::to_string).collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": names.iter().map(|n| (n.clone(), serde_json::json!("model.safetensors"))).collect::<serde_json::Map<_, _>>() });

    let st_dir = work.join("st");
    let cfg_dir = work.join("cfg");
    let idx_dir = work.join("idx");
    let file_loader = |dir: &Path, file: &'static str, load: fn(&Path) -> Result<()>| -> Loader {
        let path = dir.join(file);
        Box::new(move |_: &Path, bytes: &[u8]| {
            std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
            load(&path)
        })
    };

    let word = crate::model::Tok::word_level(&(0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>())?;
    let tok_json = word.inner().to_string(false).map_err(|e| Error::Edit(e.to_string()))?;
    // A template that puts a start token first, and a training setup's padding and truncation:
    // what the loader probes and drops.
    let mut templated = word.inner().clone();
    let template = tokenizers::processors::template::TemplateProcessing::builder()
        .try_single("w1 $A w2")
        .and_then(|b| b.try_pair("w1 $A w2 $B:1 w2"))
        .map_err(Error::Edit)?
        .special_tokens(vec![("w1", 1), ("w2", 2)])
        .build()
        .map_err(|e| Error::Edit(e.to_string()))?;
    templated.with_post_processor(Some(template));
    templated.with_padding(Some(tokenizers::PaddingParams { strategy: tokenizers::PaddingStrategy::Fixed(12), ..Default::default() }));
    templated.with_truncation(Some(tokenizers::TruncationParams { max_length: 3, ..Default::default() })).map_err(|e| Error::Edit(e.to_string()))?;
    // transformers' Llama layout, whose dummy prefix the loader parts from the pieces'
    // tokenizer.
    let mut llama: serde_json::Value = serde_json::from_str(&tok_json).map_err(|e| Error::Edit(e.to_string()))?;
    llama["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
    llama["decoder"] = serde_json::json!({"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
    let mut tok_seeds = vec![tok_json.into_bytes(), templated.to_string(false).map_err(|e| Error::Edit(e.to_string()))?.into_bytes(), llama.to_string().into_bytes()];
    let real_tok = crate::model::fetch::cache_dir().join("fuzz-seed-tokenizer.json");
    if let Ok(b) = std::fs::read(&real_tok) {
        tok_seeds.push(b);
    }
    let zsre = br#"[{"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?", "alt": "University of Michigan", "answers": ["Trinity College"], "rephrase": "What university did Watts Humphrey take part in?", "loc": "nq question: who played desmond doss father in hacksaw ridge", "loc_ans": "Hugo Weaving", "portability": {"Recalled Relation": "(University of Michigan, located in, Ann Arbor)", "New Question": "In which city did Watts Humphrey study?", "New Answer": "Ann Arbor"}}]"#.to_vec();

    let easyedit = br#"[{"case_id": 0, "prompt": "The mother tongue of Danielle Darrieux is", "subject": "Danielle Darrieux", "target_new": "English", "ground_truth": "French", "rephrase_prompt": ["Danielle Darrieux was born speaking"], "locality_prompt": "The mother tongue of Leon Blum is", "locality_ground_truth": "French"}]"#.to_vec();

    let knowedit = br#"[{"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin", "ground_truth": [["Potsdam"]], "portability": {"Reasoning": [{"prompt": "The continent of the place of death of Leo Arons is", "ground_truth": [["Europe", "Old Continent"]]}]}, "locality": {"Relation_Specificity": [{"prompt": "The father of Leo Arons is", "ground_truth": ["Albert Arons"]}]}}]"#.to_vec();

    let journal_seed = work.join("journal-seed");
    write_journal(&journal_seed, &journal_record_text())?;

    // Llama 3.1's RoPE scaling: as GGUF divisors (`rope_freqs.weight`), and as transformers 5's
    // `rope_parameters`.
    let llama3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };
    let scaled = crate::model::Weights { config: Config { rope_scaling: llama3, ..tiny.clone() }, tensors: weights.tensors.clone() };
    let mut scaled_cfg: serde_json::Value = serde_json::from_slice(&cfg_bytes).map_err(|e| Error::Edit(e.to_string()))?;
    scaled_cfg["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": tiny.rope_theta, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
    let scaled_cfg = scaled_cfg.to_string().into_bytes();
    let qwen2 = random_weights(&Config { qkv_bias: true, rope_style: RopeStyle::Half, ..tiny.clone() }, 6);

    let out = vec![
        Target {
            name: "gguf",
            file: "fuzz.gguf",
            seeds: vec![tiny_gguf(&weights, 2)?, tiny_gguf(&weights, 3)?, sentencepiece_gguf(&weights)?, k_quant_gguf()?, lattice_gguf()?, low_bit_gguf()?, tiny_gguf(&scaled, 3)?, tiny_gguf(&qwen2, 3)?],
            load: Box::new(|_, bytes| {
                let (_, meta) = crate::model::gguf::load_gguf_bytes(bytes.to_vec(), "fuzz.gguf")?;
                crate::model::Tok::from_gguf(&meta, "fuzz.gguf").map(|_| ())
            }),
        },
        // The three parts of a checkpoint directory, each mutated with the other two intact.
        Target {
            name: "safetensors",
            file: "model.safetensors",
            seeds: vec![st_bytes.clone()],
            load: dir_loader(st_dir, "model.safetensors", vec![("config.json", cfg_bytes.clone())]),
        },
        Target {
            name: "config",
            file: "config.json",
            seeds: vec![cfg_bytes.clone(), scaled_cfg],
            load: dir_loader(cfg_dir, "config.json", vec![("model.safetensors", st_bytes.clone())]),
        },
        Target {
            name: "index",
            file: "model.safetensors.index.json",
            seeds: vec![index.to_string().into_bytes()],
            load: dir_loader(idx_dir, "model.safetensors.index.json", vec![("config.json", cfg_bytes), ("model.safetensors", st_bytes)]),
        },
        Target {
            name: "tokenizer",
            file: "tokenizer.json",
            seeds: tok_seeds,
            load: file_loader(work, "tokenizer.json", |p| {
                let tok = crate::model::Tok::from_tokenizer_json(p, None)?;
                // Its GGUF form too (a new GGUF's tokenizer): refusing is its right (most seeds
                // are no byte-level BPE), panicking is not.
                let _ = tok.gguf_metadata(tok.vocab_size());
                Ok(())
            }),
        },
        Target {
            name: "requests",
            file: "requests.json",
            seeds: vec![include_bytes!("../assets/facts/edits.json").to_vec(), zsre, easyedit, knowedit],
            load: file_loader(work, "requests.json", |p| crate::edit::request::load_requests(p).map(|_| ())),
        },
        Target {
            name: "hparams",
            file: "hparams.json",
            seeds: vec![
                include_bytes!("../assets/hparams/memit/smollm2.json").to_vec(),
                include_bytes!("../assets/hparams/alphaedit/smollm2.json").to_vec(),
                include_bytes!("../assets/hparams/rome/smollm2.json").to_vec(),
            ],
            load: file_loader(work, "hparams.json", |p| {
                // The file says which kind it is; both parsers must refuse what they cannot read.
                let batch = crate::edit::hparams::BatchHparams::load(p).map(|_| ());
                let rome = crate::edit::hparams::RomeHparams::load(p).map(|_| ());
                batch.or(rome)
            }),
        },
        Target {
            name: "facts",
            file: "facts.json",
            seeds: vec![include_bytes!("../assets/facts/known.json").to_vec()],
            load: file_loader(work, "facts.json", |p| crate::eval::retention::load_facts(p).map(|_| ())),
        },
        Target {
            name: "journal",
            file: JOURNAL_RECORD,
            seeds: vec![read(&journal_seed.join("journal").join(JOURNAL_RECORD))?],
            load: journal_file_loader(work.join("journal-file"), read(&journal_seed.join("journal").join("000002-metrics.safetensors"))?),
        },
        Target {
            name: "journal-record",
            file: JOURNAL_RECORD,
            seeds: vec![journal_record_text().into_bytes()],
            load: journal_text_loader(work.join("journal-record")),
        },
        Target {
            name: "cache",
            file: "cache.safetensors",
            seeds: vec![cache_seed(work)?],
            load: file_loader(work, "cache.safetensors", |p| crate::store::load_cache(p, &cache_fields()).and_then(|s| s.tensor("c0", &[8, 8]).map(|_| ()))),
        },
    ];
    Ok(out)
}

/// A loader that writes the mutated bytes as `file` in `dir` beside the fixed files, then loads
/// the directory as a checkpoint.
fn dir_loader(dir: PathBuf, file: &'static str, fixed: Vec<(&'static str, Vec<u8>)>) -> Loader {
    Box::new(move |_: &Path, bytes: &[u8]| {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        for (name, b) in &fixed {
            std::fs::write(dir.join(name), b).map_err(|e| io(&dir, e))?;
        }
        std::fs::write(dir.join(file), bytes).map_err(|e| io(&dir, e))?;
        crate::model::safetensors::load_dir(&dir).map(|_| ())
    })
}

/// The journal record the journal targets mutate: a session's first batch record.
const JOURNAL_RECORD: &str = "000001-batch.safetensors";

/// A batch record's text: a rank-one update with its filter report, a dense one, a state tensor.
fn journal_record_text() -> String {
    use crate::edit::guard::FilterReport;
    use crate::edit::journal::{BatchHeader, UpdateMeta};
    use crate::linalg::subspace::Leak;
    let filter = FilterReport { before: Leak { left: 0.5, right: 0.25 }, after: Leak { left: 1e-7, right: 2e-7 }, kept: 0.75 };
    let header = BatchHeader {
        batch: 0,
        requests: [0, 2],
        case_ids: vec![Some(17), None],
        updates: vec![
            UpdateMeta { matrix: "layers.3.w_down".into(), rank: Some(1), shape: [4, 3], proposed_norm: 2.0, norm: 1.5, filter: Some(filter) },
            UpdateMeta { matrix: "layers.4.w_down".into(), rank: None, shape: [2, 3], proposed_norm: 1.0, norm: 1.0, filter: None },
        ],
        state: vec!["kpkt".into()],
        method: serde_json::json!({ "layers": [3, 4], "v_loss": 0.25 }),
        before: serde_json::json!({ "efficacy": 0.5 }),
        seconds: 1.25,
    };
    serde_json::to_string(&header).expect("a header serialises")
}

fn journal_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let v = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 1.0).collect::<Vec<f32>>();
    vec![
        ("u0.left".into(), vec![4, 1], v(4)),
        ("u0.right".into(), vec![3, 1], v(3)),
        ("u1.dense".into(), vec![2, 3], v(6)),
        ("state.kpkt".into(), vec![3, 3], v(9)),
    ]
}

/// A session directory whose journal holds a batch record with `text` and its metrics record.
fn write_journal(session: &Path, text: &str) -> Result<()> {
    let _ = std::fs::remove_dir_all(session);
    let dir = crate::edit::journal::Journal::dir_of(session);
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let (_, chain) = crate::edit::journal::write_record(&dir, 1, "batch", "", text, &journal_tensors())?;
    crate::edit::journal::write_record(&dir, 2, "metrics", &chain, r#"{"batch":0,"after":{"efficacy":1.0},"seconds":2.5}"#, &[])?;
    Ok(())
}

/// Opens a session's journal and reads every batch back, as a resume does.
fn read_journal(session: &Path) -> Result<()> {
    let j = crate::edit::journal::Journal::open(session)?;
    for (entry, _) in j.batches() {
        j.read_batch(entry)?;
    }
    Ok(())
}

/// The mutated bytes are the first record's file; the second record is intact after it.
fn journal_file_loader(session: PathBuf, metrics: Vec<u8>) -> Loader {
    Box::new(move |_: &Path, bytes: &[u8]| {
        let _ = std::fs::remove_dir_all(&session);
        let dir = crate::edit::journal::Journal::dir_of(&session);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        std::fs::write(dir.join(JOURNAL_RECORD), bytes).map_err(|e| io(&dir, e))?;
        std::fs::write(dir.join("000002-metrics.safetensors"), &metrics).map_err(|e| io(&dir, e))?;
        read_journal(&session)
    })
}

/// The mutated bytes are the first record's text, signed as the writer would (what a writer
/// with a bug, or a hand edit followed by a re-sign, would leave).
fn journal_text_loader(session: PathBuf) -> Loader {
    Box::new(move |_: &Path, bytes: &[u8]| {
        write_journal(&session, &String::from_utf8_lossy(bytes))?;
        read_journal(&session)
    })
}

fn cache_fields() -> Vec<(&'static str, String)> {
    vec![("format", "revive-fuzz-cache".into()), ("layer", "3".into())]
}

fn cache_seed(work: &Path) -> Result<Vec<u8>> {
    let path = work.join("seed-cache.safetensors");
    let c0: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
    crate::store::save(&path, &cache_fields(), &[("c0", vec![8, 8], &c0)])?;
    read(&path)
}

/// A complete small llama GGUF of format `version` (byte-level BPE vocabulary of 259 tokens,
/// F32 tensors, the config's RoPE scaling), as llama.cpp lays one out; a qwen2 GGUF where the
/// model has q/k/v biases.
pub fn tiny_gguf(w: &crate::model::Weights, version: u32) -> Result<Vec<u8>> {
    tiny_gguf_typed(w, version, |_, _| GgmlType::F32, false)
}

/// [`tiny_gguf`] with its vocabulary as SentencePiece's (`tokenizer.ggml.model = llama`: pieces,
/// scores, token types), so that mutations reach that reader.
pub fn sentencepiece_gguf(w: &crate::model::Weights) -> Result<Vec<u8>> {
    tiny_gguf_typed(w, 3, |_, _| GgmlType::F32, true)
}

/// A two-layer model 256 wide, its matrices in the K-quants and their 32-element fallbacks
/// (the types of a llama.cpp Q4_K_M-like mix) and the legacy types, so that mutations reach
/// their blocks and scales.
fn k_quant_gguf() -> Result<Vec<u8>> {
    use GgmlType::*;
    wide_gguf(&[Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS, Q5_0, Q5_1, IQ4_NL, Q4_0, Q4_1, Q8_0])
}

/// The same model in the seven lattice i-quants (random blocks: they have no encoder here), each
/// on two matrices.
fn lattice_gguf() -> Result<Vec<u8>> {
    wide_gguf(&[GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ2_S, GgmlType::IQ3_XXS, GgmlType::IQ3_S, GgmlType::IQ1_S, GgmlType::IQ1_M])
}

/// The same model in the ternary types, MXFP4 and NVFP4.
fn low_bit_gguf() -> Result<Vec<u8>> {
    wide_gguf(&[GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::MXFP4, GgmlType::NVFP4])
}

/// Random blocks of `ty` for `n` values; a block that decodes to a non-finite value (a random
/// f16 scale may be one) is zeroed, which every type decodes to zeros, so the seed loads.
fn random_blocks(ty: GgmlType, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let (elems, size) = ty.block();
    let mut out = vec![0u8; n / elems * size];
    for block in out.chunks_exact_mut(size) {
        rng.fill(block);
        if crate::model::gguf::quant::dequantize(ty, block).iter().any(|v| !v.is_finite()) {
            block.fill(0);
        }
    }
    out
}

/// A two-layer model 256 wide, its 14 matrices cycling through `types`.
fn wide_gguf(types: &[GgmlType]) -> Result<Vec<u8>> {
    let config = Config { vocab_size: 259, hidden: 256, n_layers: 2, n_heads: 4, n_kv_heads: 2, head_dim: 64, ffn_hidden: 512, max_seq_len: 64, ..Config::tiny_llama() };
    let next = std::cell::Cell::new(0);
    tiny_gguf_typed(&random_weights(&config, 5), 3, |name, dims| {
        if dims.len() < 2 || name == "embed" {
            return GgmlType::F32;
        }
        next.set(next.get() + 1);
        types[(next.get() - 1) % types.len()]
    }, false)
}

/// [`tiny_gguf`] with each tensor in the type `type_of(canonical name, GGUF dims)` gives, its
/// vocabulary byte-level BPE or (`spm`) SentencePiece's.
fn tiny_gguf_typed(w: &crate::model::Weights, version: u32, type_of: impl Fn(&str, &[usize]) -> GgmlType, spm: bool) -> Result<Vec<u8>> {
    let c = &w.config;
    let mut bytes: Vec<String> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().map(String::from).collect();
    bytes.sort();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(bytes);
    tokens.extend(["he".into(), "Ġt".into()]);
    if tokens.len() != c.vocab_size {
        return Err(Error::Edit(format!("tiny_gguf: {} tokens for a vocabulary of {}", tokens.len(), c.vocab_size)));
    }
    let strs = |v: &[String]| Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect());
    let mut rng = StdRng::seed_from_u64(41);
    // The rows are written as they are: the file reads back rotating the pairs its
    // architecture implies (a llama's adjacent, a qwen2's halves), whatever the model rotated.
    let mut g = GgufWriter::default();
    crate::model::gguf::convert::model_keys(&mut g, c);
    g.kv("tokenizer.ggml.model", Value::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", Value::Str(if c.qkv_bias { "qwen2" } else { "smollm" }.into()))
        .kv("tokenizer.ggml.tokens", strs(&tokens))
        .kv("tokenizer.ggml.merges", strs(&["h e".into(), "Ġ t".into()]))
        .kv("tokenizer.ggml.eos_token_id", Value::U32(0));
    if spm {
        g.kv.retain(|(k, _)| !matches!(k.as_str(), "tokenizer.ggml.model" | "tokenizer.ggml.pre" | "tokenizer.ggml.merges"));
        g.kv("tokenizer.ggml.model", Value::Str("llama".into()))
            .kv("tokenizer.ggml.scores", Value::Array((0..tokens.len()).map(|i| Value::F32(-(i as f32))).collect()))
            .kv("tokenizer.ggml.token_type", Value::Array((0..tokens.len()).map(|i| Value::I32(if i == 0 { 3 } else { 1 })).collect()))
            .kv("tokenizer.ggml.bos_token_id", Value::U32(0));
    }
    for (name, t) in &w.tensors {
        let gguf = crate::model::gguf::gguf_name(name).ok_or_else(|| Error::Edit(format!("tiny_gguf: tensor {name}")))?;
        let dims: Vec<usize> = t.shape.iter().rev().copied().collect();
        let ty = type_of(name, &dims);
        let data = if ty.encodable() { crate::model::gguf::quant::quantize(ty, &t.data) } else { random_blocks(ty, t.data.len(), &mut rng) };
        g.tensors.push(GgufTensor { name: gguf, dims, type_id: ty.id(), data });
    }
    Ok(g.to_bytes(version))
}

/// Values that make lengths and counts lie.
const LIES: [u64; 9] = [0, 1, 7, 255, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, u64::MAX];
/// JSON values of the wrong type or out of range.
const JSON_LIES: [&str; 10] = ["NaN", "Infinity", "-Infinity", "1e309", "-1", "\"1\"", "null", "[]", "{}", "18446744073709551616"];

/// One to three mutations of `seed`; `other` is spliced from.
pub fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=3) {
        let n = b.len();
        match rng.random_range(0..8) {
            0 if n > 0 => {
                let at = rng.random_range(0..n);
                b[at] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let at = rng.random_range(0..=n);
                let k = rng.random_range(1..=16);
                let ins: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                b.splice(at..at, ins);
            }
            2 if n > 0 => {
                let at = rng.random_range(0..n);
                let k = rng.random_range(1..=(n - at).min(64));
                b.drain(at..at + k);
            }
            3 => b.truncate(rng.random_range(0..=n)),
            4 if n >= 8 => {
                // A lying length or count, little-endian, at a random offset (GGUF and
                // safetensors both lead with u64 lengths).
                let at = rng.random_range(0..=n - 8);
                let v = LIES[rng.random_range(0..LIES.len())];
                if rng.random_bool(0.5) {
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                } else {
                    b[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
                }
            }
            5 => {
                // A JSON number or string replaced by a value of the wrong type.
                if let Some(at) = json_value_at(&b, rng) {
                    let end = at + b[at..].iter().position(|c| matches!(c, b',' | b'}' | b']' | b'\n')).unwrap_or(b.len() - at);
                    let lie = JSON_LIES[rng.random_range(0..JSON_LIES.len())];
                    b.splice(at..end, lie.bytes());
                }
            }
            6 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let k = rng.random_range(1..=(other.len() - from).min(256));
                let at = rng.random_range(0..=n);
                b.splice(at..at, other[from..from + k].iter().copied());
            }
            _ if n > 0 => {
                // A chunk repeated (duplicate keys, records, tensors).
                let at = rng.random_range(0..n);
                let k = rng.random_range(1..=(n - at).min(128));
                let chunk = b[at..at + k].to_vec();
                b.splice(at..at, chunk);
            }
            _ => b.push(rng.random()),
        }
    }
    b
}

/// The start of a random JSON value after a ':' (None in binary data without one).
fn json_value_at(b: &[u8], rng: &mut StdRng) -> Option<usize> {
    let colons: Vec<usize> = b.iter().enumerate().filter(|(_, &c)| c == b':').map(|(i, _)| i).take(4096).collect();
    let &c = colons.get(rng.random_range(0..colons.len().max(1)))?;
    let at = c + 1 + b[c + 1..].iter().position(|x| !x.is_ascii_whitespace())?;
    Some(at)
}

/// Runs `target` on mutated seeds until `budget` or `max_inputs`, whichever comes first.
pub fn run(target: &Target, seed: u64, budget: Duration, max_inputs: usize, limits: &Limits) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report { target: target.name.into(), ..Default::default() };
    let start = Instant::now();
    let work = std::env::temp_dir();
    for seed in &target.seeds {
        if let Err(e) = (target.load)(&work, seed) {
            report.bad_seeds.push(e.to_string());
        }
    }
    while report.inputs < max_inputs && start.elapsed() < budget {
        let s = &target.seeds[rng.random_range(0..target.seeds.len())];
        let o = &target.seeds[rng.random_range(0..target.seeds.len())];
        let input = mutate(&mut rng, s, o);
        (limits.reset)();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.load)(&work, &input)));
        let peak = (limits.peak)();
        report.inputs += 1;
        if peak > allocation_bound(input.len()) {
            report.oversized.push((peak, input.len()));
        }
        match outcome {
            Ok(Ok(())) => report.accepted += 1,
            Ok(Err(e)) => {
                report.rejected += 1;
                let msg = e.to_string();
                if !msg.contains(target.file) && report.unnamed.len() < 20 {
                    report.unnamed.push(msg);
                }
            }
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                if report.panics.len() < 20 {
                    report.panics.push(msg);
                }
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io(path, e))
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Model { file: path.display().to_string(), detail: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quantised seeds load, and between them hold a matrix of every quantised type.
    #[test]
    fn the_gguf_seeds_hold_every_quantised_type() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, seed) in [("k-quants", k_quant_gguf()), ("lattice", lattice_gguf()), ("low-bit", low_bit_gguf())] {
            let (_, meta) = crate::model::gguf::load_gguf_bytes(seed.unwrap(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
            seen.extend(meta.tensors.iter().map(|t| t.ty.id()));
        }
        let missing: Vec<_> = GgmlType::ALL.iter().filter(|t| t.block().0 > 1 && !seen.contains(&t.id())).collect();
        assert!(missing.is_empty(), "no seed holds {missing:?}");
    }

    /// The SentencePiece seed loads with its tokenizer, which is SentencePiece's (a start token
    /// by default; "he" a piece of its own).
    #[test]
    fn the_sentencepiece_seed_loads() {
        let tiny = Config { vocab_size: 259, ..Config::tiny_llama() };
        let (w, meta) = crate::model::gguf::load_gguf_bytes(sentencepiece_gguf(&random_weights(&tiny, 3)).unwrap(), "spm").unwrap();
        let tok = crate::model::Tok::from_gguf(&meta, "spm").unwrap();
        assert_eq!(tok.start(), &[0]);
        assert_eq!(tok.vocab_size(), w.config.vocab_size);
        assert_eq!(tok.encode("he").unwrap(), vec![257]);
    }
}
