//! The GPU forward against the f64 oracle on tiny random models of both families, written by
//! the real saver and read back by the real loader: logits, probes, added vectors, padding of
//! batches with different lengths, and decoding with the KV cache.

mod common;
use common::*;
use revive::cpu::model::CpuModel;
use revive::model::batch::Batch;
use revive::model::forward::{GpuModel, LogitRows};
use revive::model::generate::{generate, Sampling};
use revive::model::probe::{Probes, Site};
use revive::model::random::random_weights;
use revive::model::safetensors::{load_dir, save_dir, SaveDtype};
use revive::model::{Config, RopeScaling, RopeStyle, Weights};

/// Logits are sums over many f32 products; 1e-4 relative to the largest logit is the bound the
/// issue sets for a whole forward pass.
fn logit_tol(want: &[f64]) -> Tolerance {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Tolerance::new(1e-4 * scale, 1e-4, 1e-4)
}

fn through_disk(w: &Weights, tag: &str) -> Weights {
    // Tests of this binary run in parallel, each calling `models()`: a directory per call.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("revive-fwd-{}-{call}-{tag}", std::process::id()));
    save_dir(w, &dir, SaveDtype::F32, None).unwrap();
    let back = load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    back
}

fn models() -> Vec<(&'static str, Weights)> {
    let mut adjacent = Config::tiny_llama();
    adjacent.rope_style = RopeStyle::Adjacent;
    adjacent.tied_embeddings = true;
    vec![
        ("llama", through_disk(&random_weights(&Config::tiny_llama(), 11), "llama")),
        ("gpt2", through_disk(&random_weights(&Config::tiny_gpt2(), 12), "gpt2")),
        // GGUF's RoPE pairing and tied embeddings, as SmolLM2 has them.
        ("llama-adjacent", random_weights(&adjacent.clone(), 13)),
        // Scaled RoPE: Llama 3.1's rule (through config.json), and a GGUF's divisors.
        // Qwen2: q/k/v biases, through its own config.json and names.
        ("qwen2", through_disk(&random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 16), "qwen2")),
        ("llama-llama3", through_disk(&random_weights(&Config { rope_scaling: LLAMA3.clone(), ..Config::tiny_llama() }, 14), "llama3")),
        ("llama-divisors", random_weights(&Config { rope_scaling: RopeScaling::Divisors(vec![1.0, 2.5, 0.5, 7.0, 3.0, 1.25, 9.0, 4.0][..Config::tiny_llama().head_dim / 2].to_vec()), ..adjacent }, 15)),
    ]
}

