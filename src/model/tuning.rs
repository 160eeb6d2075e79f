//! The matmul kernels a model runs, measured on this adapter before its first use.
//!
//! Which kernel is fastest for a product depends on the GPU far more than any fixed rule can
//! say (on the H200 the rule of the day was 10–30× off on most of SmolLM2's shapes), so on a
//! hardware adapter the model's product shapes are timed once and the winners kept per adapter
//! and driver (`Kernel::Auto` reads them). Software adapters keep the fixed rule: there a full
//! measurement costs minutes and the rule was measured already.

use crate::error::Result;
use crate::gpu::{tuning_enabled, Gpu};
use crate::model::Config;
use crate::ops::matmul::{tune, tune_key, Shape, TuneRow};

/// Token counts measured on first use: one decoded token, a prompt, a batch of prompts, a
/// long prefill and a batch edit's few thousand rows.
pub const FIRST_USE_ROWS: [usize; 5] = [1, 16, 128, 512, 2048];

/// Block widths of the REVIVE guard's SVD measured on first use: the top k of SmolLM2's
/// down-projections at τ 0.5 (k 136, block 204) and beyond fall in the 256 and 512 classes,
/// a small explicit rank in the 64 class.
pub const FIRST_USE_SVD_BLOCKS: [usize; 3] = [64, 256, 512];

/// The products of a forward and backward pass at `rows` tokens, and of the covariance: every
/// linear map forward (x·Wᵀ), its input gradient (dy·W) and weight gradient (dyᵀ·x, not for
/// the vocabulary head, which is never trained), the keys' second moment KᵀK, and the
/// stacked q/k/v and gate/up products of a pass without a tape; then the guard's SVD of an
/// edited down-projection (`svd::product_shapes`) at the block widths of
/// [`FIRST_USE_SVD_BLOCKS`].
pub fn model_shapes(c: &Config, rows: &[usize]) -> Vec<Shape> {
    let kv = c.n_kv_heads * c.head_dim;
    let linear = [(c.hidden, c.hidden), (kv, c.hidden), (c.ffn_hidden, c.hidden), (c.hidden, c.ffn_hidden), (c.vocab_size, c.hidden)];
    let mut v = vec![];
    for &m in rows {
        for &(out, inp) in &linear {
            v.push(Shape { m, n: out, k: inp, trans_a: false, trans_b: true });
            v.push(Shape { m, n: inp, k: out, trans_a: false, trans_b: false });
            if out != c.vocab_size {
                v.push(Shape { m: out, n: inp, k: m, trans_a: true, trans_b: false });
            }
        }
        v.push(Shape { m: c.ffn_hidden, n: c.ffn_hidden, k: m, trans_a: true, trans_b: false });
        // The stacked forward products (q/k/v, gate/up) where no tape is kept.
        v.push(Shape { m, n: c.hidden + 2 * kv, k: c.hidden, trans_a: false, trans_b: true });
        v.push(Shape { m, n: 2 * c.ffn_hidden, k: c.hidden, trans_a: false, trans_b: true });
    }
    let (w_rows, w_cols) = (c.hidden, c.ffn_hidden);
    for p in FIRST_USE_SVD_BLOCKS {
        v.extend(crate::linalg::svd::product_shapes(w_rows, w_cols, p.min(w_rows.min(w_cols))));
    }
    v
}

/// The shapes of `model_shapes(c, rows)` whose class this adapter has no measured choice for.
pub fn unmeasured(gpu: &Gpu, c: &Config, rows: &[usize]) -> Vec<Shape> {
    unmeasured_of(gpu, model_shapes(c, rows))
}

/// Those of `shapes` whose class this adapter has no measured choice for, one per class.
pub fn unmeasured_of(gpu: &Gpu, shapes: Vec<Shape>) -> Vec<Shape> {
    let mut seen = std::collections::BTreeSet::new();
    shapes
        .into_iter()
        .filter(|s| {
            let key = tune_key(s.m, s.n, s.k, s.trans_a, s.trans_b, false);
            gpu.choice(&key).is_none() && seen.insert(key)
        })
        .collect()
}

/// On a hardware adapter with tuning on (not `REVIVE_TUNE=0`), measures the kernels for the
/// model's shape classes that have no choice yet and keeps the choices; returns what it
/// measured (nothing where all were known, or on a software adapter).
pub fn tune_on_first_use(gpu: &Gpu, c: &Config) -> Result<Vec<TuneRow>> {
    if !gpu.measures_on_first_use() {
        return Ok(vec![]);
    }
    measure_before_use(gpu, model_shapes(c, &FIRST_USE_ROWS))
}

/// On a hardware adapter with tuning on (not `REVIVE_TUNE=0`), measures the kernels for the
/// classes of `shapes` that have no choice yet and keeps the choices (the first-use
/// measurement of a model, and of `revive bench svd`'s matrices).
pub fn measure_before_use(gpu: &Gpu, shapes: Vec<Shape>) -> Result<Vec<TuneRow>> {
    if gpu.is_cpu() || !tuning_enabled() {
        return Ok(vec![]);
    }
    let shapes = unmeasured_of(gpu, shapes);
    if shapes.is_empty() {
        return Ok(vec![]);
    }
    eprintln!(
        "measuring the matmul kernels for {} product shapes on {} (once per adapter and driver; REVIVE_TUNE=0 skips it)",
        shapes.len(),
        gpu.label()
    );
    let bar = crate::progress::bar(shapes.len() as u64, "tune");
    let rows = tune(gpu, &shapes, 3, |row| {
        bar.set_message(format!("{} → {}", row.key, row.best));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    // Losing the file costs only a second measurement next time, never this run.
    // Choices another process saved first win, here too: see `Gpu::save_choices`.
    if let Err(e) = gpu.save_choices(true) {
        log::warn!("the measured kernel choices were not kept: {e}");
    }
    Ok(rows)
}
