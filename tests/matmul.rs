//! GEMM on every adapter against the f64 oracle: every kernel, all transposes, batches,
//! broadcasting, alpha/beta, aligned and awkward shapes.

mod common;
use common::*;
use revive::cpu;
use revive::ops::matmul::{gemm, Gemm, Kernel, KERNELS};

/// f32 dot products of length k with entries in [-1, 1]: entries of C are ~sqrt(k/9) and the
/// rounding error grows like sqrt(k) * eps, so atol scales with sqrt(k).
fn tol(k: usize) -> Tolerance {
    Tolerance::new(1e-5 * (k as f64).sqrt(), 1e-5, 1e-5)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batched: bool,
    b_batched: bool,
}

const fn case(batch: usize, m: usize, n: usize, k: usize) -> Case {
    Case { batch, m, n, k, a_batched: batch > 1, b_batched: batch > 1 }
}

// 1, primes, non-multiples of the 16 and 128 tiles, multiples of 4 (the vec4 path), and K not
// a multiple of the K step.
const CASES: &[Case] = &[
    case(1, 1, 1, 1),
    case(1, 1, 7, 13),
    case(1, 17, 1, 5),
    case(1, 2, 9, 6),
    case(2, 3, 12, 10),
    case(1, 31, 37, 41),
    case(1, 128, 128, 8),
    case(1, 129, 127, 131),
    case(1, 64, 196, 36),
    case(3, 65, 33, 97),
    case(2, 200, 260, 96),
    case(1, 257, 509, 263),
];

fn check(gpu: &revive::Gpu, c: Case, trans_a: bool, trans_b: bool, kernel: Kernel, alpha: f32, beta: f32, seed: u64) -> Result<(), String> {
    check_with(gpu, c, Gemm { trans_a, trans_b, alpha, beta, kernel }, seed, |x| x)
}

/// [`check`] with every transpose of A and B.
fn check_transposes(gpu: &revive::Gpu, c: Case, kernel: Kernel, seed: u64) -> Result<(), String> {
    for ta in [false, true] {
        for tb in [false, true] {
            check(gpu, c, ta, tb, kernel, 1.0, 0.0, seed)?;
        }
    }
    Ok(())
}

/// [`check`] against the reference on the operands as the kernel rounds them (`operand`).
fn check_with(gpu: &revive::Gpu, c: Case, g: Gemm, seed: u64, operand: impl Fn(f32) -> f32) -> Result<(), String> {
    let Gemm { trans_a, trans_b, alpha, beta, kernel } = g;
    let mut r = rng(seed);
    let a_shape = |rows, cols| if c.a_batched { vec![c.batch, rows, cols] } else { vec![rows, cols] };
    let b_shape = |rows, cols| if c.b_batched { vec![c.batch, rows, cols] } else { vec![rows, cols] };
    let sa = if trans_a { a_shape(c.k, c.m) } else { a_shape(c.m, c.k) };
    let sb = if trans_b { b_shape(c.n, c.k) } else { b_shape(c.k, c.n) };
    let av = random_vec(&mut r, sa.iter().product());
    let bv = random_vec(&mut r, sb.iter().product());
    let cv = random_vec(&mut r, c.batch * c.m * c.n);
    let a = ok(gpu.upload(&av, &sa))?;
    let b = ok(gpu.upload(&bv, &sb))?;
    let batched = c.a_batched || c.b_batched;
    let out_shape = if batched { vec![c.batch, c.m, c.n] } else { vec![c.m, c.n] };
    let out = if beta != 0.0 {
        let ct = ok(gpu.upload(&cv, &out_shape))?;
        ok(gemm(gpu, &a, &b, Some(&ct), g))?
    } else {
        ok(gemm(gpu, &a, &b, None, g))?
    };
    let got = ok(gpu.download(&out))?;
    let (av, bv): (Vec<f32>, Vec<f32>) = (av.iter().map(|&x| operand(x)).collect(), bv.iter().map(|&x| operand(x)).collect());
    let want = cpu::gemm(&av, &bv, Some(&cv), c.batch, c.m, c.n, c.k, trans_a, trans_b, c.a_batched, c.b_batched, alpha as f64, beta as f64);
    compare(&format!("{kernel:?} {c:?} ta={trans_a} tb={trans_b} alpha={alpha} beta={beta}"), &got, &want, tol(c.k))
}