/// The logits of `ids` from `w`, each position's, are `want` (an independent implementation's):
/// in the f64 reference and on every adapter in one pass, and with `decoded`, token by token
/// through the cache too.
fn gives_logits(label: &str, w: &Weights, ids: &[u32], want: &[Vec<f64>], decoded: bool) {
    let seqs = [ids.to_vec()];
    let (cpu, _) = CpuModel::new(w).forward(&seqs, &Probes::default());
    for (p, row) in want.iter().enumerate() {
        let got: Vec<f32> = cpu[0][p].iter().map(|&x| x as f32).collect();
        compare(&format!("{label} reference, position {p}"), &got, row, logit_tol(row)).unwrap();
    }
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, w))?;
        let (logits, _) = ok(gm.forward(&ok(Batch::new(&seqs))?, &Probes::default(), LogitRows::All, None))?;
        let got = ok(gpu.download(&logits))?;
        let v = w.config.vocab_size;
        for (p, row) in want.iter().enumerate() {
            compare(&format!("{label} on {}, position {p}", gpu.label()), &got[p * v..(p + 1) * v], row, logit_tol(row))?;
        }
        if decoded {
            let mut cache = ok(gm.new_cache(1, ids.len()))?;
            for (p, &tok) in ids.iter().enumerate() {
                let (l, _) = ok(gm.forward(&ok(Batch::new(&[vec![tok]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                compare(&format!("{label} decoded on {}, position {p}", gpu.label()), &ok(gpu.download(&l))?, &want[p], logit_tol(&want[p]))?;
            }
        }
        Ok(())
    });
}

/// transformers' own logits (tests/data/qwen2_fixture.py) of a tiny Qwen2 — the Llama block
/// with biases on the query, key and value projections, its RoPE base only inside
/// `rope_parameters` — on every adapter (one pass, and decoding token by token with the cache,
/// which takes the stacked product's other paths) and in the f64 reference; the same model
/// with its biases zeroed gives transformers' logits for that too, far from the first (the
/// biases are what is seen); a save and reload keeps the layout.
#[test]
fn qwen2_gives_the_logits_transformers_gives() {
    use serde_json::Value;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let ids: Vec<u32> = expected["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let rows = |key: &str| -> Vec<Vec<f64>> { expected[key].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect() };
    let w = load_dir(&fixture).unwrap();
    assert!(w.config.qkv_bias && w.config.rope_theta == 1_000_000.0, "{:?}", w.config);
    let mut unbiased = w.clone();
    for (name, t) in unbiased.tensors.iter_mut() {
        if name.ends_with(".bq") || name.ends_with(".bk") || name.ends_with(".bv") {
            t.data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let (with, without) = (rows("logits"), rows("logits_without_biases"));
    let apart = with.iter().flatten().zip(without.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(apart > 0.1, "the biases move transformers' logits by only {apart}");
    for (label, model, want) in [("qwen2", &w, &with), ("qwen2 without biases", &unbiased, &without)] {
        gives_logits(label, model, &ids, want, true);
    }
    let back = through_disk(&w, "qwen2");
    assert_eq!(back.config, w.config);
    assert_eq!(back.tensors, w.tensors);
}

/// A Qwen2 GGUF laid out as llama.cpp's converter lays one out (tests/data/qwen2_gguf_fixture.py:
/// `qwen2.*` keys, q/k/v biases, Q/K rows unpermuted, tied embeddings) gives transformers' own
/// logits of the same model in the f64 reference and on every adapter, in one pass and decoded
/// token by token; saved as a Hugging Face directory it gives them again.
#[test]
fn a_qwen2_gguf_gives_the_logits_transformers_gives() {
    use serde_json::Value;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-gguf");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let ids: Vec<u32> = expected["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want: Vec<Vec<f64>> = expected["logits"].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect();
    let (w, _) = revive::model::gguf::load_gguf(&fixture.join("model.gguf")).unwrap();
    gives_logits("qwen2 gguf", &w, &ids, &want, true);
    gives_logits("qwen2 gguf saved as safetensors", &through_disk(&w, "qwen2-gguf"), &ids, &want, false);
}

/// Llama 3.1's rule as tiny models' heads see it: of tiny_llama's frequencies, some kept, some
/// blended, some divided.
const LLAMA3: RopeScaling = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64.0 };

/// transformers' own logits (tests/data/rope_scaling_fixture.py) of one tiny Llama with 8 RoPE
/// frequencies under Llama 3.1's scaling (frequencies in all three of its bands), linear
/// scaling and none, over 40 positions. The config as transformers 5 writes it
/// (`rope_parameters`) and in the older top-level form (`rope_theta`, `rope_scaling`) loads to
/// the same model, whose logits on every adapter and in the f64 reference are transformers';
/// a scaled model's logits are far from the unscaled one's, so the scaling is what is seen;
/// a save and reload keeps it.
#[test]
fn scaled_rope_gives_the_logits_transformers_gives() {
    use serde_json::Value;
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rope-scaling");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap()).unwrap();
    let ids: Vec<u32> = expected["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want = |name: &str| -> Vec<Vec<f64>> {
        expected["logits"][name].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
    };
    let unscaled = want("none");
    for name in ["llama3", "linear"] {
        let apart = want(name).iter().flatten().zip(unscaled.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(apart > 0.1, "{name}: transformers' logits within {apart} of the unscaled model's");
    }
    for name in ["llama3", "linear", "none"] {
        let config: Value = serde_json::from_str(&std::fs::read_to_string(fixture.join(format!("config-{name}.json"))).unwrap()).unwrap();
        let mut legacy = config.clone();
        let params = legacy.as_object_mut().unwrap().remove("rope_parameters").unwrap();
        legacy["rope_theta"] = params["rope_theta"].clone();
        if params["rope_type"] != "default" {
            let mut scaling = params.clone();
            scaling.as_object_mut().unwrap().remove("rope_theta");
            legacy["rope_scaling"] = scaling;
        }
        let loaded: Vec<Weights> = [("parameters", &config), ("top-level", &legacy)]
            .iter()
            .map(|(form, cfg)| {
                let dir = std::env::temp_dir().join(format!("revive-rope-{}-{name}-{form}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(fixture.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
                std::fs::write(dir.join("config.json"), serde_json::to_string(cfg).unwrap()).unwrap();
                let w = load_dir(&dir).unwrap_or_else(|e| panic!("{name} ({form}): {e}"));
                std::fs::remove_dir_all(&dir).unwrap();
                w
            })
            .collect();
        let w = &loaded[0];
        assert_eq!(w.config, loaded[1].config, "{name}: the two forms of the config read differently");
        let is_scaled = !matches!(w.config.rope_scaling, RopeScaling::None);
        assert_eq!(is_scaled, name != "none", "{name}: read as {:?}", w.config.rope_scaling);
        gives_logits(name, w, &ids, &want(name), false);
        assert_eq!(through_disk(w, name).config, w.config, "{name}: the scaling did not survive a save");
    }
}

#[test]
fn logits_and_probes_match_the_oracle() {
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let cpu = CpuModel::new(&w);
            let gm = ok(GpuModel::new(gpu, &w))?;
            let v = w.config.vocab_size as u32;
            let seqs = vec![vec![5, 17, 3, 60 % v, 2, 9, 33, 41], vec![7, 1, 88 % v], vec![4]];
            let last = w.config.n_layers - 1;
            let heads = w.config.n_heads * w.config.head_dim;
            let probes = Probes {
                residual: vec![Site { layer: 0, seq: 0, pos: 3 }, Site { layer: last, seq: 1, pos: 2 }],
                down_in: vec![Site { layer: 1, seq: 0, pos: 7 }, Site { layer: 0, seq: 2, pos: 0 }],
                add: vec![(Site { layer: 0, seq: 0, pos: 2 }, (0..w.config.hidden).map(|i| (i as f32 * 0.37).sin()).collect())],
                add_to_embedding: vec![((0, 1), (0..w.config.hidden).map(|i| (i as f32 * 0.71).cos()).collect()), ((2, 0), vec![0.25; w.config.hidden])],
                set_down_in: vec![(Site { layer: 1, seq: 0, pos: 4 }, (0..w.config.ffn_hidden).map(|i| (i as f32 * 0.53).sin()).collect()), (Site { layer: 0, seq: 1, pos: 2 }, vec![-0.5; w.config.ffn_hidden])],
                // Read where one is set (the read sees what the layer computed), and apart.
                heads: vec![Site { layer: 0, seq: 0, pos: 5 }, Site { layer: last, seq: 1, pos: 1 }, Site { layer: 1, seq: 2, pos: 0 }],
                set_heads: vec![(Site { layer: 0, seq: 0, pos: 5 }, (0..heads).map(|i| (i as f32 * 0.29).cos()).collect()), (Site { layer: last, seq: 2, pos: 0 }, vec![0.75; heads])],
                // From the embedding (a_pass_started_at_a_layer_goes_on_as_the_full_pass).
                start_at: None,
            };
            let batch = ok(Batch::new(&seqs))?;
            let (logits, cap) = ok(gm.forward(&batch, &probes, LogitRows::All, None))?;
            let got = ok(gpu.download(&logits))?;
            let (want, want_cap) = cpu.forward(&seqs, &probes);
            // Compare only real tokens: padded rows are never read.
            for (s, seq) in seqs.iter().enumerate() {
                for (p, want_p) in want[s].iter().enumerate().take(seq.len()) {
                    let r = batch.row(s, p) * w.config.vocab_size;
                    let g = &got[r..r + w.config.vocab_size];
                    compare(&format!("{name} logits seq {s} pos {p}"), g, want_p, logit_tol(want_p))?;
                }
            }
            for (k, (g, c)) in cap.residual.iter().zip(&want_cap.residual).enumerate() {
                let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                compare(&format!("{name} residual probe {k}"), g, &c, logit_tol(&c))?;
            }
            for (k, (g, c)) in cap.down_in.iter().zip(&want_cap.down_in).enumerate() {
                let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                compare(&format!("{name} down_in probe {k}"), g, &c, logit_tol(&c))?;
            }
            assert_eq!((cap.heads.len(), want_cap.heads.len()), (3, 3));
            for (k, (g, c)) in cap.heads.iter().zip(&want_cap.heads).enumerate() {
                let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                compare(&format!("{name} heads probe {k}"), g, &c, logit_tol(&c))?;
            }
        }
        Ok(())
    });
}

/// A pass started at a layer from the residual stream a full pass had there goes on as the full
/// pass, on the GPU and in the oracle, from every layer (the layer count too: only the head
/// then); a start the batch or the probes do not fit is refused.
#[test]
fn a_pass_started_at_a_layer_goes_on_as_the_full_pass() {
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let cpu = CpuModel::new(&w);
            let gm = ok(GpuModel::new(gpu, &w))?;
            let seqs = vec![vec![5, 17, 3, 9, 2], vec![7, 1, 8]];
            let batch = ok(Batch::new(&seqs))?;
            let n = w.config.n_layers;
            let every: Vec<Site> = (0..n).flat_map(|layer| seqs.iter().enumerate().flat_map(move |(seq, s)| (0..s.len()).map(move |pos| Site { layer, seq, pos }))).collect();
            let (want, states) = cpu.forward(&seqs, &Probes { residual: every.clone(), ..Default::default() });
            let entering = |start: usize| -> Vec<Vec<f32>> {
                let after = |seq: usize, pos: usize| &states.residual[every.iter().position(|s| *s == Site { layer: start - 1, seq, pos }).unwrap()];
                seqs.iter().enumerate().map(|(seq, s)| (0..s.len()).flat_map(|pos| after(seq, pos).iter().copied()).collect()).collect()
            };
            for start in 1..=n {
                let probes = Probes { start_at: Some((start, entering(start))), ..Default::default() };
                let (from_cpu, _) = cpu.forward(&seqs, &probes);
                let (logits, _) = ok(gm.forward(&batch, &probes, LogitRows::All, None))?;
                let got = ok(gpu.download(&logits))?;
                for (s, seq) in seqs.iter().enumerate() {
                    for (p, want_p) in want[s].iter().enumerate().take(seq.len()) {
                        let r = batch.row(s, p) * w.config.vocab_size;
                        compare(&format!("{name} from layer {start}, seq {s} pos {p}"), &got[r..r + w.config.vocab_size], want_p, logit_tol(want_p))?;
                        // The oracle starts from f32 rows: its own logits to f32 rounding.
                        let gap = from_cpu[s][p].iter().zip(want_p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                        if gap > 1e-5 * want_p.iter().fold(1.0f64, |m, v| m.max(v.abs())) {
                            return Err(format!("{name}: the oracle from layer {start} is {gap} from its full pass"));
                        }
                    }
                }
            }
            let mut short = entering(1);
            short[1].pop();
            let refused = [
                ("past the layers", Probes { start_at: Some((n + 1, entering(n))), ..Default::default() }),
                ("rows of another batch", Probes { start_at: Some((1, entering(1)[..1].to_vec())), ..Default::default() }),
                ("a row short", Probes { start_at: Some((1, short)), ..Default::default() }),
                ("a probe before it", Probes { start_at: Some((2.min(n), entering(2.min(n)))), residual: vec![Site { layer: 0, seq: 0, pos: 0 }], ..Default::default() }),
                ("noise on the embedding", Probes { start_at: Some((1, entering(1))), add_to_embedding: vec![((0, 0), vec![1.0; w.config.hidden])], ..Default::default() }),
            ];
            for (what, probes) in refused {
                gm.forward(&batch, &probes, LogitRows::All, None).err().ok_or(format!("{name}: a start with {what} accepted"))?;
            }
        }
        Ok(())
    });
}

/// Every matrix past one binding and every dispatch past the adapter's workgroup count, as a
/// large vocabulary's embedding is on an adapter with small limits (Llama 3's 128,256 × 4,096
/// f32 is 2 GiB, past many adapters' largest binding): limits of 4 KiB and 3 workgroups make a
/// tiny model's every tensor split, and the logits of a pass and of a decode through the cache
/// stay the f64 reference's.
#[test]
fn a_model_past_the_binding_and_dispatch_limits_runs_split() {
    use revive::gpu::SplitLimits;
    for_each_gpu(|gpu| {
        let small = gpu.with_split_limits(SplitLimits { max_workgroups: 3, max_binding_bytes: 4096 });
        for (name, w) in models() {
            let gm = ok(GpuModel::new(&small, &w))?;
            let v = w.config.vocab_size;
            assert!(w.tensors["embed"].data.len() * 4 > 4096, "{name}: the embedding fits one binding");
            let seqs = vec![vec![5, 17, 3, 9, 2], vec![7, 1]];
            let batch = ok(Batch::new(&seqs))?;
            let (logits, _) = ok(gm.forward(&batch, &Probes::default(), LogitRows::All, None))?;
            let got = ok(small.download(&logits))?;
            let (want, _) = CpuModel::new(&w).forward(&seqs, &Probes::default());
            for (s, seq) in seqs.iter().enumerate() {
                for (p, want_p) in want[s].iter().enumerate().take(seq.len()) {
                    let r = batch.row(s, p) * v;
                    compare(&format!("{name} split, seq {s} pos {p}"), &got[r..r + v], want_p, logit_tol(want_p))?;
                }
            }
            let mut cache = ok(gm.new_cache(1, 8))?;
            for (p, &tok) in seqs[0].iter().enumerate() {
                let (l, _) = ok(gm.forward(&ok(Batch::new(&[vec![tok]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                compare(&format!("{name} split, decoded position {p}"), &ok(small.download(&l))?, &want[0][p], logit_tol(&want[0][p]))?;
            }
        }
        Ok(())
    });
}

#[test]
fn decoding_with_the_cache_matches_a_full_pass() {
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let seq: Vec<u32> = vec![3, 14, 15, 9, 26, 5, 35];
            let full = ok(gm.last_logits(std::slice::from_ref(&seq)))?;
            let mut cache = ok(gm.new_cache(1, 16))?;
            let prefill = ok(Batch::new(&[seq[..4].to_vec()]))?;
            ok(gm.forward(&prefill, &Probes::default(), LogitRows::Rows(vec![3]), Some(&mut cache)))?;
            let mut last = vec![];
            for &tok in &seq[4..] {
                let step = ok(Batch::new(&[vec![tok]]))?;
                let (l, _) = ok(gm.forward(&step, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                last = ok(gpu.download(&l))?;
            }
            let want: Vec<f64> = full[0].iter().map(|&x| x as f64).collect();
            compare(&format!("{name} cached decode"), &last, &want, logit_tol(&want))?;
            if cache.len != seq.len() {
                return Err(format!("cache length {} after {} tokens", cache.len, seq.len()));
            }
        }
        Ok(())
    });
}

/// Sequences of different lengths decoded together, each token at its own position: every
/// step's logits against the f64 oracle's full pass over that sequence so far, on both model
/// families, with the norms and the activation folded into the products (a GPU's path) and
/// not. Poisoned allocations: a query that read a cache row its sequence has not written
/// (past its position) would see NaN.
#[test]
fn sequences_decoded_together_at_their_own_positions_match_full_passes() {
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let cpu = CpuModel::new(&w);
            let v = w.config.vocab_size as u32;
            // Prompt lengths 1, 5, 3 and 2 (one of them the longest, padded past the others),
            // then three tokens each; the first step has every sequence at another position.
            let prompts: Vec<Vec<u32>> = vec![vec![7], vec![3, 14, 15, 9, 26], vec![5, 35 % v, 8], vec![11, 2]];
            let fed: Vec<Vec<u32>> = vec![vec![4, 19, 1], vec![6, 6, 30 % v], vec![2, 9, 13], vec![40 % v, 3, 5]];
            for fold in [false, true] {
                let mut gm = ok(GpuModel::new(gpu, &w))?;
                gm.set_fold_into_products(fold);
                let batch = ok(Batch::new(&prompts))?;
                let mut cache = ok(gm.new_cache(prompts.len(), batch.t + 3))?;
                ok(gm.forward(&batch, &Probes::default(), LogitRows::Rows(batch.last_rows()), Some(&mut cache)))?;
                for step in 0..3 {
                    let tokens: Vec<u32> = fed.iter().map(|f| f[step]).collect();
                    let positions: Vec<usize> = prompts.iter().map(|p| p.len() + step).collect();
                    let logits = ok(gpu.download(&ok(gm.decode_each(&tokens, &positions, &mut cache))?))?;
                    for (s, prompt) in prompts.iter().enumerate() {
                        let seq: Vec<u32> = prompt.iter().chain(&fed[s][..=step]).copied().collect();
                        let (want, _) = cpu.forward(std::slice::from_ref(&seq), &Probes::default());
                        let want = &want[0][seq.len() - 1];
                        let vs = w.config.vocab_size;
                        compare(&format!("{name} fold {fold} step {step} seq {s}"), &logits[s * vs..(s + 1) * vs], want, logit_tol(want))?;
                    }
                }
                // Refused: a token count that is not the cache's, a position past its rows.
                gm.decode_each(&[1, 2], &[5, 6], &mut cache).err().ok_or("two tokens for a cache of four sequences accepted")?;
                gm.decode_each(&[1, 2, 3, 4], &[5, 6, 7], &mut cache).err().ok_or("three positions for four tokens accepted")?;
                gm.decode_each(&[1, 2, 3, 4], &[1, 2, batch.t + 3, 3], &mut cache).err().ok_or("a position past the cache accepted")?;
                let oov = w.config.vocab_size as u32;
                gm.decode_each(&[1, oov, 3, 4], &[1, 2, 3, 3], &mut cache).err().ok_or("a token outside the vocabulary accepted")?;
            }
        }
        Ok(())
    });
}

/// A step of sequences at their own positions takes the dispatches of a step with all of them
/// at one position: the rotation and the attention read each sequence's position from their
/// parameters, 16 sequences a dispatch (so 20 sequences take one more of each per layer), with
/// the norm and q/k/v folded in (4 sequences on a GPU's path) or not. GPT-2's unrotated keys are
/// copied into place a sequence at a time.
#[test]
fn sequences_at_their_own_positions_take_the_dispatches_of_one_position() {
    // Counts dispatches: a device of its own.
    for_each_fresh_gpu(false, |gpu| {
        for ((name, w), fold) in models().into_iter().flat_map(|m| [(m.clone(), false), (m, true)]) {
            let mut gm = ok(GpuModel::new(gpu, &w))?;
            gm.set_fold_into_products(fold);
            let layers = w.config.n_layers as u64;
            for b in [4usize, 20] {
                let step = |positions: &[usize]| -> Result<u64, String> {
                    let mut cache = ok(gm.new_cache(b, 8))?;
                    let prompts: Vec<Vec<u32>> = (0..b).map(|s| vec![1 + s as u32 % 7; 4]).collect();
                    ok(gm.forward(&ok(Batch::new(&prompts))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                    let before = gpu.runtime_stats();
                    ok(gm.decode_each(&vec![3; b], positions, &mut cache))?;
                    Ok((gpu.runtime_stats() - before).dispatches)
                };
                let together = step(&vec![4; b])?;
                let each = step(&(0..b).map(|s| 1 + s % 4).collect::<Vec<_>>())?;
                let extra_dispatches = b.div_ceil(16) as u64 - 1;
                let more = match w.config.arch {
                    revive::model::Arch::Gpt2 => (b as u64 - 1 + extra_dispatches) * layers,
                    _ => 2 * extra_dispatches * layers,
                };
                if each != together + more {
                    return Err(format!("{name} (fold {fold}), {b} sequences: {each} dispatches at their own positions, {together} at one (want {more} more)"));
                }
            }
        }
        Ok(())
    });
}

/// Sampling from candidates found on the GPU draws what sampling from whole rows read back
/// draws, for every kind of setting (greedy, top-k of the GPU's size, top-k wider than it,
/// the whole vocabulary), and reads back a few values a row where every setting allows it; a
/// logit that is not finite is refused by name either way.
#[test]
fn sampling_from_gpu_candidates_draws_what_whole_rows_draw() {
    use revive::model::generate::{generate_many_reading, Readback, GPU_TOP_K_MAX};
    // Counts the bytes read back: a device of its own.
    for_each_fresh_gpu(true, |gpu| {
        for (name, w) in models() {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let v = w.config.vocab_size;
            let prompts: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3], vec![12], vec![5, 17, 3, 2, 8, 1, 30]];
            let narrow = [
                Sampling::default(),
                Sampling { temperature: 1.0, top_k: 5, seed: 3 },
                Sampling { temperature: 0.8, top_k: GPU_TOP_K_MAX, seed: 4 },
            ];
            let wide = [narrow[0], Sampling { temperature: 1.0, top_k: GPU_TOP_K_MAX + 1, seed: 6 }, Sampling { temperature: 0.7, top_k: 0, seed: 7 }];
            for (settings, few) in [(&narrow, true), (&wide, false)] {
                let before = gpu.runtime_stats();
                let from_candidates = ok(generate_many_reading(&gm, &prompts, 5, settings, None, Readback::Candidates))?;
                let read = (gpu.runtime_stats() - before).readback_bytes;
                let from_rows = ok(generate_many_reading(&gm, &prompts, 5, settings, None, Readback::WholeRows))?;
                if from_candidates != from_rows {
                    return Err(format!("{name} {settings:?}: from candidates {from_candidates:?}, from whole rows {from_rows:?}"));
                }
                // The narrow settings run ahead, the wide ones wait: the same tokens either way.
                let ahead = ok(generate_many_reading(&gm, &prompts, 5, settings, None, Readback::Ahead))?;
                if ahead != from_rows {
                    return Err(format!("{name} {settings:?}: ahead {ahead:?}, from whole rows {from_rows:?}"));
                }
                // Five steps of three rows: the top GPU_TOP_K_MAX tokens and their logits, or whole rows.
                let want = if few { 5 * 3 * 2 * GPU_TOP_K_MAX.min(v) * 4 } else { 5 * 3 * v * 4 };
                if read as usize != want {
                    return Err(format!("{name} {settings:?}: read back {read} bytes, want {want}"));
                }
            }
        }
        let (name, mut w) = models().remove(0);
        w.tensors.get_mut("final_norm.weight").ok_or("no final norm")?.data[3] = f32::NAN;
        let gm = ok(GpuModel::new(gpu, &w))?;
        for readback in [Readback::Ahead, Readback::Candidates, Readback::WholeRows] {
            let e = generate_many_reading(&gm, &[vec![1, 2]], 3, &[Sampling::default()], None, readback).err().ok_or(format!("{name}: NaN logits sampled"))?;
            if !e.to_string().contains("logits are not finite") {
                return Err(format!("{name} {readback:?}: {e}"));
            }
        }
        Ok(())
    });
}

/// Greedy generation that queues each step from the tokens the GPU chose, before they come
/// back, gives the tokens of generation that waits for each step: one prompt (every sequence
/// at the cache's length) and prompts of different lengths (each at its own position), with an
/// end token that stops some sequences early and all of them; the same bytes come back.
#[test]
fn greedy_generation_running_ahead_gives_what_waiting_gives() {
    use revive::model::generate::{generate_many_reading, Readback};
    for_each_fresh_gpu(true, |gpu| {
        for (name, w) in models() {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let greedy = Sampling::default();
            let one: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3]];
            let several: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3], vec![12], vec![5, 17, 3, 2, 8, 1, 30], vec![7, 7]];
            for prompts in [&one, &several] {
                let settings = vec![greedy; prompts.len()];
                let before = gpu.runtime_stats();
                let waiting = ok(generate_many_reading(&gm, prompts, 9, &settings, None, Readback::Candidates))?;
                let waited_bytes = (gpu.runtime_stats() - before).readback_bytes;
                let before = gpu.runtime_stats();
                let ahead = ok(generate_many_reading(&gm, prompts, 9, &settings, None, Readback::Ahead))?;
                let ahead_bytes = (gpu.runtime_stats() - before).readback_bytes;
                if ahead != waiting {
                    return Err(format!("{name}: ahead {ahead:?}, waiting {waiting:?}"));
                }
                if ahead_bytes != waited_bytes {
                    return Err(format!("{name}: ahead read back {ahead_bytes} bytes, waiting {waited_bytes}"));
                }
                // End tokens: one met early by the first sequence only, and the first token of
                // every sequence (all stop at once, with a step already queued).
                let firsts: Vec<u32> = waiting.iter().map(|t| t[0]).collect();
                for eos in [waiting[0][2], firsts[0]] {
                    let w = ok(generate_many_reading(&gm, prompts, 9, &settings, Some(eos), Readback::Candidates))?;
                    let a = ok(generate_many_reading(&gm, prompts, 9, &settings, Some(eos), Readback::Ahead))?;
                    if a != w {
                        return Err(format!("{name}: end token {eos}: ahead {a:?}, waiting {w:?}"));
                    }
                    let stop = waiting[0].iter().position(|&t| t == eos).ok_or("the end token is not in the output")?;
                    if a[0].len() != stop + 1 {
                        return Err(format!("{name}: end token {eos} at {stop}, sequence 0 kept {:?}", a[0]));
                    }
                }
                // One token only: nothing is queued past the prefill.
                let a = ok(generate_many_reading(&gm, prompts, 1, &settings, None, Readback::Ahead))?;
                if a != firsts.iter().map(|&t| vec![t]).collect::<Vec<_>>() {
                    return Err(format!("{name}: one token ahead {a:?}, waiting {firsts:?}"));
                }
            }
        }
        Ok(())
    });
}

