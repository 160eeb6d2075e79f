//! The long fuzz run: `cargo run --release --example fuzz -- --seconds 600 [--target gguf]
//! [--seed N] [--json FILE]`. Prints one line per target and fails if any input panicked, was
//! refused without naming its file, or allocated past the bound (see src/fuzz.rs).

#[path = "../tests/common/alloc.rs"]
mod alloc;

#[global_allocator]
static PEAK: alloc::Peak = alloc::Peak;

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut seconds = 60.0f64;
    let mut only: Option<String> = None;
    let mut seed = 1u64;
    let mut json: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--target" => only = Some(value()?),
            "--seed" => seed = value()?.parse()?,
            "--json" => json = Some(value()?.into()),
            other => anyhow::bail!("unknown argument {other} (--seconds S, --target NAME, --seed N, --json FILE)"),
        }
    }
    let work = std::env::temp_dir().join(format!("revive-fuzz-{}", std::process::id()));
    let targets = revive::fuzz::targets(&work)?;
    let chosen: Vec<_> = targets.iter().filter(|t| only.as_deref().is_none_or(|o| o == t.name)).collect();
    anyhow::ensure!(!chosen.is_empty(), "no target named {:?}; targets: {}", only, targets.iter().map(|t| t.name).collect::<Vec<_>>().join(", "));
    let limits = revive::fuzz::Limits { reset: &alloc::reset, peak: &alloc::peak };
    std::panic::set_hook(Box::new(|_| {}));
    let per = Duration::from_secs_f64(seconds / chosen.len() as f64);
    let mut reports = vec![];
    for (i, t) in chosen.iter().enumerate() {
        let r = revive::fuzz::run(t, seed + i as u64, per, usize::MAX, &limits);
        println!(
            "{:<12} {:>8} inputs  {:>8} accepted  {:>8} rejected  panics {}  unnamed errors {}  oversized {}  ({:.0} s)",
            r.target, r.inputs, r.accepted, r.rejected, r.panics.len(), r.unnamed.len(), r.oversized.len(), r.seconds
        );
        for p in r.panics.iter().chain(&r.unnamed).take(5) {
            println!("    {p}");
        }
        reports.push(r);
    }
    let _ = std::fs::remove_dir_all(&work);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&reports)?)?;
    }
    anyhow::ensure!(reports.iter().all(|r| r.clean()), "the fuzz run found problems (above)");
    Ok(())
}
