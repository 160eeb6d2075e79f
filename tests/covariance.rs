//! C0 = E[k kᵀ] on every adapter, on tiny random models: against an f64 sum over the CPU
//! oracle's keys, batched against one-shot, and the disk cache: round trip, and damaged or
//! mismatched files rebuilt instead of trusted. Each test writes its own temporary directory
//! and passes it explicitly: tests run in parallel in one process, so REVIVE_CACHE is not set.

mod common;
use common::*;
use revive::cpu::model::CpuModel;
use revive::edit::cov_cache::{self, CacheKey, Outcome};
use revive::edit::covariance::{cached_second_moment, second_moment, Accumulate};
use revive::edit::moment::SecondMoment;
use revive::model::forward::GpuModel;
use revive::model::probe::{Probes, Site};
use revive::model::random::random_weights;
use revive::model::{Config, Weights};
use std::path::PathBuf;

fn seqs(vocab: u32, lens: &[usize], seed: u64) -> Vec<Vec<u32>> {
    let mut r = rng(seed);
    lens.iter().map(|&n| (0..n).map(|_| rand::Rng::random_range(&mut r, 0..vocab)).collect()).collect()
}

/// E[k kᵀ] in f64 over the oracle's keys of every token of `seqs` (cut to `max_tokens`).
fn oracle_c0(w: &Weights, seqs: &[Vec<u32>], layer: usize, max_tokens: usize) -> (Vec<f64>, usize) {
    let mut sites = vec![];
    let mut left = max_tokens;
    for (s, q) in seqs.iter().enumerate() {
        for pos in 0..q.len().min(left) {
            sites.push(Site { layer, seq: s, pos });
        }
        left -= q.len().min(left);
    }
    let (_, cap) = CpuModel::new(w).forward(seqs, &Probes { down_in: sites, ..Default::default() });
    let f = w.config.ffn_hidden;
    let mut c = vec![0.0f64; f * f];
    for k in &cap.down_in {
        for i in 0..f {
            for j in 0..f {
                c[i * f + j] += k[i] as f64 * k[j] as f64;
            }
        }
    }
    let n = cap.down_in.len();
    c.iter_mut().for_each(|v| *v /= n as f64);
    (c, n)
}

fn tol(want: &[f64]) -> Tolerance {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Tolerance::new(1e-4 * scale, 1e-4, 1e-4)
}

#[test]
fn gpu_c0_matches_an_f64_sum_over_the_oracle_keys() {
    let models = [("llama", random_weights(&Config::tiny_llama(), 21)), ("gpt2", random_weights(&Config::tiny_gpt2(), 22))];
    for_each_gpu(|gpu| {
        for (name, w) in &models {
            let gm = ok(GpuModel::new(gpu, w))?;
            // Unequal lengths: the batches pad, and padding keys must not count.
            let s = seqs(w.config.vocab_size as u32, &[24, 24, 17, 24, 9, 24], 3);
            for layer in [0, w.config.n_layers - 1] {
                let budget = 100; // cuts the fifth sequence
                let (want, n) = oracle_c0(w, &s, layer, budget);
                let opts = Accumulate { batch_tokens: 40, fold_every: 2, progress: false };
                let got = ok(second_moment(&gm, &s, layer, budget, &opts))?;
                if got.tokens != n || got.layer != layer || got.dim != w.config.ffn_hidden {
                    return Err(format!("{name} layer {layer}: {} tokens, layer {}, dim {}; expected {n}, {layer}, {}", got.tokens, got.layer, got.dim, w.config.ffn_hidden));
                }
                compare(&format!("{name} C0 layer {layer}"), &got.c0, &want, tol(&want))?;
            }
        }
        Ok(())
    });
}