/// Sampled generation queued from the GPU's own draw among each row's candidates (top-k
/// settings up to the GPU's size, mixed with a greedy one) gives the tokens of generation that
/// waits for each step, reading back only the drawn tokens besides: with end tokens that stop
/// some sequences early, prompts of one length (every sequence at the cache's length) and of
/// several, and with one generator shared by the prompts of a length (`sample_batch`). With
/// the GPU's draws skewed off the host's (a test hook), steps are run again from the host's
/// tokens and the tokens are still the same.
#[test]
fn sampled_generation_running_ahead_gives_what_waiting_gives() {
    use revive::model::generate::{generate_many_reading, sample_batch_reading, skew_gpu_draws, steps_redone, Readback, GPU_TOP_K_MAX};
    // Counts the bytes read back: a device of its own.
    for_each_fresh_gpu(true, |gpu| {
        for (name, w) in models() {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let settings = [
                Sampling { temperature: 1.0, top_k: 5, seed: 3 },
                Sampling::default(),
                Sampling { temperature: 1.5, top_k: GPU_TOP_K_MAX, seed: 4 },
                Sampling { temperature: 0.7, top_k: 2, seed: 5 },
                Sampling { temperature: 1.0, top_k: 5, seed: 6 },
                Sampling::default(),
            ];
            let several: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3], vec![12], vec![5, 17, 3, 2, 8, 1, 30], vec![7, 7], vec![12], vec![3, 5]];
            let one_length: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3], vec![1, 2, 3, 4], vec![30, 8, 8, 2]];
            for (prompts, skewed) in [(&several, false), (&several, true), (&one_length, false), (&one_length, true)] {
                let settings = &settings[..prompts.len()];
                skew_gpu_draws(skewed);
                let redone = steps_redone();
                let before = gpu.runtime_stats();
                let waiting = ok(generate_many_reading(&gm, prompts, 9, settings, None, Readback::Candidates))?;
                let waited_bytes = (gpu.runtime_stats() - before).readback_bytes;
                let before = gpu.runtime_stats();
                let ahead = ok(generate_many_reading(&gm, prompts, 9, settings, None, Readback::Ahead))?;
                let ahead_bytes = (gpu.runtime_stats() - before).readback_bytes;
                if ahead != waiting {
                    return Err(format!("{name} {prompts:?} skewed {skewed}: ahead {ahead:?}, waiting {waiting:?}"));
                }
                // Nine steps of a drawn token a sequence on top of the same candidates.
                if !skewed && ahead_bytes != waited_bytes + 9 * 4 * prompts.len() as u64 {
                    return Err(format!("{name}: ahead read back {ahead_bytes} bytes, waiting {waited_bytes}"));
                }
                for eos in [waiting[0][2], waiting[1][0]] {
                    let w = ok(generate_many_reading(&gm, prompts, 9, settings, Some(eos), Readback::Candidates))?;
                    let a = ok(generate_many_reading(&gm, prompts, 9, settings, Some(eos), Readback::Ahead))?;
                    if a != w {
                        return Err(format!("{name} skewed {skewed}: end token {eos}: ahead {a:?}, waiting {w:?}"));
                    }
                }
                let w = ok(sample_batch_reading(&gm, prompts, 7, settings[0], Readback::Candidates))?;
                let a = ok(sample_batch_reading(&gm, prompts, 7, settings[0], Readback::Ahead))?;
                if a != w {
                    return Err(format!("{name} skewed {skewed}: sample_batch ahead {a:?}, waiting {w:?}"));
                }
                skew_gpu_draws(false);
                let again = steps_redone() - redone;
                if skewed && again < 10 {
                    return Err(format!("{name}: with the GPU's draws skewed only {again} steps ran again"));
                }
                // The GPU's f32 draw misses the host's only within rounding of a boundary
                // between two candidates: none on these seeds here, at most a rare one on an
                // adapter whose exponential rounds otherwise.
                if !skewed && again > 2 {
                    return Err(format!("{name}: {again} steps ran again with the GPU drawing from the host's values"));
                }
            }
        }
        Ok(())
    });
}

