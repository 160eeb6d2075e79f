//! Work larger than one dispatch or one binding is split, not refused. Two ways to see it:
//! tiny split limits on small data (every op must cut its work into many pieces and still match
//! the oracle), and real sizes past lavapipe's limits (65,535 workgroups, 128 MiB per binding).

mod common;
use common::*;
use revive::cpu;
use revive::gpu::SplitLimits;
use revive::ops::elementwise::{self, View};
use revive::ops::gather::{gather_rows, gather_rows_at, gather_rows_from};
use revive::ops::matmul::{gemm, Gemm, KERNELS};
use revive::ops::reduce::{reduce_all, reduce_rows, ReduceOp};
use revive::ops::softmax::softmax_rows;

const TINY: SplitLimits = SplitLimits { max_workgroups: 3, max_binding_bytes: 1024 };

#[test]
fn every_op_splits_under_tiny_limits() {
    for_each_gpu(|gpu| {
        let gpu = &gpu.with_split_limits(TINY);
        let mut r = rng(1);
        for &(batch, m, n, k) in &[(1usize, 37usize, 41usize, 53usize), (5, 9, 130, 7), (2, 300, 3, 11)] {
            for kernel in KERNELS.into_iter().filter(|k| k.runs_on(gpu)) {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let sa = if ta { [batch, k, m] } else { [batch, m, k] };
                    let sb = if tb { [batch, n, k] } else { [batch, k, n] };
                    let av = random_vec(&mut r, batch * m * k);
                    let bv = random_vec(&mut r, batch * n * k);
                    let cv = random_vec(&mut r, batch * m * n);
                    let (a, b) = (ok(gpu.upload(&av, &sa))?, ok(gpu.upload(&bv, &sb))?);
                    let c = ok(gpu.upload(&cv, &[batch, m, n]))?;
                    let g = Gemm { trans_a: ta, trans_b: tb, alpha: 0.5, beta: -1.0, kernel };
                    ok(gemm(gpu, &a, &b, Some(&c), g))?;
                    let want = cpu::gemm(&av, &bv, Some(&cv), batch, m, n, k, ta, tb, true, true, 0.5, -1.0);
                    let what = format!("split gemm {kernel:?} b={batch} {m}x{n}x{k} ta={ta} tb={tb}");
                    compare(&what, &ok(gpu.download(&c))?, &want, Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5, 1e-5))?;
                }
            }
        }

        let x: Vec<f32> = random_vec(&mut r, 50 * 37).into_iter().map(|v| v.abs() + 0.01).collect();
        let t = ok(gpu.upload(&x, &[50, 37]))?;
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::SumSq] {
            let rows = ok(gpu.download(&ok(reduce_rows(gpu, &t, op))?))?;
            compare(&format!("split reduce_rows {op:?}"), &rows, &cpu::reduce_rows(&x, 37, op), Tolerance::F32)?;
            let all = ok(gpu.download(&ok(reduce_all(gpu, &t, op))?))?;
            compare(&format!("split reduce_all {op:?}"), &all, &[cpu::reduce_all(&x, op)], Tolerance::F32)?;
        }
        // A row longer than one binding is reduced in passes of its own.
        let long = ok(gpu.upload(&x, &[2, 925]))?;
        let rows = ok(gpu.download(&ok(reduce_rows(gpu, &long, ReduceOp::Sum))?))?;
        compare("split reduce_rows long rows", &rows, &cpu::reduce_rows(&x, 925, ReduceOp::Sum), Tolerance::F32)?;

        let y = random_vec(&mut r, x.len());
        let ty = ok(gpu.upload(&y, &[50, 37]))?;
        compare("split add", &ok(gpu.download(&ok(elementwise::add(gpu, &t, &ty))?))?, &cpu::add(&x, &y), Tolerance::F32)?;
        let tr = ok(gpu.download(&ok(elementwise::transpose(gpu, &t))?))?;
        let want: Vec<f64> = cpu::copy_strided(&x, View { offset: 0, strides: [0, 0, 1, 37] }, &vec![0.0; x.len()], View::dense(&[37, 50]), &[37, 50]);
        compare("split transpose", &tr, &want, Tolerance::F32)?;
        compare("split softmax", &ok(gpu.download(&ok(softmax_rows(gpu, &t))?))?, &cpu::softmax_rows(&x, 37), Tolerance::F32)?;
        // The table is larger than one binding: it is read in row ranges.
        let ids: Vec<u32> = (0..23).map(|i| (i * 17 % 50) as u32).collect();
        compare("split gather", &ok(gpu.download(&ok(gather_rows(gpu, &t, &ids))?))?, &cpu::gather_rows(&x, 37, &ids), Tolerance::F32)?;
        // The same at indices found on the GPU, two apart, one of them NaN: its row is NaN,
        // written once though the table is read in several ranges.
        let mut found: Vec<f32> = ids.iter().flat_map(|&id| [id as f32, -1.0]).collect();
        found[2 * 4] = f32::NAN;
        let idx = ok(gpu.upload(&found, &[found.len()]))?;
        let mut got = ok(gpu.download(&ok(gather_rows_at(gpu, &t, &idx, 2, ids.len()))?))?;
        if got[4 * 37..5 * 37].iter().any(|v| !v.is_nan()) || got.iter().enumerate().any(|(j, v)| v.is_nan() != (j / 37 == 4)) {
            return Err("split gather_rows_at: the NaN index's row is not exactly the NaN row".into());
        }
        got[4 * 37..5 * 37].fill(0.0);
        let mut want = cpu::gather_rows(&x, 37, &ids);
        want[4 * 37..5 * 37].fill(0.0);
        compare("split gather_rows_at", &got, &want, Tolerance::F32)?;
        // Two tables, each larger than one binding, stacked: rows from both sides of the seam.
        let x2 = random_vec(&mut r, 45 * 37);
        let t2 = ok(gpu.upload(&x2, &[45, 37]))?;
        let ids: Vec<u32> = (0..41).map(|i| (i * 23 % 95) as u32).collect();
        let want = cpu::gather_rows(&[x.clone(), x2].concat(), 37, &ids);
        compare("split gather from two tables", &ok(gpu.download(&ok(gather_rows_from(gpu, &[&t, &t2], &ids))?))?, &want, Tolerance::F32)?;
        Ok(())
    });
}

