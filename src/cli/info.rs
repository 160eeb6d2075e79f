//! `revive info`: the GPU adapters, the features and limits that matter.

use anyhow::Result;
use revive::gpu::{BackendChoice, Gpu};

pub(super) fn run(choice: BackendChoice) -> Result<()> {
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
            (wgpu::Features::IMMEDIATES, "immediates"),
            (wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX, "cooperative-matrix"),
        ];
        let have: Vec<&str> = feats.iter().filter(|(f, _)| a.features.contains(*f)).map(|(_, n)| *n).collect();
        println!("    features: {}", if have.is_empty() { "-".into() } else { have.join(", ") });
        let coop = if a.cooperative_matmul { "available (REVIVE_COOPERATIVE=1 enables it)" } else { "no (needs f16 16×16×16 cooperative matrices with f32 accumulators and 32-wide subgroups)" };
        println!("    cooperative-matrix matmul: {coop}");
        let subgroups = format!("{}–{} lanes", info.subgroup_min_size, info.subgroup_max_size);
        let lanes = if a.lanes_kernels { "yes".to_string() } else { format!("no (needs subgroups of exactly 8 lanes; {})", if a.features.contains(wgpu::Features::SUBGROUP) { subgroups.as_str() } else { "no subgroups" }) };
        println!("    lanes kernels, matmul and attention (software adapters): {lanes}");
        println!(
            "    limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} storage buffers/stage",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_storage_buffers_per_shader_stage
        );
        println!(
            "            {} invocations/workgroup, {} workgroups/dimension, storage offset alignment {} B, immediates {} B",
            l.max_compute_invocations_per_workgroup, l.max_compute_workgroups_per_dimension, l.min_storage_buffer_offset_alignment, l.max_immediate_size
        );
    }
    Ok(())
}