#[test]
fn tuned_and_pipelined_match_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Tuned, 1.0, 0.0, i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Pipelined, 1.0, 0.0, 800 + i as u64)?;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn rows32_matches_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Rows32, 1.0, 0.0, 500 + i as u64)?;
                }
            }
        }
        // Auto picks it for a few dozen rows: the prompts of an edit.
        check(gpu, case(1, 37, 131, 576), false, true, Kernel::Auto, 1.0, 0.0, 550)?;
        Ok(())
    });
}

#[test]
fn tile16_tile32_and_tile64_match_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Tile16, 1.0, 0.0, 100 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Tile32, 1.0, 0.0, 800 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Tile64, 1.0, 0.0, 900 + i as u64)?;
                }
            }
        }
        Ok(())
    });
}

#[test]
fn dot_gemv_and_block_match_oracle_all_transposes() {
    for_each_gpu(|gpu| {
        for (i, &c) in CASES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(gpu, c, ta, tb, Kernel::Dot, 1.0, 0.0, 400 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Gemv, 1.0, 0.0, 600 + i as u64)?;
                    check(gpu, c, ta, tb, Kernel::Block, 1.0, 0.0, 700 + i as u64)?;
                }
            }
        }
        // The block kernel's eight-row blocks cut short in each half (6 and 13 rows: 6 and 5
        // in the last block) and its 16-column blocks with one to three quarters in range.
        for (i, c) in [case(1, 6, 21, 9), case(1, 13, 50, 23), case(2, 12, 7, 4), case(1, 5, 16, 3)].into_iter().enumerate() {
            check_transposes(gpu, c, Kernel::Block, 750 + i as u64)?;
        }
        // Auto's choice for a single row (the decode step) and for a few.
        check(gpu, case(1, 1, 577, 576), false, true, Kernel::Auto, 1.0, 0.0, 450)?;
        check(gpu, case(2, 3, 100, 64), false, true, Kernel::Auto, 1.0, 0.0, 451)?;
        Ok(())
    });
}

#[test]
fn lanes_matches_oracle_all_transposes_where_subgroups_are_8_wide() {
    // Blocks of 16 rows cut short in either half and with one row, 64-column workgroups with
    // lanes past the last column, and the shapes of CASES.
    let extra = [case(1, 6, 21, 9), case(1, 13, 50, 23), case(2, 12, 7, 4), case(1, 17, 65, 3), case(1, 24, 130, 19)];
    for_each_gpu_with_lanes(
        |gpu| gemm(gpu, &gpu.upload(&[1.0; 4], &[2, 2])?, &gpu.upload(&[1.0; 4], &[2, 2])?, None, Gemm { kernel: Kernel::Lanes, ..Gemm::default() }),
        |gpu| {
            for (i, &c) in CASES.iter().chain(&extra).enumerate() {
                check_transposes(gpu, c, Kernel::Lanes, 1000 + i as u64)?;
            }
            Ok(())
        },
    );
}

#[test]
fn dot_lanes_matches_oracle_all_transposes_where_subgroups_are_8_wide() {
    // Row blocks of 1, 2 and 4 cut short (3, 5, 7 rows), 8-column blocks cut short (13, 17,
    // 577), K below one step of 32, a step cut short and several steps (5, 33, 70, 576), a
    // batch, and the shapes of CASES.
    let extra = [case(1, 3, 13, 5), case(1, 5, 17, 33), case(2, 2, 9, 70), case(1, 7, 577, 576), case(1, 1, 2048, 576), case(3, 4, 40, 31)];
    for_each_gpu_with_lanes(
        |gpu| gemm(gpu, &gpu.upload(&[1.0; 4], &[2, 2])?, &gpu.upload(&[1.0; 4], &[2, 2])?, None, Gemm { kernel: Kernel::DotLanes, ..Gemm::default() }),
        |gpu| {
            for (i, &c) in CASES.iter().chain(&extra).enumerate() {
                check_transposes(gpu, c, Kernel::DotLanes, 1100 + i as u64)?;
            }
            // Auto's choice for a decoded token's vocabulary head.
            check(gpu, case(1, 1, 16411, 64), false, true, Kernel::Auto, 1.0, 0.0, 1150)?;
            Ok(())
        },
    );
}

#[test]
fn alpha_beta_accumulate_into_c() {
    for_each_gpu(|gpu| {
        for kernel in KERNELS.into_iter().filter(|k| k.runs_on(gpu)) {
            for (i, &c) in CASES.iter().enumerate() {
                check(gpu, c, i % 2 == 0, i % 3 == 0, kernel, -1.5, 0.5, 200 + i as u64)?;
            }
        }
        Ok(())
    });
}

