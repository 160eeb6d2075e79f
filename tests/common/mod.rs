//! Test harness: every GPU test body runs once per adapter present (here lavapipe on Vulkan and
//! llvmpipe on GL). `REVIVE_REQUIRE_BACKENDS=vulkan,gl` (set by .ci/run) makes a missing backend
//! a failure instead of a silent skip.
#![allow(dead_code)]

use revive::gpu::Gpu;
use std::sync::OnceLock;

#[allow(unused_imports)] // each test binary uses its own subset
pub use revive::testing::{check_gradient, compare, random_vec, rng, Tolerance};

static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();

pub fn gpus() -> &'static [Gpu] {
    GPUS.get_or_init(|| {
        let mut gpus = vec![];
        for g in Gpu::all() {
            match g {
                // Poison on: every tensor an op allocates starts as NaN. No kernel measurement
                // on model load: the tests share these devices, and one test's measurement
                // would change the kernels under another's bit-for-bit comparison.
                Ok(g) => gpus.push(g.with_poison(true).without_first_use_measurement()),
                Err(e) => panic!("an adapter is present but its device failed to open: {e}"),
            }
        }
        assert!(
            !gpus.is_empty(),
            "no GPU adapter: install mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri"
        );
        if let Ok(req) = std::env::var("REVIVE_REQUIRE_BACKENDS") {
            for want in req.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let found = gpus.iter().any(|g| format!("{:?}", g.info().backend).eq_ignore_ascii_case(want));
                assert!(found, "backend '{want}' is required (REVIVE_REQUIRE_BACKENDS) but no adapter offers it");
            }
        }
        gpus
    })
}

/// Runs `body` on every adapter; a failure names the adapter.
pub fn for_each_gpu(body: impl Fn(&Gpu) -> Result<(), String>) {
    let mut failures = vec![];
    for gpu in gpus() {
        if let Err(e) = body(gpu) {
            failures.push(format!("[{}] {e}", gpu.label()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Runs `body` on a device of every adapter opened for it alone, so that its runtime counters
/// (dispatches, passes, bind groups, …) see no other test's work: the tests of one binary run
/// at once. `poison` as for the shared devices; off where a test counts passes (poisoning
/// writes every new tensor from the host, which ends the pass).
pub fn for_each_fresh_gpu(poison: bool, body: impl Fn(&Gpu) -> Result<(), String>) {
    let mut failures = vec![];
    for g in Gpu::all() {
        let gpu = g.expect("the adapter opened once for the shared devices").with_poison(poison).without_first_use_measurement();
        if let Err(e) = body(&gpu) {
            failures.push(format!("[{}] {e}", gpu.label()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Runs `body` on every adapter with subgroups exactly 8 wide, where the lanes kernels run; on
/// the others `refused` (asking for a lanes kernel) must fail saying why. lavapipe on a machine
/// with AVX2 (this project's CI) has such subgroups, so under CI some adapter must run `body`.
pub fn for_each_gpu_with_lanes<T>(refused: impl Fn(&Gpu) -> revive::Result<T>, body: impl Fn(&Gpu) -> Result<(), String>) {
    let ran = std::cell::Cell::new(0);
    for_each_gpu(|gpu| {
        if !gpu.subgroup_lanes() {
            return match refused(gpu) {
                Err(e) if e.to_string().contains("subgroups exactly 8 wide") => Ok(()),
                Err(e) => Err(format!("a lanes kernel without 8-wide subgroups: unexpected error {e}")),
                Ok(_) => Err("a lanes kernel ran without 8-wide subgroups".into()),
            };
        }
        ran.set(ran.get() + 1);
        body(gpu)
    });
    if std::env::var("CI").is_ok() {
        assert!(ran.get() > 0, "no adapter ran the lanes kernels");
    }
}

/// Runs `body` with every size of row-reducing workgroup (`Gpu::with_row_threads`): one
/// thread, a CPU adapter's 8 and a GPU's 256, whatever the adapter picks by itself.
pub fn for_each_row_threads(gpu: &Gpu, body: impl Fn(&Gpu) -> Result<(), String>) -> Result<(), String> {
    for threads in [1, 8, 256] {
        body(&gpu.with_row_threads(threads)).map_err(|e| format!("{threads} threads per row: {e}"))?;
    }
    Ok(())
}

/// Turns a revive error into a test failure message.
pub fn ok<T>(r: revive::Result<T>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// A word-level tokenizer whose tokens are "w0" … "w{n-1}" (the tiny models' stand-in for a
/// real tokenizer).
pub fn word_tokenizer(n: usize) -> revive::model::Tok {
    let words: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    revive::model::Tok::word_level(&words.iter().map(String::as_str).collect::<Vec<_>>()).unwrap()
}