#[test]
fn batched_and_one_shot_agree() {
    let w = random_weights(&Config::tiny_llama(), 31);
    let s = seqs(97, &[32, 32, 32, 32, 32, 32, 32, 20], 4);
    for_each_gpu(|gpu| {
        let gm = ok(GpuModel::new(gpu, &w))?;
        let one = ok(second_moment(&gm, &s, 1, usize::MAX, &Accumulate { batch_tokens: usize::MAX, fold_every: 1, progress: false }))?;
        let many = ok(second_moment(&gm, &s, 1, usize::MAX, &Accumulate { batch_tokens: 1, fold_every: 3, progress: false }))?;
        if one.tokens != 244 || many.tokens != 244 {
            return Err(format!("token counts {} and {}, expected 244", one.tokens, many.tokens));
        }
        let d = many.rel_diff(&one);
        if d.is_nan() || d >= 1e-5 {
            return Err(format!("batched vs one-shot: relative Frobenius difference {d:e}"));
        }
        Ok(())
    });
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("revive-cov-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TempDir(d)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_cache_round_trips_and_rebuilds_damaged_or_foreign_files() {
    let w = random_weights(&Config::tiny_llama(), 41);
    let s = seqs(97, &[16, 16, 16], 5);
    let opts = Accumulate { batch_tokens: 32, fold_every: 1, progress: false };
    for_each_gpu(|gpu| {
        let dir = TempDir::new(&gpu.label().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        let gm = ok(GpuModel::new(gpu, &w))?;
        let layer = 1;
        let lookup = || ok(cached_second_moment(&dir.0, &gm, &s, layer, 40, &opts));
        let (first, o) = lookup()?;
        if o != Outcome::Computed || first.tokens != 40 {
            return Err(format!("first lookup: {o:?}, {} tokens", first.tokens));
        }
        let (again, o) = lookup()?;
        if o != Outcome::Reused || again != first {
            return Err(format!("second lookup: {o:?}, equal to the first: {}", again == first));
        }
        let key = CacheKey {
            model_hash: ok(cov_cache::model_hash(&gm, layer))?,
            layer,
            tokens: 40,
            corpus_hash: cov_cache::tokens_hash(&s, 40),
        };
        let path = dir.0.join(key.file_name());
        if !path.is_file() {
            return Err(format!("{} is not where the key says", path.display()));
        }
        let good = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x10;
        let mut header_flip = good.clone();
        header_flip[20] ^= 0x01;
        let other = |k: CacheKey, m: &SecondMoment| -> Vec<u8> {
            ok(cov_cache::save(&path, &k, m)).unwrap();
            std::fs::read(&path).unwrap()
        };
        let narrow = SecondMoment { layer, tokens: 40, dim: 3, c0: vec![1.0; 9] };
        let damaged: Vec<(&str, Vec<u8>, &str)> = vec![
            ("truncated", good[..good.len() - 7].to_vec(), "safetensors"),
            ("bit flip in the data", flipped, "sha256.c0"),
            ("bit flip in the header", header_flip, ""),
            ("empty", vec![], "safetensors"),
            ("wrong shape", other(key.clone(), &narrow), "expected F32"),
            ("another layer", other(CacheKey { layer: 0, ..key.clone() }, &first), "'layer'"),
            ("another token count", other(CacheKey { tokens: 48, ..key.clone() }, &first), "'tokens'"),
            ("another model", other(CacheKey { model_hash: "0".repeat(64), ..key.clone() }, &first), "'model_hash'"),
            ("another corpus", other(CacheKey { corpus_hash: "f".repeat(64), ..key.clone() }, &first), "'corpus_hash'"),
        ];
        for (what, bytes, reason) in damaged {
            std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
            let (m, o) = lookup()?;
            match &o {
                Outcome::Rebuilt(why) if why.contains(reason) && why.contains(&path.display().to_string()) => {}
                _ => return Err(format!("{what}: {o:?}, expected a rebuild naming the file and '{reason}'")),
            }
            if m != first {
                return Err(format!("{what}: the rebuilt C0 differs from the first"));
            }
            let (_, o) = lookup()?;
            if o != Outcome::Reused {
                return Err(format!("{what}: after the rebuild, {o:?}"));
            }
        }
        Ok(())
    });
}

#[test]
fn the_model_hash_follows_the_weights_the_keys_depend_on() {
    let w = random_weights(&Config::tiny_llama(), 51);
    let changed = |name: &str| {
        let mut v = w.clone();
        v.tensors.get_mut(name).unwrap().data[0] += 0.5;
        v
    };
    let gpu = &gpus()[0];
    let hash = |w: &Weights, layer| cov_cache::model_hash(&GpuModel::new(gpu, w).unwrap(), layer).unwrap();
    let base = hash(&w, 1);
    assert_eq!(base, hash(&w, 1), "stable");
    assert_ne!(base, hash(&w, 0), "per layer");
    assert_eq!(base, hash(&changed("layers.1.w_down"), 1), "the layer's own down-projection does not change its keys");
    assert_eq!(base, hash(&changed("layers.2.w_up"), 1), "layers above do not change its keys");
    assert_ne!(base, hash(&changed("layers.0.w_down"), 1), "an edit below does");
    assert_ne!(base, hash(&changed("layers.1.w_up"), 1), "the layer's own up-projection does");
    assert_ne!(base, hash(&changed("embed"), 1), "the embeddings do");
}

/// The hashes of several layers taken together (each tensor read once where the layers share
/// it) equal each layer's hash taken alone by the plain recipe written out here — the config,
/// then every name the layer's keys depend on in sorted order with its shape and bytes — so
/// C0 files cached before stay valid. Twelve layers, so that "layers.10" sorts between
/// "layers.1" and "layers.2"; layers in any order, repeated.
#[test]
fn the_model_hashes_of_several_layers_equal_each_layers_own() {
    use sha2::{Digest, Sha256};
    let mut c = Config::tiny_llama();
    c.n_layers = 12;
    let w = random_weights(&c, 52);
    let gpu = &gpus()[0];
    let gm = GpuModel::new(gpu, &w).unwrap();
    let plain = |layer: usize| {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&w.config).unwrap());
        let own = [format!("layers.{layer}.w_down"), format!("layers.{layer}.b_down")];
        let mut names: Vec<&String> = w
            .tensors
            .keys()
            .filter(|n| match n.strip_prefix("layers.").and_then(|r| r.split_once('.')) {
                Some((i, _)) => i.parse::<usize>().unwrap() <= layer && !own.contains(n),
                None => *n == "embed" || *n == "pos_embed",
            })
            .collect();
        names.sort();
        for name in names {
            let t = &w.tensors[name];
            h.update(name.as_bytes());
            h.update(format!("{:?}", t.shape).as_bytes());
            h.update(bytemuck::cast_slice::<f32, u8>(&t.data));
        }
        format!("{:x}", h.finalize())
    };
    for layers in [vec![3, 4, 5, 6, 7], vec![11, 1, 10, 2], vec![0], vec![9, 9, 0]] {
        let want: Vec<String> = layers.iter().map(|&l| plain(l)).collect();
        assert_eq!(cov_cache::model_hashes(&gm, &layers).unwrap(), want, "layers {layers:?}");
    }
    assert_eq!(cov_cache::model_hash(&gm, 10).unwrap(), plain(10));
}