/// Scoring that reports its passes gives the scores of scoring that does not, and reports
/// every pass once, in order, from 0 to all of them.
#[test]
fn scoring_reports_each_pass_as_it_comes_back() {
    use revive::model::batch::PassBudget;
    use revive::model::generate::{score_tokens_reporting, score_tokens_within};
    let w = random_weights(&Config::tiny_llama(), 43);
    // Enough tokens for several passes of the adapter's budget (256 tokens on a CPU adapter).
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..300u32).map(|i| (vec![1 + i % 50, 2 + i % 7, 3, 4 + i % 11], vec![5 + i % 13, 6])).collect();
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        let mut told = vec![];
        let got = ok(score_tokens_reporting(&gm, &pairs, &mut |done, passes| told.push((done, passes))))?;
        let want = ok(score_tokens_within(&gm, &pairs, PassBudget::for_gpu(gpu)))?;
        let passes = told.first().map_or(0, |t| t.1);
        let expected: Vec<(usize, usize)> = (0..=passes).map(|d| (d, passes)).collect();
        if passes < 2 || told != expected {
            return Err(format!("passes reported {told:?}"));
        }
        let lp = |x: &Vec<Vec<revive::model::generate::TokenScore>>| x.iter().map(|t| t.iter().map(|s| (s.logprob, s.top)).collect::<Vec<_>>()).collect::<Vec<_>>();
        if lp(&got) != lp(&want) {
            return Err("reported scoring gave other scores".into());
        }
        Ok(())
    });
}

