//! `revive bench svd`: time to the top-k singular triplets (GPU power iteration) against the
//! CPU SVD, with the accuracy reached.

use anyhow::{Context, Result};
use revive::gpu::{BackendChoice, Gpu};

#[derive(clap::Args)]
pub(in crate::cli) struct Args {
    /// MxN:k1,k2,… (repeat the flag); default 576x1536:32,128,512 and 4096x4096:64,256.
    #[arg(long = "case")]
    cases: Vec<String>,
    #[arg(long)]
    no_cpu: bool,
    /// Where each check's small (p×p) SVD runs: auto (the GPU unless the adapter is a CPU), gpu
    /// (one-sided Jacobi), host (faer, f64); a list runs each k once per entry.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    ritz: Vec<revive::linalg::svd::Ritz>,
    #[arg(long, default_value_t = revive::linalg::svd::SvdOptions::default().tol)]
    tol: f64,
    /// Write the matrices here (safetensors) for benches/baselines/torch_svd.py.
    #[arg(long)]
    save: Option<std::path::PathBuf>,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

pub(super) fn run(choice: BackendChoice, a: Args) -> Result<()> {
    let Args { cases, no_cpu, ritz, tol, save, json } = a;
    let gpu = Gpu::new(choice)?;
    let cases = if cases.is_empty() { vec!["576x1536:32,128,512".to_string(), "4096x4096:64,256".to_string()] } else { cases };
    if let Some(dir) = &save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let opts = revive::linalg::svd::SvdOptions { tol, ..Default::default() };
    let mut rows = vec![];
    for c in &cases {
        let (m, n, ks) = parse_svd_case(c)?;
        eprintln!("{m}×{n}, k = {ks:?} …");
        rows.extend(revive::bench::svd::run(&gpu, m, n, &ks, &ritz, !no_cpu, &opts, save.as_deref())?);
    }
    println!("{}", revive::bench::svd::table(&gpu.label(), &rows));
    if let Some(path) = json {
        let doc = serde_json::json!({ "adapter": gpu.label(), "driver": gpu.info().driver_info, "tol": tol, "rows": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn parse_svd_case(c: &str) -> Result<(usize, usize, Vec<usize>)> {
    let bad = || anyhow::anyhow!("--case {c:?}: expected MxN:k1,k2,… (e.g. 576x1536:32,128)");
    let (dims, ks) = c.split_once(':').ok_or_else(bad)?;
    let (m, n) = dims.split_once('x').ok_or_else(bad)?;
    let (m, n): (usize, usize) = (m.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    let ks = ks.split(',').map(|k| k.trim().parse::<usize>().map_err(|_| bad())).collect::<Result<Vec<_>>>()?;
    anyhow::ensure!(m > 0 && n > 0 && !ks.is_empty() && ks.iter().all(|&k| k >= 1 && k <= m.min(n)), "--case {c:?}: need 1 ≤ k ≤ min(M, N)");
    Ok((m, n, ks))
}
