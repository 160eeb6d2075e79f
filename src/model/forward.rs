//! The forward pass on the GPU, both families: embedding gather, RMSNorm / LayerNorm, RoPE,
//! causal grouped-query attention through a KV cache, SwiGLU / GELU MLP, tied or untied
//! unembedding. A batch of prompts of different lengths is right-padded to the longest: with
//! causal attention, real tokens never see the padding after them, so no mask is needed.

use super::batch::{Batch, PassBudget};
use super::config::{Arch, Config, Rope};
use super::probe::{Captured, Probes, Site};
use super::weights::{HostTensor, Weights};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::gather::{self, gather_rows};
use crate::ops::{activation, attention, elementwise, matmul, norm, rope, At};
use super::names::Name;
use std::collections::HashMap;

/// The model's tensors by name, hashed with foldhash: a lookup runs for every dispatch.
type WeightMap = HashMap<String, Tensor, foldhash::fast::RandomState>;

/// Keys and values of every layer for a batch: [B, Hkv, capacity, D] each.
pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    /// Positions filled so far: the next forward starts at this position.
    pub len: usize,
    pub capacity: usize,
    pub batch: usize,
}

/// The tokens of a decode step: from the host, or chosen by a kernel and left on the GPU.
enum StepTokens<'a> {
    Host(&'a [u32]),
    /// f32 indices `stride` apart (`row_top_k`'s index plane).
    Chosen { index: &'a Tensor, stride: usize },
}

pub struct GpuModel {
    pub config: Config,
    gpu: Gpu,
    w: WeightMap,
    /// Per layer (Llama): the projections that read the same input, stacked so that one
    /// product computes them; `w` holds views into these under the usual names.
    stacks: Vec<LayerStacks>,
    /// For a few rows (a decoded token), RMS norms and SwiGLU's activation fold into the
    /// products that read them (`norm::rms_norm_matvec`, `activation::silu_mul_matvec`): on
    /// GPUs, where each dispatch has a fixed cost; not on software adapters, whose fastest
    /// decode product is another kernel (the block kernel).
    fold_into_products: bool,
    /// The config's RoPE frequencies, worked out once (scaling included).
    rope: Rope,
}

/// Weights stacked by rows, each part a view under its own name in `GpuModel::w`.
struct Stack {
    tensor: Tensor,
    /// (name, first element, shape) of each part.
    parts: Vec<(String, usize, Vec<usize>)>,
}

struct LayerStacks {
    /// wq, wk, wv: one product gives a decoded token's queries, keys and values.
    qkv: Stack,
    /// w_gate, w_up: one product gives both halves of SwiGLU's input.
    gate_up: Stack,
    /// bq, bk, bv stacked as the product's rows are (Qwen2); the one product adds them.
    qkv_bias: Option<Stack>,
}

impl Stack {
    /// Uploads the named weights stacked by rows (matrices that share their column count, or
    /// vectors — biases — end to end) and puts a view of each into `w`.
    fn upload(gpu: &Gpu, weights: &Weights, names: Vec<String>, w: &mut WeightMap) -> Result<Stack> {
        let model_err = |detail: String| Error::Model { file: "model".into(), detail };
        let mut parts = vec![];
        let mut data = vec![];
        // Columns of the matrices; None for vectors.
        let mut cols: Option<Option<usize>> = None;
        for name in names {
            let t = weights.tensors.get(&name).ok_or_else(|| model_err(format!("no tensor '{name}'")))?;
            let t_cols = match t.shape.len() {
                1 => None,
                2 => Some(t.shape[1]),
                _ => return Err(model_err(format!("'{name}' is {:?}; only matrices and vectors stack", t.shape))),
            };
            if cols.is_some_and(|c| c != t_cols) {
                return Err(model_err(format!("'{name}' is {:?}; the projections of one input must share their columns", t.shape)));
            }
            cols = Some(t_cols);
            parts.push((name, data.len(), t.shape.clone()));
            data.extend_from_slice(&t.data);
        }
        let shape = match cols.flatten() {
            Some(c) => vec![data.len() / c.max(1), c],
            None => vec![data.len()],
        };
        let stack = Stack { tensor: gpu.upload(&data, &shape)?, parts };
        stack.publish(w)?;
        Ok(stack)
    }

    /// Puts a view of each part into `w` under its name.
    fn publish(&self, w: &mut WeightMap) -> Result<()> {
        for (name, first, shape) in &self.parts {
            w.insert(name.clone(), self.tensor.view(*first, shape)?);
        }
        Ok(())
    }

    /// Replaces one part: into a copy of the stack, so that a tensor someone still holds (the
    /// old stack or one of its views) keeps the values it had.
    fn replace(&mut self, gpu: &Gpu, name: &str, t: &Tensor, w: &mut WeightMap) -> Result<bool> {
        let Some((_, first, shape)) = self.parts.iter().find(|(n, _, _)| n == name) else { return Ok(false) };
        let fresh = gpu.empty(self.tensor.shape())?;
        gpu.copy_into(&self.tensor, &fresh)?;
        gpu.copy_into(t, &fresh.view(*first, shape)?)?;
        self.tensor = fresh;
        self.publish(w)?;
        Ok(true)
    }
}

/// What a probed pass asks of one layer's attention heads (`Probes::heads`, `set_heads`), and
/// where their reads go.
pub(crate) struct HeadsProbe<'p> {
    batch: &'p Batch,
    probes: &'p Probes,
    caps: &'p mut Vec<(Vec<usize>, Tensor)>,
}