/// Generation that reports its tokens reports each token kept once, under its own prompt (past
/// the 16 sequences one group decodes), in order, and gives what `generate_many` gives.
#[test]
fn generation_reports_every_token_under_its_prompt() {
    use revive::model::generate::{generate_many, generate_many_reporting};
    let w = random_weights(&Config::tiny_llama(), 44);
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        let prompts: Vec<Vec<u32>> = (0..19u32).map(|i| (0..1 + i % 4).map(|j| 1 + (i * 7 + j * 3) % 60).collect()).collect();
        let samplings: Vec<Sampling> = (0..19).map(|i| if i % 3 == 0 { Sampling::default() } else { Sampling { temperature: 0.9, top_k: 4, seed: i } }).collect();
        let eos = Some(5);
        let mut told: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
        let got = ok(generate_many_reporting(&gm, &prompts, 6, &samplings, eos, &mut |i, t| told[i].push(t)))?;
        let want = ok(generate_many(&gm, &prompts, 6, &samplings, eos))?;
        if got != want || told != want {
            return Err(format!("reported {told:?}, returned {got:?}, generate_many {want:?}"));
        }
        Ok(())
    });
}

/// `generate_many` gives each prompt what `generate` gives it alone: greedy, and sampled with
/// each prompt's own seed; a sequence that meets the end token stops there while the others
/// go on; the sampling settings must match the prompts.
#[test]
fn prompts_generated_together_continue_as_each_alone() {
    use revive::model::generate::generate_many;
    for_each_gpu(|gpu| {
        for (name, w) in models() {
            let gm = ok(GpuModel::new(gpu, &w))?;
            let prompts: Vec<Vec<u32>> = vec![vec![9, 4, 21, 3], vec![12], vec![5, 17, 3, 2, 8, 1, 30], vec![12]];
            let samplings = [
                Sampling::default(),
                Sampling { temperature: 1.0, top_k: 5, seed: 3 },
                Sampling { temperature: 0.7, top_k: 0, seed: 4 },
                Sampling { temperature: 1.0, top_k: 5, seed: 5 },
            ];
            let alone: Vec<Vec<u32>> = prompts.iter().zip(&samplings).map(|(p, s)| ok(generate(&gm, p, 6, *s, None, |_| {}))).collect::<Result<_, _>>()?;
            let together = ok(generate_many(&gm, &prompts, 6, &samplings, None))?;
            if together != alone {
                return Err(format!("{name}: together {together:?}, alone {alone:?}"));
            }
            // The end token: the first token the greedy prompt produces.
            let eos = alone[0][0];
            let stopped = ok(generate_many(&gm, &prompts, 6, &samplings, Some(eos)))?;
            for (i, (s, a)) in stopped.iter().zip(&alone).enumerate() {
                let want: Vec<u32> = match a.iter().position(|&t| t == eos) {
                    Some(at) => a[..=at].to_vec(),
                    None => a.clone(),
                };
                if *s != want {
                    return Err(format!("{name}: prompt {i} with end token {eos}: {s:?}, want {want:?}"));
                }
            }
            generate_many(&gm, &prompts, 2, &samplings[..3], None).err().ok_or("fewer sampling settings than prompts accepted")?;
            generate_many(&gm, &[vec![1], vec![]], 2, &samplings[..2], None).err().ok_or("an empty prompt accepted")?;
            let long = w.config.max_seq_len - 3;
            let e = generate_many(&gm, &[vec![1], vec![1; long]], 4, &samplings[..2], None).err().ok_or("a prompt past the context accepted")?;
            if !e.to_string().contains("context") {
                return Err(format!("{name}: {e}"));
            }
            if ok(generate_many(&gm, &prompts, 0, &samplings, None))? != vec![Vec::<u32>::new(); 4] {
                return Err(format!("{name}: zero tokens asked, some given"));
            }
        }
        Ok(())
    });
}

