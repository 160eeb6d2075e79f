//! `revive bench matmul`: GFLOP/s of what `Kernel::Auto` runs on this adapter (the measured
//! choice, else the fixed rule), the tuned kernel, its pipelined variant (named
//! accumulators, double-buffered tiles), the 16x16-tile baseline and a CPU SGEMM
//! (matrixmultiply, multithreaded) on the same square problems, with their ratios and the
//! accuracy reached (sampled entries against an f64 dot product); with REVIVE_COOPERATIVE=1 on an
//! adapter with f16 cooperative matrices, also the cooperative-matrix kernel.

use super::median;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::ops::matmul::{gemm, Gemm, Kernel};
use crate::testing::{random_vec, rng};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct MatmulRow {
    pub size: usize,
    /// The kernel `Auto` chose for this size, and its speed.
    pub auto_kernel: &'static str,
    pub auto_gflops: f64,
    pub tuned_gflops: f64,
    pub pipelined_gflops: f64,
    pub tile16_gflops: f64,
    pub cpu_gflops: f64,
    /// Largest |C - C_f64| / (|A_i| |B_j|) over sampled entries: the error relative to the
    /// scale of the dot product, which stays meaningful where C_ij cancels to near zero.
    pub tuned_max_rel_err: f64,
    pub pipelined_max_rel_err: f64,
    /// The cooperative-matrix kernel (f16 operands, f32 accumulation), where the device was
    /// opened with it (REVIVE_COOPERATIVE=1 on an adapter that offers it): GFLOP/s and error.
    pub coop_gflops: Option<f64>,
    pub coop_max_rel_err: Option<f64>,
    pub timer: &'static str,
}

impl MatmulRow {
    pub fn tuned_vs_tile16(&self) -> f64 {
        self.tuned_gflops / self.tile16_gflops
    }
    pub fn tuned_vs_cpu(&self) -> f64 {
        self.tuned_gflops / self.cpu_gflops
    }
}

fn gflops(n: usize, t: Duration) -> f64 {
    2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9
}

fn reps_for(n: usize) -> usize {
    if n <= 512 { 5 } else { 3 }
}

fn sampled_error(a: &[f32], b: &[f32], c: &[f32], n: usize) -> f64 {
    let mut r = rng(7);
    let mut worst = 0.0f64;
    for _ in 0..64 {
        let i = rand::Rng::random_range(&mut r, 0..n);
        let j = rand::Rng::random_range(&mut r, 0..n);
        let (mut exact, mut scale) = (0.0f64, 0.0f64);
        for p in 0..n {
            let (x, y) = (a[i * n + p] as f64, b[p * n + j] as f64);
            exact += x * y;
            scale += (x * y).abs();
        }
        let err = (c[i * n + j] as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE);
        worst = worst.max(if err.is_finite() { err } else { f64::INFINITY });
    }
    worst
}

pub fn run(gpu: &Gpu, sizes: &[usize], skip_cpu: bool) -> Result<Vec<MatmulRow>> {
    let bar = crate::progress::bar(sizes.len() as u64 * 5, "matmul");
    let mut rows = vec![];
    for &n in sizes {
        let mut r = rng(n as u64);
        let av = random_vec(&mut r, n * n);
        let bv = random_vec(&mut r, n * n);
        let a = gpu.upload(&av, &[n, n])?;
        let b = gpu.upload(&bv, &[n, n])?;
        let c = gpu.empty(&[n, n])?;
        let time_kernel = |kernel: Kernel| -> Result<Duration> {
            let g = Gemm { kernel, ..Gemm::default() };
            gemm(gpu, &a, &b, Some(&c), g)?; // warm-up: pipeline build, first-touch
            let mut times = vec![];
            for _ in 0..reps_for(n) {
                times.push(gpu.time(|| gemm(gpu, &a, &b, Some(&c), g).map(|_| ()))?.best());
            }
            Ok(median(times))
        };
        let auto_kernel = Kernel::auto_choice(gpu, &crate::ops::matmul::tune_key(n, n, n, false, false, false), n, n, false);
        let auto = time_kernel(Kernel::Auto)?;
        bar.inc(1);
        let tile16 = time_kernel(Kernel::Tile16)?;
        bar.inc(1);
        let tuned = time_kernel(Kernel::Tuned)?;
        let err = sampled_error(&av, &bv, &gpu.download(&c)?, n);
        bar.inc(1);
        let pipelined = time_kernel(Kernel::Pipelined)?;
        let pipelined_err = sampled_error(&av, &bv, &gpu.download(&c)?, n);
        let coop = match gpu.cooperative_matrix() {
            true => Some((time_kernel(Kernel::Coop)?, sampled_error(&av, &bv, &gpu.download(&c)?, n))),
            false => None,
        };
        bar.inc(1);
        let cpu = if skip_cpu {
            None
        } else {
            let mut out = vec![0.0f32; n * n];
            let mut times = vec![];
            for _ in 0..reps_for(n) {
                let t = Instant::now();
                // SAFETY: the pointers cover n*n elements each with the row-major strides given.
                unsafe {
                    matrixmultiply::sgemm(
                        n, n, n, 1.0, av.as_ptr(), n as isize, 1, bv.as_ptr(), n as isize, 1, 0.0, out.as_mut_ptr(), n as isize, 1,
                    );
                }
                times.push(t.elapsed());
            }
            Some(median(times))
        };
        bar.inc(1);
        rows.push(MatmulRow {
            size: n,
            auto_kernel: auto_kernel.name(),
            auto_gflops: gflops(n, auto),
            tuned_gflops: gflops(n, tuned),
            pipelined_gflops: gflops(n, pipelined),
            tile16_gflops: gflops(n, tile16),
            cpu_gflops: cpu.map(|t| gflops(n, t)).unwrap_or(f64::NAN),
            tuned_max_rel_err: err,
            pipelined_max_rel_err: pipelined_err,
            coop_gflops: coop.map(|(t, _)| gflops(n, t)),
            coop_max_rel_err: coop.map(|(_, e)| e),
            timer: if gpu.has_timestamps() { "gpu timestamps" } else { "wall clock" },
        });
    }
    bar.finish_and_clear();
    Ok(rows)
}

/// A Markdown table of the rows, as the README shows it.
pub fn table(gpu_label: &str, rows: &[MatmulRow]) -> String {
    let mut s = format!("matmul f32, C = A·B, square; adapter: {gpu_label}\n\n");
    s += "| n | auto (kernel) GFLOP/s | tuned GFLOP/s | pipelined GFLOP/s | 16x16 tile GFLOP/s | CPU sgemm GFLOP/s | tuned / tile | tuned / CPU | max rel err (tuned, pipelined) | cooperative f16: GFLOP/s, max rel err |\n";
    s += "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in rows {
        let coop = match (r.coop_gflops, r.coop_max_rel_err) {
            (Some(g), Some(e)) => format!("{g:.1}, {e:.1e}"),
            _ => "not enabled".into(),
        };
        s += &format!(
            "| {} | {:.1} ({}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.1e}, {:.1e} | {coop} |\n",
            r.size,
            r.auto_gflops,
            r.auto_kernel,
            r.tuned_gflops,
            r.pipelined_gflops,
            r.tile16_gflops,
            r.cpu_gflops,
            r.tuned_vs_tile16(),
            r.tuned_vs_cpu(),
            r.tuned_max_rel_err,
            r.pipelined_max_rel_err
        );
    }
    s
}
