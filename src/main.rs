//! The `revive` command line: a thin layer over the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use revive::gpu::{BackendChoice, Gpu};

#[derive(Parser)]
#[command(name = "revive", version, about = "Knowledge editing of language models on any GPU, with REVIVE spectral protection")]
struct Cli {
    /// GPU backend: auto, vulkan, metal, dx12 or gl.
    #[arg(long, global = true, env = "REVIVE_BACKEND")]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the GPU adapters: name, backend, driver, the features and limits that matter.
    Info,
    /// Measure speed against a baseline run in the same process.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// GFLOP/s of the tuned matmul, the 16x16-tile baseline and a CPU SGEMM on square sizes.
    Matmul {
        /// Square sizes to measure (repeat the flag).
        #[arg(long = "size", default_values_t = vec![256usize, 512, 1024])]
        sizes: Vec<usize>,
        /// Skip the CPU baseline (it is slow for large sizes on small machines).
        #[arg(long)]
        no_cpu: bool,
        /// Also write the rows as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = BackendChoice::resolve(cli.backend.as_deref())?;
    match cli.command {
        Command::Info => info(choice),
        Command::Bench { what: Bench::Matmul { sizes, no_cpu, json } } => {
            let gpu = Gpu::new(choice)?;
            let rows = revive::bench::matmul::run(&gpu, &sizes, no_cpu)?;
            println!("{}", revive::bench::matmul::table(&gpu.label(), &rows));
            if let Some(path) = json {
                let doc = serde_json::json!({ "adapter": gpu.label(), "driver": gpu.info().driver_info, "rows": rows });
                std::fs::write(&path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn info(choice: BackendChoice) -> Result<()> {
    let adapters = Gpu::summaries(choice);
    if adapters.is_empty() {
        return Err(revive::Error::NoAdapter { tried: choice.to_string(), hint: choice.install_hint().into() }.into());
    }
    for (i, a) in adapters.iter().enumerate() {
        let (info, l) = (&a.info, &a.limits);
        let pick = if i == 0 { "  <- chosen by --backend auto" } else { "" };
        println!("[{i}] {} ({:?}, {:?}){pick}", info.name, info.backend, info.device_type);
        println!("    driver: {} {}", info.driver, info.driver_info);
        let feats = [
            (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            (wgpu::Features::SHADER_F16, "shader-f16"),
            (wgpu::Features::SUBGROUP, "subgroup"),
        ];
        let have: Vec<&str> = feats.iter().filter(|(f, _)| a.features.contains(*f)).map(|(_, n)| *n).collect();
        println!("    features: {}", if have.is_empty() { "-".into() } else { have.join(", ") });
        println!(
            "    limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} storage buffers/stage",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "            {} invocations/workgroup, {} workgroups/dimension, storage offset alignment {} B",
            l.max_compute_invocations_per_workgroup, l.max_compute_workgroups_per_dimension, l.min_storage_buffer_offset_alignment
        );
    }
    Ok(())
}
