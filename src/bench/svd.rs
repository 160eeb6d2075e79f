//! `revive bench svd`: time to the top-k singular triplets on the GPU (subspace iteration)
//! against the CPU reference (faer's f64 SVD of the whole matrix) in the same run, with the
//! accuracy reached: the largest relative error of the top-k singular values and the sine of
//! the largest principal angle between the top-k left subspaces.
//!
//! The matrices are Gaussian with columns scaled by (1 + j)^(-1/2): a decaying spectrum like a
//! trained weight's, built in O(mn). `--save DIR` writes them (safetensors) for the PyTorch
//! baseline (benches/baselines/torch_svd.py) to time on the same values.

use crate::cpu::ortho::{principal_sines, svd as cpu_svd};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::linalg::svd::{top_k, Ritz, SvdOptions};
use crate::testing::{gaussian, rng};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct SvdRow {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub gpu_seconds: f64,
    pub iterations: usize,
    /// Rayleigh–Ritz checks (the only readbacks) among the iterations.
    pub checks: usize,
    /// Where the checks' small SVD was asked to run (auto: GPU unless the adapter is a CPU).
    pub ritz: Ritz,
    /// Checks whose small SVD ran on the host.
    pub host_checks: usize,
    /// Jacobi sweeps of the checks that ran on the GPU.
    pub sweeps: usize,
    /// Bytes read back by the SVD (not counting the result's download).
    pub readback_bytes: u64,
    /// Dispatches the SVD recorded (the table shows them per iteration): where a GPU's time
    /// per iteration goes beside the arithmetic.
    pub dispatches: u64,
    pub block: usize,
    /// max_i ‖W v_i − σ_i u_i‖ / σ_1 at convergence.
    pub residual: f64,
    /// Full f64 SVD on the CPU (once per matrix, shared by its k's); None with --no-cpu.
    pub cpu_seconds: Option<f64>,
    /// cpu_seconds / gpu_seconds.
    pub speedup: Option<f64>,
    /// max_{i<k} |σ_i − σ_i^ref| / σ_i^ref.
    pub sigma_rel_err: Option<f64>,
    /// sin of the largest principal angle between the GPU's and the reference's top-k U.
    pub subspace_sine: Option<f64>,
}

/// The benchmark matrix (row-major f32).
pub fn matrix(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let mut w = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            w[i * n + j] = (gaussian(&mut r) / (1.0 + j as f64).sqrt()) as f32;
        }
    }
    w
}

/// One matrix, several k, each with the small SVD where each of `ritz` says.
pub fn run(gpu: &Gpu, m: usize, n: usize, ks: &[usize], ritz: &[Ritz], cpu: bool, opts: &SvdOptions, save: Option<&std::path::Path>) -> Result<Vec<SvdRow>> {
    let w = matrix(m, n, (m * 31 + n) as u64);
    if let Some(dir) = save {
        crate::store::save(&dir.join(format!("svd-{m}x{n}.safetensors")), &[("format", "revive-bench-svd".into())], &[("w", vec![m, n], &w)])?;
    }
    let reference = if cpu {
        let t = Instant::now();
        let r = cpu_svd(&w, m, n);
        Some((r, t.elapsed().as_secs_f64()))
    } else {
        None
    };
    let tw = gpu.upload(&w, &[m, n])?;
    // On a hardware adapter, the kernels for these products measured first, as a model's are
    // on first use: the timings below are what a user gets after that one measurement.
    let shapes = ks.iter().flat_map(|&k| crate::linalg::svd::product_shapes(m, n, crate::linalg::svd::block_width(k, m.min(n), opts))).collect();
    if let Err(e) = crate::model::tuning::measure_before_use(gpu, shapes) {
        log::warn!("measuring the matmul kernels for the SVD's products failed ({e}); the fixed rule applies");
    }
    // Warm-up: pipelines built, buffers pooled.
    for &ritz in ritz {
        top_k(gpu, &tw, ks[0].min(m.min(n)), &SvdOptions { max_iters: 2, ritz, ..*opts }).ok();
    }
    let mut rows = vec![];
    for (&k, &ritz) in ks.iter().flat_map(|k| ritz.iter().map(move |r| (k, r))) {
        let before = gpu.runtime_stats();
        let t = Instant::now();
        let r = top_k(gpu, &tw, k, &SvdOptions { ritz, ..*opts })?;
        let work = gpu.runtime_stats() - before;
        let readback_bytes = work.readback_bytes;
        let u = gpu.download(&r.u)?;
        let gpu_seconds = t.elapsed().as_secs_f64();
        let (mut cpu_seconds, mut speedup, mut sigma_rel_err, mut subspace_sine) = (None, None, None, None);
        if let Some(((ru, rs, _), secs)) = &reference {
            let rdim = m.min(n);
            cpu_seconds = Some(*secs);
            speedup = Some(secs / gpu_seconds);
            sigma_rel_err = Some((0..k).map(|i| (r.sigma[i] - rs[i]).abs() / rs[i]).fold(0.0, f64::max));
            let theirs: Vec<f64> = (0..m).flat_map(|i| ru[i * rdim..i * rdim + k].to_vec()).collect();
            let mine: Vec<f64> = u.iter().map(|&x| x as f64).collect();
            subspace_sine = Some(principal_sines(&theirs, k, &mine, k, m)[0]);
        }
        rows.push(SvdRow {
            m,
            n,
            k,
            gpu_seconds,
            iterations: r.iterations,
            checks: r.checks,
            ritz,
            host_checks: r.host_checks,
            sweeps: r.sweeps,
            readback_bytes,
            dispatches: work.dispatches,
            block: r.block, residual: r.residual, cpu_seconds, speedup, sigma_rel_err, subspace_sine });
    }
    Ok(rows)
}

pub fn table(adapter: &str, rows: &[SvdRow]) -> String {
    let mut s = format!("top-k SVD on {adapter} (subspace iteration) vs the CPU reference (faer f64 full SVD)\n");
    s += "      m ×      n     k   GPU s  iters  dispatches/iter  checks  small SVD (sweeps)  read back  block  residual     CPU s   speed-up  σ rel err  sin θ_max\n";
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    for r in rows {
        s += &format!(
            "{:>7} × {:>6} {:>5} {:>7.3} {:>6} {:>16.0} {:>7} {:>19} {:>10} {:>6} {:>9.1e} {:>9} {:>10} {:>10} {:>10}\n",
            r.m,
            r.n,
            r.k,
            r.gpu_seconds,
            r.iterations,
            r.dispatches as f64 / r.iterations.max(1) as f64,
            r.checks,
            small_svd_label(r),
            format!("{:.1} KB", r.readback_bytes as f64 / 1024.0),
            r.block,
            r.residual,
            opt(r.cpu_seconds, &|v| format!("{v:.2}")),
            opt(r.speedup, &|v| format!("{v:.2}×")),
            opt(r.sigma_rel_err, &|v| format!("{v:.1e}")),
            opt(r.subspace_sine, &|v| format!("{v:.1e}")),
        );
    }
    s
}

/// Where the checks' small SVDs ran: "host", "GPU (23)" (Jacobi sweeps), "GPU (23) + 1 host".
fn small_svd_label(r: &SvdRow) -> String {
    match (r.host_checks, r.checks) {
        (h, c) if h == c && r.sweeps == 0 => "host".into(),
        (0, _) => format!("GPU ({})", r.sweeps),
        (h, _) => format!("GPU ({}) + {h} host", r.sweeps),
    }
}
