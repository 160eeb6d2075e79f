//! The f64 oracle of the whole model (Llama and GPT-2 families): plain loops in the spirit of
//! llm.c's train_gpt2.c. Slow and clear; the GPU forward is tested against it.

use crate::model::probe::{Captured, Probes, Site};
use super::activation::{gelu_scalar as gelu, silu};
use super::norm::{layer_norm_row as layer_norm, rms_norm_row as rms_norm};
use super::rope::rope_head;
use crate::model::{Arch, Config, Weights};
use std::collections::HashMap;

pub struct CpuModel {
    pub config: Config,
    w: HashMap<String, Vec<f64>>,
}

/// y[o] = Σ_i W[o, i] x[i] (+ b[o]); W is [out, in].
fn linear(w: &[f64], b: Option<&[f64]>, x: &[f64], out: usize) -> Vec<f64> {
    let n = x.len();
    (0..out)
        .map(|o| {
            let row = &w[o * n..(o + 1) * n];
            row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + b.map_or(0.0, |b| b[o])
        })
        .collect()
}

impl CpuModel {
    pub fn new(weights: &Weights) -> Self {
        let w = weights.tensors.iter().map(|(k, t)| (k.clone(), t.data.iter().map(|&v| v as f64).collect())).collect();
        CpuModel { config: weights.config.clone(), w }
    }

    /// W ← W + Δ for one weight (row-major, the weight's own layout); the edit references
    /// update the oracle with it.
    pub fn add_to(&mut self, name: &str, delta: &[f64]) {
        let w = self.w.get_mut(name).unwrap_or_else(|| panic!("the CPU model has no weight '{name}'"));
        assert_eq!(w.len(), delta.len(), "Δ of {name} has the wrong size");
        w.iter_mut().zip(delta).for_each(|(a, b)| *a += b);
    }

    fn t(&self, name: &str) -> &[f64] {
        &self.w[name]
    }

    fn l(&self, i: usize, name: &str) -> &[f64] {
        &self.w[&format!("layers.{i}.{name}")]
    }

    /// Logits [T, V] for each sequence of the batch, plus what `probes` asked for.
    pub fn forward(&self, batch: &[Vec<u32>], probes: &Probes) -> (Vec<Vec<Vec<f64>>>, Captured) {
        let mut captured = Captured {
            residual: vec![vec![]; probes.residual.len()],
            down_in: vec![vec![]; probes.down_in.len()],
            heads: vec![vec![]; probes.heads.len()],
        };
        let logits = batch
            .iter()
            .enumerate()
            .map(|(s, tokens)| self.forward_one(s, tokens, probes, &mut captured))
            .collect();
        (logits, captured)
    }

