//! Criterion view of `revive bench matmul`: the tuned kernel, the 16x16-tile baseline and the
//! CPU SGEMM on the same square problems (sizes small enough for software adapters; pass
//! REVIVE_BENCH_SIZES=1024,4096 on a real GPU).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use revive::gpu::{BackendChoice, Gpu};
use revive::ops::matmul::{gemm, Gemm, Kernel};
use revive::testing::{random_vec, rng};

fn sizes() -> Vec<usize> {
    std::env::var("REVIVE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![128, 256])
}

fn bench(c: &mut Criterion) {
    let gpu = Gpu::new(BackendChoice::resolve(None).expect("REVIVE_BACKEND")).expect("a GPU adapter");
    let mut group = c.benchmark_group(format!("matmul/{}", gpu.label()));
    group.sample_size(10);
    for n in sizes() {
        group.throughput(Throughput::Elements((2 * n * n * n) as u64));
        let mut r = rng(n as u64);
        let (av, bv) = (random_vec(&mut r, n * n), random_vec(&mut r, n * n));
        let a = gpu.upload(&av, &[n, n]).unwrap();
        let b = gpu.upload(&bv, &[n, n]).unwrap();
        let out = gpu.empty(&[n, n]).unwrap();
        for (name, kernel) in [("tuned", Kernel::Tuned), ("pipelined", Kernel::Pipelined), ("tile16", Kernel::Tile16)] {
            group.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    gemm(&gpu, &a, &b, Some(&out), Gemm { kernel, ..Gemm::default() }).unwrap();
                    gpu.sync().unwrap();
                })
            });
        }
        let mut cv = vec![0.0f32; n * n];
        group.bench_with_input(BenchmarkId::new("cpu-sgemm", n), &n, |bench, _| {
            bench.iter(|| unsafe {
                // SAFETY: all three buffers hold n*n elements in row-major order.
                matrixmultiply::sgemm(n, n, n, 1.0, av.as_ptr(), n as isize, 1, bv.as_ptr(), n as isize, 1, 0.0, cv.as_mut_ptr(), n as isize, 1)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