#[test]
fn shared_operand_broadcasts_over_the_batch() {
    for_each_gpu(|gpu| {
        for kernel in [Kernel::Tuned, Kernel::Pipelined, Kernel::Rows32, Kernel::Tile64, Kernel::Tile32, Kernel::Tile16, Kernel::Gemv, Kernel::Block, Kernel::Lanes, Kernel::DotLanes].into_iter().filter(|k| k.runs_on(gpu)) {
            let a_only = Case { a_batched: true, b_batched: false, ..case(4, 33, 29, 70) };
            let b_only = Case { a_batched: false, b_batched: true, ..case(3, 40, 52, 16) };
            check(gpu, a_only, false, true, kernel, 1.0, 0.0, 300)?;
            check(gpu, b_only, true, false, kernel, 2.0, 0.0, 301)?;
        }
        Ok(())
    });
}

#[test]
fn shape_errors_are_reported_not_panics() {
    for_each_gpu(|gpu| {
        let a = ok(gpu.upload(&[0.0; 6], &[2, 3]))?;
        let b = ok(gpu.upload(&[0.0; 8], &[4, 2]))?;
        let err = gemm(gpu, &a, &b, None, Gemm::default()).err().ok_or("mismatched K accepted")?;
        if !err.to_string().contains("inner dimensions") {
            return Err(format!("unexpected message: {err}"));
        }
        let x = ok(gpu.upload(&[0.0; 8], &[2, 2, 2]))?;
        let y = ok(gpu.upload(&[0.0; 12], &[3, 2, 2]))?;
        gemm(gpu, &x, &y, None, Gemm::default()).err().ok_or("mismatched batch accepted")?;
        gemm(gpu, &a, &a, None, Gemm { beta: 1.0, ..Gemm::default() }).err().ok_or("beta without C accepted")?;
        Ok(())
    });
}

#[test]
fn the_cooperative_kernel_matches_the_reference_where_offered() {
    use revive::gpu::{offers_cooperative_matrices, BackendChoice, Gpu, KernelModes};
    // Opened as REVIVE_COOPERATIVE=1 opens it. Where the adapter has no f16 cooperative matrices
    // (lavapipe and llvmpipe here) the kernel is refused with a clear error; where it has them
    // the kernel is checked like the others, against the f64 product of the f16-rounded
    // operands it multiplies (f16 × f16 products are exact in f32, so only the f32
    // accumulation differs).
    for adapter in Gpu::adapters(BackendChoice::Auto) {
        let offered = offers_cooperative_matrices(&adapter);
        let gpu = Gpu::open_with(adapter, KernelModes { cooperative: true, ..KernelModes::from_env() }).unwrap().with_poison(true);
        assert_eq!(gpu.cooperative_matrix(), offered, "{}", gpu.label());
        let coop = Gemm { kernel: Kernel::Coop, ..Gemm::default() };
        if !offered {
            let a = gpu.upload(&[1.0; 6], &[2, 3]).unwrap();
            let b = gpu.upload(&[1.0; 12], &[3, 4]).unwrap();
            match gemm(&gpu, &a, &b, None, coop) {
                Err(e) if e.to_string().contains("REVIVE_COOPERATIVE") => eprintln!("{}: no f16 cooperative matrices: {e}", gpu.label()),
                other => panic!("{}: the cooperative kernel without cooperative matrices: {other:?}", gpu.label()),
            }
            continue;
        }
        let f16 = |x: f32| half::f16::from_f32(x).to_f32();
        for (i, &c) in CASES.iter().enumerate() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (alpha, beta) = if i % 2 == 0 { (1.0, 0.0) } else { (-1.5, 0.5) };
                check_with(&gpu, c, Gemm { trans_a: ta, trans_b: tb, alpha, beta, ..coop }, 900 + i as u64, f16)
                    .unwrap_or_else(|e| panic!("{}: {e}", gpu.label()));
            }
        }
    }
}