#[test]
fn bad_requests_are_errors() {
    for_each_gpu(|gpu| {
        let w = random_weights(&Config::tiny_gpt2(), 14);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let batch = ok(Batch::new(&[vec![1, 2, 3]]))?;
        let far = Probes { residual: vec![Site { layer: 0, seq: 0, pos: 3 }], ..Default::default() };
        gm.forward(&batch, &far, LogitRows::All, None).err().ok_or("probe past the sequence accepted")?;
        // Probes that put states in place: past the sequence, twice at one site, of the wrong width.
        let (ffn, heads) = (w.config.ffn_hidden, w.config.n_heads * w.config.head_dim);
        let at = |pos| Site { layer: 1, seq: 0, pos };
        let bad_sets = [
            ("a key set past the sequence", Probes { set_down_in: vec![(at(3), vec![0.0; ffn])], ..Default::default() }),
            ("heads set past the sequence", Probes { set_heads: vec![(at(3), vec![0.0; heads])], ..Default::default() }),
            ("heads read past the sequence", Probes { heads: vec![at(3)], ..Default::default() }),
            ("a key set twice", Probes { set_down_in: vec![(at(1), vec![0.0; ffn]), (at(1), vec![1.0; ffn])], ..Default::default() }),
            ("heads set twice", Probes { set_heads: vec![(at(2), vec![0.0; heads]), (at(2), vec![1.0; heads])], ..Default::default() }),
            ("a key of the wrong width", Probes { set_down_in: vec![(at(1), vec![0.0; ffn + 1])], ..Default::default() }),
            ("heads of the wrong width", Probes { set_heads: vec![(at(1), vec![0.0; heads - 1])], ..Default::default() }),
        ];
        for (what, probes) in bad_sets {
            gm.forward(&batch, &probes, LogitRows::All, None).err().ok_or(format!("{what} accepted"))?;
        }
        let fine = Probes { set_heads: vec![(at(1), vec![0.0; heads]), (Site { layer: 0, ..at(1) }, vec![0.0; heads])], ..Default::default() };
        ok(gm.forward(&batch, &fine, LogitRows::All, None))?;
        let oov = ok(Batch::new(&[vec![1, 5000]]))?;
        gm.forward(&oov, &Probes::default(), LogitRows::All, None).err().ok_or("token outside the vocabulary accepted")?;
        let long = ok(Batch::new(&[vec![1; 40]]))?;
        gm.forward(&long, &Probes::default(), LogitRows::All, None).err().ok_or("sequence past max_seq_len accepted")?;
        Batch::new(&[]).err().ok_or("empty batch accepted")?;
        Batch::new(&[vec![1, 2], vec![]]).err().ok_or("an empty sequence beside others accepted")?;
        gm.last_logits(&[vec![1, 2], vec![]]).err().ok_or("last_logits took an empty sequence")?;
        // Generation is bounded by the context before any cache is allocated, without overflow.
        for n in [100usize, 1 << 40, usize::MAX] {
            let e = generate(&gm, &[1, 2, 3], n, Sampling::default(), None, |_| {}).err().ok_or(format!("{n} new tokens past the context accepted"))?;
            if !e.to_string().contains("context") {
                return Err(format!("{n} tokens: {e}"));
            }
        }
        ok(generate(&gm, &[1, 2, 3], 2, Sampling::default(), None, |_| {}))?;
        Ok(())
    });
}