#[test]
fn more_workgroups_than_one_dispatch() {
    for_each_gpu(|gpu| {
        let mut r = rng(2);
        // 70,000 tiny products: the batch dimension alone exceeds 65,535 workgroups.
        let batch = 70_000;
        let (m, n, k) = (2, 3, 5);
        let av = random_vec(&mut r, batch * m * k);
        let bv = random_vec(&mut r, batch * k * n);
        let (a, b) = (ok(gpu.upload(&av, &[batch, m, k]))?, ok(gpu.upload(&bv, &[batch, k, n]))?);
        let got = ok(gpu.download(&ok(gemm(gpu, &a, &b, None, Gemm::default()))?))?;
        let want = cpu::gemm(&av, &bv, None, batch, m, n, k, false, false, true, true, 1.0, 0.0);
        compare("gemm batch 70000", &got, &want, Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5, 1e-5))?;

        // 70,000 rows: one workgroup per row is more than one dispatch.
        let x = random_vec(&mut r, 70_000 * 3);
        let t = ok(gpu.upload(&x, &[70_000, 3]))?;
        compare("softmax 70000 rows", &ok(gpu.download(&ok(softmax_rows(gpu, &t))?))?, &cpu::softmax_rows(&x, 3), Tolerance::F32)?;
        let rows = ok(gpu.download(&ok(reduce_rows(gpu, &t, ReduceOp::Max))?))?;
        compare("reduce_rows 70000 rows", &rows, &cpu::reduce_rows(&x, 3, ReduceOp::Max), Tolerance::F32)?;
        let ids: Vec<u32> = (0..70_000u32).map(|i| (i * 7919) % 70_000).collect();
        compare("gather 70000 ids", &ok(gpu.download(&ok(gather_rows(gpu, &t, &ids))?))?, &cpu::gather_rows(&x, 3, &ids), Tolerance::F32)?;
        Ok(())
    });
}

#[test]
fn more_data_than_one_binding() {
    for_each_gpu(|gpu| {
        // 34M floats = 136 MB per tensor: past 128 MiB per binding and 65,535 x 256 threads.
        let n = 34_000_003usize;
        let max = gpu.split_limits().max_binding_bytes as usize;
        if n * 4 <= max {
            return Err(format!("this adapter binds {max} bytes; the test needs a larger case"));
        }
        let mut r = rng(3);
        let x = random_vec(&mut r, n);
        let y = random_vec(&mut r, n);
        let (tx, ty) = (ok(gpu.upload(&x, &[n]))?, ok(gpu.upload(&y, &[n]))?);
        let sum = ok(gpu.download(&ok(elementwise::add(gpu, &tx, &ty))?))?;
        compare("add 34M", &sum, &cpu::add(&x, &y), Tolerance::F32)?;
        drop(sum);
        let sq = ok(gpu.download(&ok(reduce_all(gpu, &tx, ReduceOp::SumSq))?))?;
        compare("sum of squares 34M", &sq, &[cpu::reduce_all(&x, ReduceOp::SumSq)], Tolerance::F32)?;
        Ok(())
    });
}