#[test]
fn the_fixed_rule_takes_the_kernels_that_won_on_a_gpu_and_block_or_lanes_on_a_cpu() {
    use Kernel::*;
    // (rows, columns) → kernel on a hardware adapter: a decoded token, a prompt's products,
    // the vocabulary head at 16 and 128 rows, and a large square product.
    let gpu_cases = [((1, 576), Dot), ((4, 49152), Dot), ((5, 576), Tile16), ((128, 1536), Tile16), ((16, 49152), Tile16), ((128, 49152), Pipelined), ((1536, 576), Pipelined), ((4096, 4096), Pipelined), ((4096, 96), Tile16)];
    for ((m, n), want) in gpu_cases {
        for (lanes, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(Kernel::by_rule(m, n, trans_b, false, lanes), want, "{m}×{n} on a GPU");
            assert_eq!(Kernel::by_rule(m, n, trans_b, true, false), Block, "{m}×{n} on a CPU adapter");
        }
        let on_lanes = if m >= revive::ops::matmul::LANES_MIN_ROWS { Lanes } else { Block };
        assert_eq!(Kernel::by_rule(m, n, false, true, true), on_lanes, "{m}×{n} (B stored K × N) on a CPU adapter with 8-wide subgroups");
    }
    // With 8-wide subgroups, a few rows times a wide W (stored N × K): the lanes dot kernel.
    for ((m, n), want) in [((1, 49152), DotLanes), ((1, 16384), DotLanes), ((2, 49152), Block), ((1, 3072), Block), ((16, 49152), Lanes)] {
        assert_eq!(Kernel::by_rule(m, n, true, true, true), want, "{m}×{n} (B stored N × K) on a CPU adapter with 8-wide subgroups");
    }
}

#[test]
fn tuning_measures_each_unmeasured_class_once_and_auto_then_runs_the_winner() {
    use revive::model::tuning::{tune_on_first_use, unmeasured};
    use revive::ops::matmul::{tune, tune_key};
    let config = revive::model::Config::tiny_llama();
    for_each_gpu(|gpu| {
        // A software adapter keeps the fixed rule: nothing is measured behind the user's back.
        if gpu.is_cpu() {
            ok(tune_on_first_use(gpu, &config))?.is_empty().then_some(()).ok_or("measured on a software adapter")?;
        }
        let rows = [3, 5];
        let shapes = unmeasured(gpu, &config, &rows);
        if shapes.is_empty() {
            return Err("a fresh shape class counted as measured".into());
        }
        // Auto's kernel per shape is remembered: resolved once before tuning, it must follow
        // what tuning records.
        for s in &shapes {
            Kernel::auto_for(gpu, s, false);
        }
        let measured = ok(tune(gpu, &shapes, 1, |_| {}))?;
        if measured.len() != shapes.len() {
            return Err(format!("{} classes measured for {} unmeasured ones", measured.len(), shapes.len()));
        }
        if !unmeasured(gpu, &config, &rows).is_empty() {
            return Err("classes left unmeasured after tuning".into());
        }
        for row in &measured {
            let s = row.shape;
            let auto = Kernel::auto_choice(gpu, &tune_key(s.m, s.n, s.k, s.trans_a, s.trans_b, false), s.m, s.n, s.trans_b);
            let remembered = Kernel::auto_for(gpu, &s, false);
            if auto.name() != row.best || remembered.name() != row.best {
                return Err(format!("{}: Auto runs {} (remembered: {}) where {} was measured fastest", row.key, auto.name(), remembered.name(), row.best));
            }
            // A choice recorded later (another kernel) is what Auto runs from then on.
            let other = if row.best == Kernel::Tile16.name() { Kernel::Tile32 } else { Kernel::Tile16 };
            gpu.set_choice(&row.key, other.name());
            let after = Kernel::auto_for(gpu, &s, false);
            gpu.set_choice(&row.key, &row.best);
            if after != other {
                return Err(format!("{}: Auto still runs {} after {} was recorded", row.key, after.name(), other.name()));
            }
            // The winner computes the product right.
            check(gpu, case(1, s.m, s.n, s.k), s.trans_a, s.trans_b, Kernel::Auto, 1.0, 0.0, 900)?;
        }
        Ok(())
    });
}

/// K past the 65,535 iterations of one loop a software adapter runs in an invocation (70,001:
/// odd, not a multiple of any K step), every kernel and transpose: there the product runs in
/// pieces of K, each adding onto the last (without them the 128 × 128 and 32-row kernels sum
/// wrong from K = 65,536 on lavapipe and llvmpipe); a GPU runs it whole.
#[test]
fn products_longer_than_the_adapters_loop_limit() {
    for_each_gpu(|gpu| {
        for kernel in KERNELS.into_iter().filter(|k| k.runs_on(gpu)) {
            for (ta, tb) in [(false, false), (true, true), (false, true)] {
                check(gpu, case(1, 3, 5, 70_001), ta, tb, kernel, 1.0, 0.5, 78)?;
            }
        }
        Ok(())
    });
}