#[test]
fn every_kernel_mode_computes_the_same_bits() {
    // Kernels run without wgpu's injected bounds checks unless REVIVE_CHECKED=1; they must be
    // in bounds by construction, so both modes compute the same bits (a read past a binding
    // would differ: clamped in one, not in the other). Parameters come as immediates where the
    // device has them and from the uniform arena otherwise: the same bits again. A batch of two
    // prompts of different lengths and a cached decode step, on each adapter.
    use revive::gpu::{BackendChoice, Gpu, KernelModes, Params};
    let w = random_weights(&Config::tiny_llama(), 21);
    for adapter in Gpu::adapters(BackendChoice::Auto) {
        let info = adapter.get_info();
        let has_immediates = adapter.features().contains(wgpu::Features::IMMEDIATES);
        let run = |modes: KernelModes| -> Vec<f32> {
            let gpu = Gpu::open_with(adapter.clone(), modes).unwrap().with_poison(true);
            assert_eq!(gpu.checked(), modes.checked);
            assert_eq!(gpu.immediates() > 0, modes.immediates && has_immediates, "{}: immediates {}", info.name, gpu.immediates());
            let gm = GpuModel::new(&gpu, &w).unwrap();
            let batch = Batch::new(&[vec![3, 14, 15, 9, 26], vec![5, 35]]).unwrap();
            let (all, _) = gm.forward(&batch, &Probes::default(), LogitRows::All, None).unwrap();
            let mut out = gpu.download(&all).unwrap();
            let mut cache = gm.new_cache(1, 8).unwrap();
            gm.forward(&Batch::new(&[vec![3, 14, 15]]).unwrap(), &Probes::default(), LogitRows::Rows(vec![2]), Some(&mut cache)).unwrap();
            let (step, _) = gm.forward(&Batch::new(&[vec![9]]).unwrap(), &Probes::default(), LogitRows::All, Some(&mut cache)).unwrap();
            out.extend(gpu.download(&step).unwrap());
            // The matmul's parameters fit every device's immediates (Vulkan guarantees 128 bytes).
            let matmul = gpu.pipeline(revive::shaders::MATMUL, "matmul_tile16", &[("TRANS_A", 0.0), ("TRANS_B", 0.0), ("ALIGNED", 0.0)]).unwrap();
            assert_eq!(matches!(matmul.params(), Params::Immediate(_)), gpu.immediates() > 0, "{}: matmul takes {:?}", info.name, matmul.params());
            out
        };
        let reference = run(KernelModes { checked: true, immediates: false, cooperative: false });
        assert!(reference.iter().all(|v| v.is_finite()), "{}: non-finite logits", info.name);
        for modes in [KernelModes { checked: false, immediates: false, cooperative: false }, KernelModes { checked: false, immediates: true, cooperative: false }, KernelModes { checked: true, immediates: true, cooperative: false }] {
            let got = run(modes);
            let differ = reference.iter().zip(&got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{} ({:?}): {differ} of {} logits differ between {modes:?} and checked shaders with the uniform arena", info.name, info.backend, got.len());
        }
    }
}

/// One non-finite logit anywhere is an error, never a score or a token: the last-token logits,
/// scoring (one pair and a batch), sampling and generation all refuse it (issue 13).
#[test]
fn a_non_finite_logit_is_an_error_everywhere() {
    use revive::model::generate::{sample_batch, score, score_many};
    for_each_gpu(|gpu| {
        let mut w = random_weights(&Config::tiny_llama(), 17);
        let head = w.tensors.get_mut("lm_head").ok_or("no lm_head")?;
        let hidden = head.shape[1];
        // Row 5 of the head: token 5's logit is NaN, every other one finite.
        for x in &mut head.data[5 * hidden..6 * hidden] {
            *x = f32::NAN;
        }
        let gm = ok(GpuModel::new(gpu, &w))?;
        let mut said = vec![];
        said.push(gm.last_logits(&[vec![1, 2, 3]]).err().ok_or("last_logits accepted a NaN")?.to_string());
        said.push(score(&gm, &[1, 2], &[3]).err().ok_or("score accepted a NaN")?.to_string());
        said.push(score_many(&gm, &[(vec![1, 2], vec![3]), (vec![4], vec![5, 6])]).err().ok_or("score_many accepted a NaN")?.to_string());
        said.push(sample_batch(&gm, &[vec![1, 2]], 2, Sampling::default()).err().ok_or("sample_batch accepted a NaN")?.to_string());
        said.push(generate(&gm, &[1, 2, 3], 2, Sampling::default(), None, |_| {}).err().ok_or("generate accepted a NaN")?.to_string());
        for s in &said {
            if !(s.contains("not finite") && s.contains("token 5")) {
                return Err(format!("the error does not say which logit: {s}"));
            }
        }
        Ok(())
    });
}

/// The residual stream's x + h·Wᵀ: into x's own buffer where nothing else holds x (one
/// dispatch), a fresh tensor otherwise (a matmul and an add) — the same bits either way, and a
/// held copy of x is never written (the tape and probes rely on it). Odd row counts, on every
/// adapter, with poisoned new buffers.
#[test]
fn the_residual_is_one_product_and_a_shared_x_is_left_as_it_was() {
    use revive::testing::{random_vec, rng};
    // Counts dispatches: a device of its own, which no other test of this binary uses.
    for_each_fresh_gpu(true, |gpu| {
        let w = random_weights(&Config::tiny_llama(), 5);
        let gm = ok(GpuModel::new(gpu, &w))?;
        let (d, ffn) = (w.config.hidden, w.config.ffn_hidden);
        let w_down = ok(gm.tensor("layers.1.w_down"))?.clone();
        for rows in [1, 7, 67] {
            let xv = random_vec(&mut rng(rows as u64), rows * d);
            let h = ok(gpu.upload(&random_vec(&mut rng(rows as u64 + 1), rows * ffn), &[rows, ffn]))?;
            // Shared: a copy of x is kept, so the sum goes to a copy of x (a buffer copy, not a
            // dispatch) and x stays as it was.
            let x = ok(gpu.upload(&xv, &[rows, d]))?;
            let kept = x.clone();
            let before = gpu.runtime_stats();
            let shared = ok(gm.residual_linear(x, &h, &w_down, None))?;
            let shared_dispatches = (gpu.runtime_stats() - before).dispatches;
            if ok(gpu.download(&kept))? != xv {
                return Err(format!("{rows} rows: the kept copy of x was written"));
            }
            // Unique: accumulated in place.
            let x = ok(gpu.upload(&xv, &[rows, d]))?;
            let before = gpu.runtime_stats();
            let fused = ok(gm.residual_linear(x, &h, &w_down, None))?;
            let fused_dispatches = (gpu.runtime_stats() - before).dispatches;
            if (shared_dispatches, fused_dispatches) != (1, 1) {
                return Err(format!("{rows} rows: {shared_dispatches} dispatches shared, {fused_dispatches} unique (want 1 each)"));
            }
            let (a, b) = (ok(gpu.download(&shared))?, ok(gpu.download(&fused))?);
            let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            if differ > 0 || a.iter().any(|v| !v.is_finite()) {
                return Err(format!("{rows} rows: {differ} of {} values differ between the shared and the in-place sum (or one is not finite)", a.len()));
            }
        }
        Ok(())
    });
}

/// Replacing a weight that lives in a stacked projection (q/k/v, gate/up, Qwen2's q/k/v
/// biases) changes every path
/// that reads it — a full pass, a decoded token through the stacked product, the weights saved
/// back — exactly as a model loaded with the new weight, and a handle on the old tensor keeps
/// its values.
#[test]
fn replacing_a_stacked_weight_reaches_every_path() {
    for_each_gpu(|gpu| {
        // Qwen2's: its q/k/v biases are stacked too.
        let w = random_weights(&Config { qkv_bias: true, ..Config::tiny_llama() }, 31);
        let mut edited = w.clone();
        let mut r = rng(32);
        for name in ["layers.1.wk", "layers.2.w_up", "layers.0.bk"] {
            let t = edited.tensors.get_mut(name).ok_or("no such weight")?;
            t.data = random_vec(&mut r, t.data.len());
        }
        let mut gm = ok(GpuModel::new(gpu, &w))?;
        let old_wk = ok(gm.tensor("layers.1.wk"))?.clone();
        for name in ["layers.1.wk", "layers.2.w_up", "layers.0.bk"] {
            let t = &edited.tensors[name];
            ok(gm.set_tensor(name, ok(gpu.upload(&t.data, &t.shape))?))?;
        }
        if ok(gpu.download(&old_wk))? != w.tensors["layers.1.wk"].data {
            return Err("a held handle on the replaced weight changed".into());
        }
        let fresh = ok(GpuModel::new(gpu, &edited))?;
        let decode = |m: &GpuModel| -> Result<Vec<f32>, String> {
            let mut cache = ok(m.new_cache(1, 8))?;
            let mut last = vec![];
            for tok in [3u32, 14, 15] {
                let (l, _) = ok(m.forward(&ok(Batch::new(&[vec![tok]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                last = ok(gpu.download(&l))?;
            }
            Ok(last)
        };
        let seqs = [vec![3u32, 14, 15, 9]];
        if ok(gm.last_logits(&seqs))? != ok(fresh.last_logits(&seqs))? || decode(&gm)? != decode(&fresh)? {
            return Err("the edited model and one loaded with the edit disagree".into());
        }
        if decode(&gm)? == decode(&ok(GpuModel::new(gpu, &w))?)? {
            return Err("the edit changed nothing".into());
        }
        let saved = ok(gm.to_weights())?;
        for (name, t) in &edited.tensors {
            if saved.tensors[name].data != t.data {
                return Err(format!("'{name}' saved back differs"));
            }
        }
        Ok(())
    });
}

/// The RMS norms and the SwiGLU activation folded into the products that read them (the
/// default on hardware adapters for a few rows) give the logits of the separate kernels within
/// f32 rounding: decoded tokens (q/k/v with their norm, rotation and cache write one dispatch,
/// gate/up and the head one each with their norm, the down-projection one with the activation
/// and the residual) and a short prompt.
#[test]
fn norms_folded_into_products_give_the_same_logits() {
    // Counts dispatches too: a device of its own.
    for_each_fresh_gpu(true, |gpu| {
        for (name, w) in models() {
            let apart = {
                let mut m = ok(GpuModel::new(gpu, &w))?;
                m.set_fold_into_products(false);
                m
            };
            let mut folded = ok(GpuModel::new(gpu, &w))?;
            folded.set_fold_into_products(true);
            let run = |m: &GpuModel| -> Result<Vec<f32>, String> {
                let mut cache = ok(m.new_cache(1, 8))?;
                let mut out = vec![];
                for tok in [3u32, 14, 15, 9] {
                    let (l, _) = ok(m.forward(&ok(Batch::new(&[vec![tok]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                    out.extend(ok(gpu.download(&l))?);
                }
                out.extend(ok(m.last_logits(&[vec![5, 6, 7], vec![8, 9]]))?.concat());
                Ok(out)
            };
            let want: Vec<f64> = run(&apart)?.iter().map(|&x| x as f64).collect();
            compare(&format!("{name} with norms folded"), &run(&folded)?, &want, logit_tol(&want))?;
            // A decoded token's MLP keys asked for by a probe are still there (that layer then
            // keeps its activation apart).
            let keys = |m: &GpuModel| -> Result<Vec<f32>, String> {
                let mut cache = ok(m.new_cache(1, 4))?;
                ok(m.forward(&ok(Batch::new(&[vec![3]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                let probes = Probes { down_in: vec![Site { layer: 1, seq: 0, pos: 0 }], ..Default::default() };
                let (_, cap) = ok(m.forward(&ok(Batch::new(&[vec![4]]))?, &probes, LogitRows::All, Some(&mut cache)))?;
                Ok(cap.down_in.concat())
            };
            let want: Vec<f64> = keys(&apart)?.iter().map(|&x| x as f64).collect();
            if want.len() != w.config.ffn_hidden {
                return Err(format!("{name}: a decoded token's probe read {} keys, not {}", want.len(), w.config.ffn_hidden));
            }
            compare(&format!("{name}: a decoded token's keys with the activation folded"), &keys(&folded)?, &want, logit_tol(&want))?;
            // A Llama's decoded token: two norms, the rotation with the cache write and the
            // SwiGLU activation per layer and the final norm fold away.
            let per_token = |m: &GpuModel| -> Result<u64, String> {
                let mut cache = ok(m.new_cache(1, 4))?;
                ok(m.forward(&ok(Batch::new(&[vec![3]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                let before = gpu.runtime_stats();
                ok(m.forward(&ok(Batch::new(&[vec![4]]))?, &Probes::default(), LogitRows::All, Some(&mut cache)))?;
                Ok((gpu.runtime_stats() - before).dispatches)
            };
            let (a, f) = (per_token(&apart)?, per_token(&folded)?);
            // (With q/k/v biases — Qwen2 — the attention's norm, product and rotation stay
            // apart: the one-dispatch kernel adds no bias.)
            let per_layer = if w.config.qkv_bias { 2 } else { 4 };
            let saved = if w.config.arch == revive::model::Arch::Llama { per_layer * w.config.n_layers as u64 + 1 } else { 0 };
            if a - f != saved {
                return Err(format!("{name}: {a} dispatches per token apart, {f} folded (want {saved} fewer)"));
            }
        }
        Ok(())
    });
}

/// Batched scoring runs each distinct sequence once: pairs whose prompt and continuation (less
/// its last token) coincide share it, even where they split it differently. Every pair's
/// log-probabilities match the f64 reference, and each token's top prediction its argmax, in
/// passes of any size.
#[test]
fn score_many_shares_sequences_and_matches_the_reference() {
    use revive::model::batch::PassBudget;
    use revive::model::generate::{score_many_within, score_tokens_within};
    let w = random_weights(&Config::tiny_llama(), 41);
    let cpu = CpuModel::new(&w);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = vec![
        (vec![1, 2], vec![3]),
        (vec![1, 2], vec![4]),
        (vec![1], vec![2, 5]),
        (vec![1, 2, 3], vec![6, 7]),
        (vec![9], vec![8]),
        (vec![1, 2], vec![3]),
        (vec![7, 7, 7, 7, 7], vec![1, 2, 3]),
    ];
    let mut want_top: Vec<Vec<u32>> = vec![];
    let want: Vec<Vec<f64>> = pairs
        .iter()
        .map(|(p, c)| {
            let seq: Vec<u32> = p.iter().chain(c).copied().collect();
            let (logits, _) = cpu.forward(std::slice::from_ref(&seq), &Default::default());
            let rows = &logits[0][p.len() - 1..p.len() - 1 + c.len()];
            want_top.push(
                rows.iter()
                    .map(|z| {
                        let mut order: Vec<usize> = (0..z.len()).collect();
                        order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
                        // A near-tie would be decided by rounding: other inputs, then.
                        assert!(z[order[0]] - z[order[1]] > 1e-3, "a near-tie after {p:?}; pick other test inputs");
                        order[0] as u32
                    })
                    .collect(),
            );
            c.iter()
                .zip(rows)
                .map(|(&t, z)| {
                    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    z[t as usize] - m - z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                })
                .collect()
        })
        .collect();
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        for budget in [PassBudget { tokens: 1, logit_rows: 1 }, PassBudget { tokens: 8, logit_rows: 4 }, PassBudget { tokens: 4096, logit_rows: 1024 }] {
            let got = ok(score_tokens_within(&gm, &pairs, budget))?;
            let logprobs = ok(score_many_within(&gm, &pairs, budget))?;
            for (i, ((g, w), t)) in got.iter().zip(&want).zip(&want_top).enumerate() {
                let lp: Vec<f64> = g.iter().map(|s| s.logprob).collect();
                let top: Vec<u32> = g.iter().map(|s| s.top).collect();
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if lp.len() != w.len() || lp.iter().zip(w).any(|(a, b)| !((a - b).abs() <= 1e-4 * b.abs().max(1.0))) || lp != logprobs[i] {
                    return Err(format!("{budget:?}: pair {i} {:?}: {lp:?}, f64 reference {w:?}", pairs[i]));
                }
                if top != *t {
                    return Err(format!("{budget:?}: pair {i} {:?}: predicted {top:?}, the f64 reference's argmax {t:?}", pairs[i]));
                }
            }
        }
        Ok(())
    });
}