/// What one block hands on: its output, and when asked its MLP keys and its tape.
pub(crate) struct BlockOut {
    pub x: Tensor,
    pub key: Option<Tensor>,
    pub tape: Option<BlockTape>,
}

impl BlockOut {
    /// The keys a block was asked to keep.
    pub(crate) fn kept_key(&mut self) -> Result<Tensor> {
        self.key.take().ok_or_else(|| Error::shape("forward", "a block's keys were read but not kept"))
    }
}

/// What a block must keep beyond its output: the MLP keys (probes, key statistics) or the
/// whole tape of a backward pass (which includes the keys). Kept values rule out the fused
/// kernels that never store them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    Output,
    Key,
    Tape,
}

/// The activations of one block that its backward pass reads (the KV cache holds the rest).
pub(crate) struct BlockTape {
    pub x_in: Tensor,
    /// Queries after RoPE: [B, T, Hq, D].
    pub q: Tensor,
    pub x_mid: Tensor,
    pub mlp: MlpTape,
}

/// The MLP activation's inputs as the forward pass computed them.
pub(crate) enum MlpTape {
    /// SwiGLU's gate and up projections from two products (no stacked weights).
    Apart { gate: Tensor, up: Tensor },
    /// SwiGLU's gate and up as the two halves of each row of one product with the stacked
    /// weights: the backward pass goes back through that one product too.
    Stacked(Tensor),
    /// GELU's input (GPT-2).
    Gelu(Tensor),
}

/// Which rows of [B·T] get logits.
pub enum LogitRows {
    All,
    Rows(Vec<usize>),
}