    fn forward_one(&self, seq: usize, tokens: &[u32], probes: &Probes, cap: &mut Captured) -> Vec<Vec<f64>> {
        let c = &self.config;
        let (d, hd) = (c.hidden, c.head_dim);
        let eps = c.norm_eps as f64;
        let gpt2 = c.arch == Arch::Gpt2;
        let rope = c.rope();
        let norm = |x: &[f64], name: &str| -> Vec<f64> {
            if gpt2 {
                layer_norm(x, self.t(&format!("{name}.weight")), self.t(&format!("{name}.bias")), eps)
            } else {
                rms_norm(x, self.t(&format!("{name}.weight")), eps)
            }
        };
        // A pass started at a layer (Probes::start_at) from its rows, else from the embedding.
        let (first_layer, started) = match &probes.start_at {
            Some((layer, rows)) => (*layer, Some(rows[seq].chunks(d).map(|r| r.iter().map(|&v| v as f64).collect()).collect::<Vec<Vec<f64>>>())),
            None => (0, None),
        };
        let embedded = || -> Vec<Vec<f64>> {
            tokens
                .iter()
                .enumerate()
                .map(|(p, &tok)| {
                    let mut e = self.t("embed")[tok as usize * d..(tok as usize + 1) * d].to_vec();
                    if gpt2 {
                        let pe = &self.t("pos_embed")[p * d..(p + 1) * d];
                        e.iter_mut().zip(pe).for_each(|(a, b)| *a += b);
                    }
                    for ((s, at), v) in &probes.add_to_embedding {
                        if (*s, *at) == (seq, p) {
                            e.iter_mut().zip(v).for_each(|(a, b)| *a += *b as f64);
                        }
                    }
                    e
                })
                .collect()
        };
        let mut x = started.unwrap_or_else(embedded);
        let bias = |i: usize, name: &str| if c.has_bias(name) { Some(self.l(i, name)) } else { None };
        for i in first_layer..c.n_layers {
            let ln = format!("layers.{i}.attn_norm");
            let mut qs = vec![];
            let mut ks = vec![];
            let mut vs = vec![];
            for (p, xt) in x.iter().enumerate() {
                let h = norm(xt, &ln);
                let mut q = linear(self.l(i, "wq"), bias(i, "bq"), &h, c.n_heads * hd);
                let mut k = linear(self.l(i, "wk"), bias(i, "bk"), &h, c.n_kv_heads * hd);
                if !gpt2 {
                    q.chunks_mut(hd).for_each(|head| rope_head(head, p, &rope));
                    k.chunks_mut(hd).for_each(|head| rope_head(head, p, &rope));
                }
                qs.push(q);
                ks.push(k);
                vs.push(linear(self.l(i, "wv"), bias(i, "bv"), &h, c.n_kv_heads * hd));
            }
            let scale = 1.0 / (hd as f64).sqrt();
            for t in 0..x.len() {
                let mut o = vec![0.0; c.n_heads * hd];
                for h in 0..c.n_heads {
                    let kvh = h / c.group_size();
                    let q = &qs[t][h * hd..(h + 1) * hd];
                    let scores: Vec<f64> = (0..=t)
                        .map(|j| q.iter().zip(&ks[j][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() * scale)
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for dd in 0..hd {
                            o[h * hd + dd] += ej / z * vs[j][kvh * hd + dd];
                        }
                    }
                }
                let here = |site: &Site| (site.layer, site.seq, site.pos) == (i, seq, t);
                for (k, site) in probes.heads.iter().enumerate() {
                    if here(site) {
                        cap.heads[k] = o.iter().map(|&v| v as f32).collect();
                    }
                }
                if let Some((_, set)) = probes.set_heads.iter().find(|(site, _)| here(site)) {
                    assert_eq!(set.len(), o.len(), "heads' outputs set at layer {i}, token {t}: of the wrong width");
                    o = set.iter().map(|&v| v as f64).collect();
                }
                let proj = linear(self.l(i, "wo"), bias(i, "bo"), &o, d);
                x[t].iter_mut().zip(&proj).for_each(|(a, b)| *a += b);
            }
            let mn = format!("layers.{i}.mlp_norm");
            for (p, xt) in x.iter_mut().enumerate() {
                let h = norm(xt, &mn);
                let up = linear(self.l(i, "w_up"), bias(i, "b_up"), &h, c.ffn_hidden);
                let mut key: Vec<f64> = if gpt2 {
                    up.iter().map(|&u| gelu(u)).collect()
                } else {
                    let gate = linear(self.l(i, "w_gate"), None, &h, c.ffn_hidden);
                    gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect()
                };
                for (k, site) in probes.down_in.iter().enumerate() {
                    if (site.layer, site.seq, site.pos) == (i, seq, p) {
                        cap.down_in[k] = key.iter().map(|&v| v as f32).collect();
                    }
                }
                if let Some((_, k)) = probes.set_down_in.iter().find(|(site, _)| (site.layer, site.seq, site.pos) == (i, seq, p)) {
                    assert_eq!(k.len(), key.len(), "a key set at layer {i}, token {p}: of the wrong width");
                    key = k.iter().map(|&v| v as f64).collect();
                }
                let down = linear(self.l(i, "w_down"), bias(i, "b_down"), &key, d);
                xt.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
                for (site, v) in &probes.add {
                    if (site.layer, site.seq, site.pos) == (i, seq, p) {
                        xt.iter_mut().zip(v).for_each(|(a, b)| *a += *b as f64);
                    }
                }
                for (k, site) in probes.residual.iter().enumerate() {
                    if (site.layer, site.seq, site.pos) == (i, seq, p) {
                        cap.residual[k] = xt.iter().map(|&v| v as f32).collect();
                    }
                }
            }
        }
        let head = if c.tied_embeddings { self.t("embed") } else { self.t("lm_head") };
        x.iter().map(|xt| linear(head, None, &norm(xt, "final_norm"), c.vocab_size)).collect()
    }
}

/// The oracle's side of causal tracing: the same algorithm over the f64 forward pass.
impl crate::eval::trace::TraceRunner for CpuModel {
    fn n_layers(&self) -> usize {
        self.config.n_layers
    }

    fn hidden(&self) -> usize {
        self.config.hidden
    }

    fn run(&self, seqs: &[Vec<u32>], probes: &Probes, target: u32) -> crate::error::Result<(Vec<f64>, Captured)> {
        let (logits, cap) = self.forward(seqs, probes);
        let p = logits.iter().map(|rows| super::loss::log_softmax_row(rows.last().expect("a sequence has tokens"))[target as usize].exp()).collect();
        Ok((p, cap))
    }
}