impl GpuModel {
    pub fn new(gpu: &Gpu, weights: &Weights) -> Result<GpuModel> {
        let c = &weights.config;
        let layer_names = |i: usize, parts: &[&str]| -> Vec<String> { parts.iter().map(|p| format!("layers.{i}.{p}")).collect() };
        let mut w = WeightMap::default();
        let mut stacks = vec![];
        // A stack is one buffer: where the largest would not fit one, the weights stay apart
        // (and with REVIVE_UNSTACKED=1, to measure what the stacked products buy).
        let largest_stack = 4 * c.hidden.max(1) as u64 * ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim).max(2 * c.ffn_hidden) as u64;
        if c.arch == Arch::Llama && largest_stack <= gpu.limits().max_buffer_size && !crate::gpu::env_flag("REVIVE_UNSTACKED") {
            for i in 0..c.n_layers {
                let qkv = Stack::upload(gpu, weights, layer_names(i, &["wq", "wk", "wv"]), &mut w)?;
                let gate_up = Stack::upload(gpu, weights, layer_names(i, &["w_gate", "w_up"]), &mut w)?;
                let qkv_bias = c.qkv_bias.then(|| Stack::upload(gpu, weights, layer_names(i, &["bq", "bk", "bv"]), &mut w)).transpose()?;
                stacks.push(LayerStacks { qkv, gate_up, qkv_bias });
            }
        }
        for (name, t) in &weights.tensors {
            if !w.contains_key(name) {
                w.insert(name.clone(), gpu.upload(&t.data, &t.shape)?);
            }
        }
        // A measurement that fails (no memory for the largest shapes, a lost device) costs
        // speed, not the run: the fixed rule serves whatever was not measured.
        if let Err(e) = crate::model::tuning::tune_on_first_use(gpu, c) {
            log::warn!("measuring the matmul kernels on {} failed ({e}); the fixed rule applies where nothing was measured", gpu.label());
        }
        Ok(GpuModel { config: c.clone(), gpu: gpu.clone(), w, stacks, fold_into_products: fold_by_default(gpu), rope: c.rope() })
    }

    /// RoPE as this model applies it (its config's, scaling included).
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Whether, for a few rows (a decoded token), RMS norms and the SwiGLU activation fold into
    /// the products that read them (`norm::rms_norm_matvec`, `activation::silu_mul_matvec`):
    /// by default on hardware adapters only, where a dispatch costs more than its arithmetic;
    /// the result differs only by f32 rounding.
    pub fn set_fold_into_products(&mut self, on: bool) {
        self.fold_into_products = on;
    }

    /// Whether a norm or activation folds into the product that reads it for `rows` rows (see
    /// the field `fold_into_products`).
    fn folds(&self, rows: usize) -> bool {
        self.fold_into_products && self.config.arch == Arch::Llama && rows <= matmul::DOT_MAX_ROWS
    }

    /// rms_norm(x) · Wᵀ in one dispatch where `fold_into_products` allows it for x's rows,
    /// else the norm and the product apart.
    fn norm_linear(&self, x: &Tensor, prefix: &str, w: &Tensor) -> Result<Tensor> {
        let rows = x.numel() / self.config.hidden.max(1);
        if self.folds(rows) {
            let g = self.norm_weight(prefix)?;
            return norm::rms_norm_matvec(&self.gpu, &x.reshape(&[rows, self.config.hidden])?, g, w, self.config.norm_eps);
        }
        self.linear(&self.norm(x, prefix)?, w, None)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// From here on, q/k/v and gate/up as separate products, as a model whose stacks would not
    /// fit one buffer runs them: to compare the two ways (the weights stay where they are).
    pub fn unstack(&mut self) {
        self.stacks.clear();
    }

    /// Layer i's stacked weights, q/k/v then gate/up (`[(Hq + 2·Hkv)·D, d]` and `[2·F, d]`),
    /// where the model keeps them stacked.
    pub(crate) fn stacked(&self, i: usize) -> Option<(&Tensor, &Tensor)> {
        self.stacks.get(i).map(|s| (&s.qkv.tensor, &s.gate_up.tensor))
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.w.get(name).ok_or_else(|| Error::Model { file: "model".into(), detail: format!("no tensor '{name}'") })
    }

    /// Replaces a weight (an edit writes its new down-projection here).
    pub fn set_tensor(&mut self, name: &str, t: Tensor) -> Result<()> {
        let old = self.tensor(name)?;
        if old.shape() != t.shape() {
            return Err(Error::shape("set_tensor", format!("'{name}' is {:?}, the new value {:?}", old.shape(), t.shape())));
        }
        for layer in &mut self.stacks {
            if layer.qkv.replace(&self.gpu, name, &t, &mut self.w)? || layer.gate_up.replace(&self.gpu, name, &t, &mut self.w)? {
                return Ok(());
            }
            if let Some(bias) = &mut layer.qkv_bias {
                if bias.replace(&self.gpu, name, &t, &mut self.w)? {
                    return Ok(());
                }
            }
        }
        self.w.insert(name.to_string(), t);
        Ok(())
    }

    /// All weights back on the host, to save.
    pub fn to_weights(&self) -> Result<Weights> {
        let mut tensors = std::collections::BTreeMap::new();
        for (name, t) in &self.w {
            tensors.insert(name.clone(), HostTensor::new(t.shape().to_vec(), self.gpu.download(t)?));
        }
        Ok(Weights { config: self.config.clone(), tensors })
    }

    /// The unembedding matrix [vocab, d]: the embedding when tied.
    pub fn head(&self) -> Result<&Tensor> {
        if self.config.tied_embeddings { self.tensor("embed") } else { self.tensor("lm_head") }
    }

    pub fn new_cache(&self, batch: usize, capacity: usize) -> Result<KvCache> {
        let c = &self.config;
        let shape = [batch, c.n_kv_heads, capacity, c.head_dim];
        let mut k = vec![];
        let mut v = vec![];
        for _ in 0..c.n_layers {
            k.push(self.gpu.empty(&shape)?);
            v.push(self.gpu.empty(&shape)?);
        }
        Ok(KvCache { k, v, len: 0, capacity, batch })
    }

    /// The scale of the norm named `prefix` ("layers.3.attn_norm", "final_norm").
    pub(crate) fn norm_weight(&self, prefix: &str) -> Result<&Tensor> {
        self.tensor(&Name::new(format_args!("{prefix}.weight")))
    }

    pub(crate) fn l(&self, i: usize, name: &str) -> Result<&Tensor> {
        self.tensor(&Name::new(format_args!("layers.{i}.{name}")))
    }

    /// x · Wᵀ (+ b): every canonical matrix is [out, in].
    pub fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = matmul::gemm(&self.gpu, x, w, None, matmul::Gemm { trans_b: true, ..Default::default() })?;
        match b {
            Some(b) => activation::add_bias(&self.gpu, &y, b),
            None => Ok(y),
        }
    }

    /// x + h · Wᵀ (+ b), the residual stream plus a block's output. Without a bias the product
    /// accumulates into x's buffer (the matmul's beta = 1) — or, where something else holds x
    /// (a tape, a probe), into a copy of it, a buffer copy rather than a dispatch: one dispatch
    /// instead of a matmul and an add, with the same bits, since both round x + (h · Wᵀ) once.
    /// Only where h and W fit one binding each: the matmul then never splits K, which would add
    /// x to partial sums.
    pub fn residual_linear(&self, x: Tensor, h: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let max = Tensor::max_binding_elems(&self.gpu);
        if b.is_none() && h.numel() <= max && w.numel() <= max {
            let acc = if x.is_unique() {
                x
            } else {
                let copy = self.gpu.empty(x.shape())?;
                self.gpu.copy_into(&x, &copy)?;
                copy
            };
            return matmul::gemm(&self.gpu, h, w, Some(&acc), matmul::Gemm { trans_b: true, beta: 1.0, ..Default::default() });
        }
        elementwise::add(&self.gpu, &x, &self.linear(h, w, b)?)
    }

    pub(crate) fn norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let eps = self.config.norm_eps;
        let w = self.norm_weight(prefix)?;
        match self.config.arch {
            Arch::Llama => norm::rms_norm(&self.gpu, x, w, eps),
            Arch::Gpt2 => norm::layer_norm(&self.gpu, x, w, self.tensor(&Name::new(format_args!("{prefix}.bias")))?, eps),
        }
    }

    /// Runs the batch from position `cache.len` (0 without a cache) and returns logits for
    /// `rows` ([rows, V]) plus what the probes asked for. With a cache, its length advances by T.
    pub fn forward(&self, batch: &Batch, probes: &Probes, rows: LogitRows, cache: Option<&mut KvCache>) -> Result<(Tensor, Captured)> {
        let c = &self.config;
        let gpu = &self.gpu;
        let (b, t) = (batch.b(), batch.t);
        // Before any allocation: a cache for a prompt past the context can be gigabytes.
        let pos0 = cache.as_ref().map_or(0, |c| c.len);
        if pos0 + t > c.max_seq_len {
            return Err(Error::shape("forward", format!("{} positions exceed the model's context of {}", pos0 + t, c.max_seq_len)));
        }
        let mut own_cache;
        let cache = match cache {
            Some(cache) => {
                if cache.batch != b || cache.len + t > cache.capacity {
                    return Err(Error::shape(
                        "forward",
                        format!("cache for {} sequences with {}/{} positions used cannot take {b} x {t}", cache.batch, cache.len, cache.capacity),
                    ));
                }
                cache
            }
            None => {
                own_cache = self.new_cache(b, t)?;
                &mut own_cache
            }
        };
        for site in probes.sites() {
            check_site(c, batch, site)?;
        }
        check_ids(c, &batch.ids)?;
        for ((seq, pos), _) in &probes.add_to_embedding {
            check_site(c, batch, &Site { layer: 0, seq: *seq, pos: *pos })?;
        }
        let first_layer = check_start(c, batch, probes, pos0)?;
        // A state put in place twice at one site has no one meaning (the GPU would add both
        // differences).
        for (what, sets) in [("set_down_in", &probes.set_down_in), ("set_heads", &probes.set_heads)] {
            let mut seen = std::collections::HashSet::new();
            if let Some((site, _)) = sets.iter().find(|(s, _)| !seen.insert((s.layer, s.seq, s.pos))) {
                return Err(Error::shape("forward", format!("{what} puts two states at {site:?}")));
            }
        }
        let mut x = match &probes.start_at {
            Some((_, rows)) => {
                let d = c.hidden;
                let mut host = vec![0.0f32; b * t * d];
                for (s, seq) in rows.iter().enumerate() {
                    for (p, row) in seq.chunks(d).enumerate() {
                        let r = batch.row(s, p);
                        host[r * d..(r + 1) * d].copy_from_slice(row);
                    }
                }
                gpu.upload(&host, &[b * t, d])?
            }
            None => {
                let x = self.embed(batch, pos0)?;
                self.add_at_rows(x, batch, probes.add_to_embedding.iter().map(|((s, p), v)| (*s, *p, v.as_slice())))?
            }
        };
        let mut residual_caps = vec![];
        let mut down_caps = vec![];
        let mut heads_caps = vec![];
        for i in first_layer..c.n_layers {
            let sets: Vec<&(Site, Vec<f32>)> = probes.set_down_in.iter().filter(|(s, _)| s.layer == i).collect();
            let keep = if probes.down_in.iter().any(|s| s.layer == i) || !sets.is_empty() { Keep::Key } else { Keep::Output };
            let probes_heads = probes.heads.iter().chain(probes.set_heads.iter().map(|(s, _)| s)).any(|s| s.layer == i);
            let heads = probes_heads.then_some(HeadsProbe { batch, probes, caps: &mut heads_caps });
            let out = self.block_at(i, x, cache, At::From(pos0), b, t, keep, heads)?;
            x = out.x;
            if let Some(key) = &out.key {
                capture(gpu, key, batch, &probes.down_in, i, &mut down_caps)?;
                if !sets.is_empty() {
                    x = self.set_keys(x, key, batch, i, &sets)?;
                }
            }
            x = self.add_at_rows(x, batch, probes.add.iter().filter(|(s, _)| s.layer == i).map(|(s, v)| (s.seq, s.pos, v.as_slice())))?;
            capture(gpu, &x, batch, &probes.residual, i, &mut residual_caps)?;
        }
        cache.len += t;
        let x = match rows {
            LogitRows::All => x,
            LogitRows::Rows(r) => gather_rows(gpu, &x, &r.iter().map(|&r| r as u32).collect::<Vec<_>>())?,
        };
        let logits = self.norm_linear(&x, "final_norm", self.head()?)?;
        let captured = Captured {
            residual: collect(gpu, probes.residual.len(), residual_caps)?,
            down_in: collect(gpu, probes.down_in.len(), down_caps)?,
            heads: collect(gpu, probes.heads.len(), heads_caps)?,
        };
        Ok((logits, captured))
    }

    /// The block output x of layer i as it would be had the MLP read `sets`' keys at their
    /// sites instead of `key`'s: x + (k_set − k) W_downᵀ at those rows (the MLP's bias cancels).
    /// One small read back, for probes only: the block's fused kernels stay as they are.
    fn set_keys(&self, x: Tensor, key: &Tensor, batch: &Batch, i: usize, sets: &[&(Site, Vec<f32>)]) -> Result<Tensor> {
        let (ffn, d) = (self.config.ffn_hidden, self.config.hidden);
        let mut wanted = Vec::with_capacity(sets.len() * ffn);
        for (site, set) in sets.iter().map(|p| (&p.0, &p.1)) {
            if set.len() != ffn {
                return Err(Error::shape("forward", format!("a key set at {site:?} has {} values, the MLP {ffn}", set.len())));
            }
            wanted.extend_from_slice(set);
        }
        let rows: Vec<u32> = sets.iter().map(|(s, _)| batch.row(s.seq, s.pos) as u32).collect();
        let diff = self.gpu.upload(&wanted, &[sets.len(), ffn])?;
        elementwise::axpy(&self.gpu, -1.0, &gather_rows(&self.gpu, key, &rows)?, &diff)?;
        let change = self.gpu.download(&self.linear(&diff, self.l(i, "w_down")?, None)?)?;
        self.add_at_rows(x, batch, sets.iter().zip(change.chunks(d)).map(|((s, _), v)| (s.seq, s.pos, v)))
    }

    /// Layer i's heads' outputs o ([B·T, n_heads·head_dim]) read at the probe's sites, then with
    /// the set ones in place: their difference from what the layer computed is added at their
    /// rows (one small read back, for probes only).
    fn probe_heads(&self, o: Tensor, i: usize, p: HeadsProbe<'_>) -> Result<Tensor> {
        capture(&self.gpu, &o, p.batch, &p.probes.heads, i, p.caps)?;
        let sets: Vec<&(Site, Vec<f32>)> = p.probes.set_heads.iter().filter(|(s, _)| s.layer == i).collect();
        if sets.is_empty() {
            return Ok(o);
        }
        let width = o.shape()[1];
        if let Some((site, set)) = sets.iter().map(|p| (&p.0, &p.1)).find(|(_, set)| set.len() != width) {
            return Err(Error::shape("forward", format!("heads' outputs set at {site:?} have {} values, the attention {width}", set.len())));
        }
        let rows: Vec<u32> = sets.iter().map(|(s, _)| p.batch.row(s.seq, s.pos) as u32).collect();
        let now = self.gpu.download(&gather_rows(&self.gpu, &o, &rows)?)?;
        let diffs: Vec<Vec<f32>> = sets.iter().zip(now.chunks(width)).map(|((_, set), now)| set.iter().zip(now).map(|(a, b)| a - b).collect()).collect();
        self.add_rows(o, p.batch, "the heads' outputs", sets.iter().zip(&diffs).map(|((s, _), v)| (s.seq, s.pos, v.as_slice())))
    }

    /// The residual stream x plus each vector at its (sequence, position) row.
    fn add_at_rows<'v>(&self, x: Tensor, batch: &Batch, adds: impl Iterator<Item = (usize, usize, &'v [f32])>) -> Result<Tensor> {
        self.add_rows(x, batch, "the residual stream", adds)
    }

    /// x ([B·T, width]) plus each vector at its (sequence, position) row; x itself where there
    /// are none.
    fn add_rows<'v>(&self, x: Tensor, batch: &Batch, what: &str, adds: impl Iterator<Item = (usize, usize, &'v [f32])>) -> Result<Tensor> {
        let d = x.shape()[x.shape().len() - 1];
        let mut delta: Option<Vec<f32>> = None;
        for (seq, pos, v) in adds {
            if v.len() != d {
                return Err(Error::shape("forward", format!("a vector added to {what} has {} values, not {d}", v.len())));
            }
            let delta = delta.get_or_insert_with(|| vec![0.0f32; batch.b() * batch.t * d]);
            let r = batch.row(seq, pos);
            delta[r * d..(r + 1) * d].iter_mut().zip(v).for_each(|(a, b)| *a += b);
        }
        match delta {
            Some(delta) => elementwise::add(&self.gpu, &x, &self.gpu.upload(&delta, &[batch.b() * batch.t, d])?),
            None => Ok(x),
        }
    }

    /// The MLP down-projection inputs (keys) of `layer` for every row of the batch:
    /// [B·T, ffn]. Runs only layers 0..=layer; padding rows hold keys of padding tokens.
    pub fn layer_keys(&self, batch: &Batch, layer: usize) -> Result<Tensor> {
        let c = &self.config;
        if layer >= c.n_layers {
            return Err(Error::shape("layer_keys", format!("layer {layer} of a model with {} layers", c.n_layers)));
        }
        let (mut x, mut cache) = self.start(batch)?;
        for i in 0..layer {
            x = self.block(i, x, &mut cache, 0, batch.b(), batch.t, Keep::Output)?.x;
        }
        self.block(layer, x, &mut cache, 0, batch.b(), batch.t, Keep::Key)?.kept_key()
    }

    /// The keys of several layers from one pass (up to the highest of them), in the order asked.
    pub fn layers_keys(&self, batch: &Batch, layers: &[usize]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let top = match layers.iter().max() {
            Some(&l) if l < c.n_layers => l,
            Some(&l) => return Err(Error::shape("layer_keys", format!("layer {l} of a model with {} layers", c.n_layers))),
            None => return Ok(vec![]),
        };
        let (mut x, mut cache) = self.start(batch)?;
        let mut keys = std::collections::HashMap::new();
        for i in 0..=top {
            let keep = if layers.contains(&i) { Keep::Key } else { Keep::Output };
            let mut out = self.block(i, x, &mut cache, 0, batch.b(), batch.t, keep)?;
            if layers.contains(&i) {
                keys.insert(i, out.kept_key()?);
            }
            x = out.x;
        }
        Ok(layers.iter().map(|l| keys[l].clone()).collect())
    }

    /// From one pass: the keys of `key_layer` and the residual stream after `residual_layer`
    /// (MEMIT reads both for every edited layer), every row.
    pub fn keys_and_residual(&self, batch: &Batch, key_layer: usize, residual_layer: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        let top = key_layer.max(residual_layer);
        if top >= c.n_layers {
            return Err(Error::shape("keys_and_residual", format!("layer {top} of a model with {} layers", c.n_layers)));
        }
        let (mut x, mut cache) = self.start(batch)?;
        let mut key = None;
        let mut residual = None;
        for i in 0..=top {
            let mut out = self.block(i, x, &mut cache, 0, batch.b(), batch.t, if i == key_layer { Keep::Key } else { Keep::Output })?;
            if i == key_layer {
                key = Some(out.kept_key()?);
            }
            x = out.x;
            if i == residual_layer {
                residual = Some(x.clone());
            }
        }
        Ok((key.expect("key layer ≤ top"), residual.expect("residual layer ≤ top")))
    }

    /// The residual stream after the block of `layer`, every row: [B·T, d] (what layer + 1
    /// reads), from a fresh pass.
    pub fn residual_after(&self, batch: &Batch, layer: usize) -> Result<Tensor> {
        if layer >= self.config.n_layers {
            return Err(Error::shape("residual_after", format!("layer {layer} of a model with {} layers", self.config.n_layers)));
        }
        let (mut x, mut cache) = self.start(batch)?;
        for i in 0..=layer {
            x = self.block(i, x, &mut cache, 0, batch.b(), batch.t, Keep::Output)?.x;
        }
        Ok(x)
    }

    /// Checks a batch for a fresh pass and embeds it, with a cache sized to it.
    pub(crate) fn start(&self, batch: &Batch) -> Result<(Tensor, KvCache)> {
        let c = &self.config;
        if batch.t > c.max_seq_len {
            return Err(Error::shape("forward", format!("{} positions exceed the model's context of {}", batch.t, c.max_seq_len)));
        }
        check_ids(c, &batch.ids)?;
        Ok((self.embed(batch, 0)?, self.new_cache(batch.b(), batch.t)?))
    }

    fn embed(&self, batch: &Batch, pos0: usize) -> Result<Tensor> {
        let pos: Vec<u32> = (0..batch.b()).flat_map(|_| (0..batch.t).map(|p| (pos0 + p) as u32)).collect();
        self.embed_at(&batch.ids, &pos)
    }

    /// The embeddings of `ids`, token i at position `pos[i]` (GPT-2 adds learned positions).
    fn embed_at(&self, ids: &[u32], pos: &[u32]) -> Result<Tensor> {
        self.add_positions(gather_rows(&self.gpu, self.tensor("embed")?, ids)?, pos)
    }

    /// Token embeddings x plus the learned embeddings of positions `pos` where the model has
    /// them (GPT-2); Llama's positions enter through the rotation instead.
    fn add_positions(&self, x: Tensor, pos: &[u32]) -> Result<Tensor> {
        if self.config.arch != Arch::Gpt2 {
            return Ok(x);
        }
        elementwise::add(&self.gpu, &x, &gather_rows(&self.gpu, self.tensor("pos_embed")?, pos)?)
    }

    /// One decoding step of sequences that stand at different positions: token s of `tokens`
    /// goes to position `positions[s]` of sequence s of `cache`, whose rows before it the
    /// caller has filled (a right-padded prefill fills each sequence's real rows; padding rows
    /// past a sequence's length are overwritten as it grows and never seen before that, since
    /// a query sees only the rows up to its own position). Returns the logits [B, V]. Where
    /// every sequence is at the cache's length, this is `forward` of one token each.
    pub fn decode_each(&self, tokens: &[u32], positions: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        check_ids(&self.config, tokens)?;
        self.decode_step(StepTokens::Host(tokens), positions, cache)
    }

    /// `decode_each` of the tokens a kernel chose, never read back: row s's token is the f32
    /// index at `chosen[s · stride]` (`row_top_k`'s index plane, stride k). A step can so be
    /// queued before the last one's tokens reach the host. An index that is not a token (from
    /// logits that held a NaN) makes its sequence's logits NaN; the caller names the fault when
    /// the index comes back.
    pub fn decode_chosen(&self, chosen: &Tensor, stride: usize, positions: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        self.decode_step(StepTokens::Chosen { index: chosen, stride }, positions, cache)
    }

    /// One token per sequence at its position. Where every sequence stands at the cache's
    /// length the layers run as `forward` runs one token (the same kernels, the same bits).
    fn decode_step(&self, tokens: StepTokens<'_>, positions: &[usize], cache: &mut KvCache) -> Result<Tensor> {
        let c = &self.config;
        let b = positions.len();
        if b != cache.batch {
            return Err(Error::shape("decode", format!("{b} positions for a cache of {} sequences", cache.batch)));
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= cache.capacity || p >= c.max_seq_len) {
            return Err(Error::shape("decode", format!("position {p} is past the cache's {} rows or the model's context of {}", cache.capacity, c.max_seq_len)));
        }
        let pos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let mut x = match tokens {
            StepTokens::Host(ids) if ids.len() != b => {
                return Err(Error::shape("decode", format!("{} tokens at {b} positions", ids.len())));
            }
            StepTokens::Host(ids) => self.embed_at(ids, &pos)?,
            StepTokens::Chosen { index, stride } => {
                let x = gather::gather_rows_at(&self.gpu, self.tensor("embed")?, index, stride, b)?;
                self.add_positions(x, &pos)?
            }
        };
        let at = if positions.iter().all(|&p| p == cache.len) { At::From(cache.len) } else { At::Each(positions) };
        for i in 0..c.n_layers {
            x = self.block_at(i, x, cache, at, b, 1, Keep::Output, None)?.x;
        }
        cache.len = cache.len.max(positions.iter().max().map_or(0, |p| p + 1));
        self.norm_linear(&x, "final_norm", self.head()?)
    }

    /// One transformer block on x: [B·T, d] at positions pos0.., writing this layer's keys and
    /// values into the cache, keeping what `keep` asks for.
    pub(crate) fn block(&self, i: usize, x: Tensor, cache: &mut KvCache, pos0: usize, b: usize, t: usize, keep: Keep) -> Result<BlockOut> {
        self.block_at(i, x, cache, At::From(pos0), b, t, keep, None)
    }

    /// `block` with the tokens' positions: all sequences from one position, or one token per
    /// sequence, each at its own; and with the heads' outputs probed where `heads_probe` asks.
    #[allow(clippy::too_many_arguments)]
    fn block_at(&self, i: usize, x: Tensor, cache: &mut KvCache, at: At, b: usize, t: usize, keep: Keep, heads_probe: Option<HeadsProbe<'_>>) -> Result<BlockOut> {
        let record = keep == Keep::Tape;
        if matches!(at, At::Each(_)) && (t != 1 || record) {
            return Err(Error::shape("forward", format!("layer {i}: sequences at their own positions take one token each and keep no tape ({t} tokens asked)")));
        }
        let c = &self.config;
        let gpu = &self.gpu;
        let hd = c.head_dim;
        let gpt2 = c.arch == Arch::Gpt2;
        let bias = |name: &str| -> Result<Option<&Tensor>> { if c.has_bias(name) { Ok(Some(self.l(i, name)?)) } else { Ok(None) } };
        let attn_norm = Name::new(format_args!("layers.{i}.attn_norm"));
        let (q_shape, kv_shape) = ([b, t, c.n_heads, hd], [b, t, c.n_kv_heads, hd]);
        // The stacked products serve every pass: the tape keeps the rotated queries, which the
        // rotation returns either way, and gate/up as the one product's halves.
        let qkv_stack = self.stacks.get(i);
        let heads = rope::Heads { q: c.n_heads, kv: c.n_kv_heads, dim: hd };
        // The queries as attention reads them, this layer's keys and values in the cache.
        let q = match (qkv_stack.filter(|_| !record), qkv_stack) {
            // A few rows (a decoded token, where folding pays): the norm, the stacked product,
            // the rotation and the cache write in one dispatch.
            (Some(s), _) if self.folds(b * t) && s.qkv_bias.is_none() => {
                let g = self.norm_weight(&attn_norm)?;
                let x2 = x.reshape(&[b * t, c.hidden])?;
                rope::norm_qkv_rope_kv(gpu, &x2, g, c.norm_eps, &s.qkv.tensor, heads, &cache.k[i], &cache.v[i], at, &self.rope)?
            }
            // One product for the queries, keys and values, which the rotation reads from its
            // rows.
            (_, Some(s)) => {
                let qkv = self.linear(&self.norm(&x, &attn_norm)?, &s.qkv.tensor, s.qkv_bias.as_ref().map(|b| &b.tensor))?;
                rope::rope_kv_stacked(gpu, &qkv, heads, &cache.k[i], &cache.v[i], at, &self.rope)?
            }
            _ => {
                let h = self.norm(&x, &attn_norm)?;
                let q = self.linear(&h, self.l(i, "wq")?, bias("bq")?)?.reshape(&q_shape)?;
                let k = self.linear(&h, self.l(i, "wk")?, bias("bk")?)?.reshape(&kv_shape)?;
                let v = self.linear(&h, self.l(i, "wv")?, bias("bv")?)?.reshape(&kv_shape)?;
                self.place_kv(q, &k, &v, i, cache, at)?
            }
        };
        let o = gpu.empty(q.shape())?;
        attention::attention_at_into(gpu, &q, &cache.k[i], &cache.v[i], at, 1.0 / (hd as f32).sqrt(), attention::kernel_for(gpu, &q), &o)?;
        let o = o.reshape(&[b * t, c.n_heads * hd])?;
        let o = match heads_probe {
            Some(p) => self.probe_heads(o, i, p)?,
            None => o,
        };
        // The tape's copy of x (and of x_mid below) keeps residual_linear from writing over it.
        let x_in = record.then(|| x.clone());
        let x_mid = self.residual_linear(x, &o, self.l(i, "wo")?, bias("bo")?)?;

        let mlp_norm = Name::new(format_args!("layers.{i}.mlp_norm"));
        let (key, mlp) = match qkv_stack {
            Some(s) => {
                let gate_up = self.norm_linear(&x_mid, &mlp_norm, &s.gate_up.tensor)?;
                // Without keys kept, a few rows' activation folds into the down-projection,
                // which adds into x_mid.
                if keep == Keep::Output && self.folds(b * t) && x_mid.is_unique() {
                    let x_out = activation::silu_mul_matvec(gpu, &gate_up, self.l(i, "w_down")?, Some(x_mid))?;
                    return Ok(BlockOut { x: x_out, key: None, tape: None });
                }
                (activation::silu_mul_halves(gpu, &gate_up)?, MlpTape::Stacked(gate_up))
            }
            None => {
                let h = self.norm(&x_mid, &mlp_norm)?;
                let up = self.linear(&h, self.l(i, "w_up")?, bias("b_up")?)?;
                if gpt2 {
                    (activation::gelu(gpu, &up)?, MlpTape::Gelu(up))
                } else {
                    let gate = self.linear(&h, self.l(i, "w_gate")?, None)?;
                    (activation::silu_mul(gpu, &gate, &up)?, MlpTape::Apart { gate, up })
                }
            }
        };
        // Only a tape keeps the activation's inputs: dropped here, their buffer can serve the
        // down-projection.
        let mlp = record.then_some(mlp);
        let x_mid_kept = record.then(|| x_mid.clone());
        let x_out = self.residual_linear(x_mid, &key, self.l(i, "w_down")?, bias("b_down")?)?;
        let tape = match (x_in, x_mid_kept, mlp) {
            (Some(x_in), Some(x_mid), Some(mlp)) => Some(BlockTape { x_in, q, x_mid, mlp }),
            _ => None,
        };
        Ok(BlockOut { x: x_out, key: (keep != Keep::Output).then_some(key), tape })
    }

    /// Writes layer i's new keys and values into their cache rows at `at` (rotated where the
    /// model rotates them) and returns the queries as attention reads them. Sequences at their
    /// own positions take the positions in the rotation's parameters, 16 a dispatch; GPT-2's
    /// keys, which are not rotated, are copied into place a sequence at a time there.
    fn place_kv(&self, q: Tensor, k: &Tensor, v: &Tensor, i: usize, cache: &KvCache, at: At) -> Result<Tensor> {
        let c = &self.config;
        let (k_cache, v_cache) = (&cache.k[i], &cache.v[i]);
        if c.arch != Arch::Gpt2 {
            return rope::rope_kv_at(&self.gpu, &q, k, v, k_cache, v_cache, at, &self.rope);
        }
        match at {
            At::From(pos0) => attention::write_kv_pair(&self.gpu, k, v, k_cache, v_cache, pos0)?,
            At::Each(positions) => {
                let (hd, hkv) = (c.head_dim, c.n_kv_heads);
                let block = hkv * cache.capacity * hd;
                for (s, &pos) in positions.iter().enumerate() {
                    let one = |t: &Tensor| t.view(s * hkv * hd, &[1, 1, hkv, hd]);
                    let cache_of = |t: &Tensor| t.view(s * block, &[1, hkv, cache.capacity, hd]);
                    attention::write_kv_pair(&self.gpu, &one(k)?, &one(v)?, &cache_of(k_cache)?, &cache_of(v_cache)?, pos)?;
                }
            }
        }
        Ok(q)
    }

    /// Logits of each sequence's last real token: [B, V], in passes within the adapter's budget.
    pub fn last_logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Err(Error::shape("forward", "an empty batch or an empty sequence"));
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let mut out = vec![vec![]; seqs.len()];
        for pass in PassBudget::for_gpu(&self.gpu).plan(&lens, &vec![1; seqs.len()]) {
            let batch = Batch::new(&pass.iter().map(|&i| seqs[i].clone()).collect::<Vec<_>>())?;
            let (logits, _) = self.forward(&batch, &Probes::default(), LogitRows::Rows(batch.last_rows()), None)?;
            let v = self.config.vocab_size;
            for (&i, row) in pass.iter().zip(self.host_logits(&logits)?.chunks(v)) {
                out[i] = row.to_vec();
            }
        }
        Ok(out)
    }

    /// Logits read back to the host, refused when one is NaN or infinite: a model whose weights
    /// went bad (or that an edit made overflow) must not answer or score as if nothing happened.
    pub fn host_logits(&self, logits: &Tensor) -> Result<Vec<f32>> {
        let values = self.gpu.download(logits)?;
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            let v = self.config.vocab_size;
            return Err(Error::Numeric(format!(
                "the model's logits are not finite (row {}, token {}: {}): its weights or settings hold NaN or Inf, or an edit made them overflow",
                i / v,
                i % v,
                values[i]
            )));
        }
        Ok(values)
    }
}

/// Whether a model on `gpu` folds norms and activations into the products that read them:
/// on hardware adapters; `REVIVE_FOLD=1` or `0` decides instead, to compare both in one run.
fn fold_by_default(gpu: &Gpu) -> bool {
    match std::env::var("REVIVE_FOLD").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => !gpu.is_cpu(),
    }
}

fn check_ids(c: &Config, ids: &[u32]) -> Result<()> {
    if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
        return Err(Error::shape("forward", format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
    }
    Ok(())
}

/// The layer a pass starts at (0, or `Probes::start_at`'s), once its rows fit the batch and
/// no probe reaches before it.
fn check_start(c: &Config, batch: &Batch, probes: &Probes, pos0: usize) -> Result<usize> {
    let Some((layer, rows)) = &probes.start_at else { return Ok(0) };
    let bad = |why: String| Err(Error::shape("forward", format!("a pass started at layer {layer}: {why}")));
    if *layer > c.n_layers {
        return bad(format!("the model has {} layers", c.n_layers));
    }
    if pos0 > 0 {
        return bad("it has no cache of the layers before it to go on from".into());
    }
    if rows.len() != batch.b() || rows.iter().zip(&batch.lens).any(|(r, &n)| r.len() != n * c.hidden) {
        return bad(format!("its rows are not {} sequences of their lengths {:?} × {}", batch.b(), batch.lens, c.hidden));
    }
    if let Some(s) = probes.sites().find(|s| s.layer < *layer) {
        return bad(format!("a probe at {s:?} is before it"));
    }
    if !probes.add_to_embedding.is_empty() {
        return bad("it reads no embedding to add to".into());
    }
    Ok(*layer)
}

pub(crate) fn check_site(c: &Config, batch: &Batch, s: &Site) -> Result<()> {
    if s.layer >= c.n_layers || s.seq >= batch.b() || s.pos >= batch.lens[s.seq] {
        return Err(Error::shape(
            "forward",
            format!("probe {s:?} is outside the batch ({} layers, lengths {:?})", c.n_layers, batch.lens),
        ));
    }
    Ok(())
}

/// Gathers the rows the probes of `layer` ask for, with the probe index of each row; they are
/// downloaded once at the end of the pass.
fn capture(gpu: &Gpu, x: &Tensor, batch: &Batch, sites: &[Site], layer: usize, out: &mut Vec<(Vec<usize>, Tensor)>) -> Result<()> {
    let (idx, rows): (Vec<usize>, Vec<u32>) = sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.layer == layer)
        .map(|(k, s)| (k, batch.row(s.seq, s.pos) as u32))
        .unzip();
    if !rows.is_empty() {
        out.push((idx, gather_rows(gpu, x, &rows)?));
    }
    Ok(())
}

fn collect(gpu: &Gpu, n: usize, caps: Vec<(Vec<usize>, Tensor)>) -> Result<Vec<Vec<f32>>> {
    let mut out = vec![vec![]; n];
    for (idx, t) in caps {
        let width = t.shape()[1];
        for (k, row) in idx.into_iter().zip(gpu.download(&t)?.chunks(width)) {
            out[k] = row.to_vec();
        }
    }
    Ok(out)
}
