//! Every shader, with every override-constant set the host uses, translates through naga to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL), one entry point at a time as wgpu
//! does. Metal and DX12 cannot run here, so this is how a shader that would break on a Mac or on
//! Windows fails CI. Where spirv-val and glslangValidator are installed (.ci/run installs them),
//! the SPIR-V and GLSL are also checked by the Khronos tools. Each shader also translates in
//! the variant that reads its parameters as immediates (push constants), as built on devices
//! that have them.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;
use revive::gpu::immediate_source;
use revive::shaders::{all_variants, cooperative_variants, subgroup_variants};
use std::process::Command;

fn tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}

fn check_with(tool: &str, args: &[&str], bytes: &[u8], ext: &str, what: &str) -> Result<(), String> {
    let path = std::env::temp_dir().join(format!("revive-{}-{}.{ext}", std::process::id(), what.replace([' ', ':', '/'], "_")));
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let out = Command::new(tool).args(args).arg(&path).output().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        return Err(format!("{tool} rejects {what}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// The workgroup memory WebGPU and Vulkan guarantee (`maxComputeWorkgroupStorageSize`): a
/// kernel above it would fail to build on some adapter (Metal and DX12 offer 32 KiB).
const PORTABLE_WORKGROUP_BYTES: u32 = 16384;

/// Bytes of workgroup memory entry point `index` uses (the variables it reaches).
fn workgroup_bytes(module: &naga::Module, info: &naga::valid::ModuleInfo, index: usize) -> u32 {
    let uses = info.get_entry_point(index);
    module
        .global_variables
        .iter()
        .filter(|(h, g)| g.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum()
}

/// One entry point of a validated module written for Vulkan, Metal and DX12 as wgpu would
/// (SPIR-V 1.3, MSL `msl_version`, HLSL shader model 6.0 with immediates in their own register).
struct Translations {
    spirv: Result<Vec<u32>, String>,
    msl: Result<String, String>,
    hlsl: Result<String, String>,
}

fn translate(module: &naga::Module, info: &naga::valid::ModuleInfo, entry: &str, msl_version: (u8, u8)) -> Translations {
    let spv_opts = spv::Options { lang_version: (1, 3), ..Default::default() };
    let spv_pipe = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string() };
    let spirv = spv::write_vec(module, info, &spv_opts, Some(&spv_pipe)).map_err(|e| format!("SPIR-V: {e:?}"));
    let msl_opts = msl::Options { lang_version: msl_version, fake_missing_bindings: true, ..Default::default() };
    let msl_pipe = msl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())), ..Default::default() };
    let msl = msl::write_string(module, info, &msl_opts, &msl_pipe).map(|(s, _)| s).map_err(|e| format!("MSL: {e:?}"));
    // DX12 puts immediates in root constants; wgpu gives them a register of their own.
    let immediates_target = Some(hlsl::BindTarget { space: 0, register: 15, ..Default::default() });
    let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, fake_missing_bindings: true, immediates_target, ..Default::default() };
    let hlsl_pipe = hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())) };
    let mut out = String::new();
    let hlsl = hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipe).write(module, info, None).map(|_| out).map_err(|e| format!("HLSL: {e:?}"));
    Translations { spirv, msl, hlsl }
}

impl Translations {
    /// What failed: a backend that could not write the entry point, or SPIR-V that spirv-val
    /// (where installed) rejects.
    fn problems(self, what: &str, spirv_val: bool) -> Vec<String> {
        let mut out = vec![];
        match self.spirv {
            Ok(words) if spirv_val => {
                if let Err(e) = check_with("spirv-val", &["--target-env", "vulkan1.1"], bytemuck::cast_slice(&words), "spv", what) {
                    out.push(e);
                }
            }
            Ok(_) => {}
            Err(e) => out.push(format!("{what}: {e}")),
        }
        out.extend([self.msl.err(), self.hlsl.err()].into_iter().flatten().map(|e| format!("{what}: {e}")));
        out
    }
}

#[test]
fn every_shader_translates_to_every_backend() {
    let spirv_val = tool("spirv-val");
    let glslang = tool("glslangValidator");
    if std::env::var("CI").is_ok() {
        assert!(spirv_val && glslang, "CI must install spirv-tools and glslang-tools");
    }
    let mut failures = vec![];
    let mut translated = 0;
    // The immediates variant exists where every parameter struct of the shader fits 256 bytes
    // (what GPUs offer; rope's frequency table does not and always uses the uniform arena).
    let immediates_fit = |shader: revive::shaders::Shader| {
        let module = naga::front::wgsl::parse_str(shader.source).expect("parses (checked below)");
        let first = module.entry_points[0].name.clone();
        revive::gpu::reflect(shader, &first).is_ok_and(|r| r.shader_params_max <= 256)
    };
    let mut fitting = vec![];
    let variants = all_variants().into_iter().flat_map(|(shader, constants)| {
        let mut v = vec![(shader, shader.source.to_string(), false, constants.clone())];
        if immediates_fit(shader) {
            fitting.push(shader.name);
            v.push((shader, immediate_source(shader.source), true, constants));
        }
        v
    }).collect::<Vec<_>>();
    fitting.dedup();
    assert!(fitting.len() >= 10, "only {fitting:?} have an immediates variant");
    for (shader, source, immediate, constants) in variants {
        let name = format!("{}{}", shader.name, if immediate { " (immediates)" } else { "" });
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
        let caps = if immediate { Capabilities::IMMEDIATES } else { Capabilities::empty() };
        let info = Validator::new(ValidationFlags::all(), caps)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name} does not validate: {e:?}"));
        let pipeline_constants: naga::back::PipelineConstants =
            constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let entries: Vec<String> = module.entry_points.iter().map(|e| e.name.clone()).collect();
        assert!(!entries.is_empty(), "{name} has no entry points");
        for entry in entries {
            let what = format!("{name}:{entry} {constants:?}");
            let (module, info) = match naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, &entry)),
                &pipeline_constants,
            ) {
                Ok(x) => x,
                Err(e) => {
                    failures.push(format!("{what}: overrides: {e:?}"));
                    continue;
                }
            };
            let index = module.entry_points.iter().position(|e| e.name == entry).expect("the entry point is listed");
            let shared = workgroup_bytes(&module, &info, index);
            if shared > PORTABLE_WORKGROUP_BYTES {
                failures.push(format!("{what}: {shared} bytes of workgroup memory, above the {PORTABLE_WORKGROUP_BYTES} every adapter offers"));
            }
            failures.extend(translate(&module, &info, &entry, (2, 1)).problems(&what, spirv_val));
            for version in [glsl::Version::new_gles(310), glsl::Version::Desktop(430)] {
                let opts = glsl::Options { version, ..Default::default() };
                let pipe = glsl::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.clone(), multiview: None };
                let mut out = String::new();
                let result = glsl::Writer::new(&mut out, &module, &info, &opts, &pipe, naga::proc::BoundsCheckPolicies::default())
                    .and_then(|mut w| w.write());
                match result {
                    Ok(_) => {
                        if glslang {
                            if let Err(e) = check_with("glslangValidator", &[], out.as_bytes(), "comp", &format!("{what} {version:?}")) {
                                failures.push(e);
                            }
                        }
                    }
                    Err(e) => failures.push(format!("{what}: GLSL {version:?}: {e:?}")),
                }
            }
            translated += 1;
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(translated >= 40, "only {translated} entry points translated");
}

#[test]
fn the_cooperative_matrix_shader_translates_for_vulkan_and_metal() {
    // wgpu offers cooperative matrices on Vulkan (VK_KHR_cooperative_matrix) and Metal
    // (simdgroup matrices) only, and naga writes them for SPIR-V and MSL only, so those are
    // the targets; HLSL's refusal is checked so a naga that learns it is noticed. The spirv-val
    // of Debian 12 (2023.1) predates SPV_KHR_cooperative_matrix: an "invalid capability" from
    // it is that, reported and tolerated; any other complaint fails.
    let spirv_val = tool("spirv-val");
    let mut failures = vec![];
    for (shader, constants) in cooperative_variants() {
        for (source, immediate) in [(shader.source.to_string(), false), (immediate_source(shader.source), true)] {
            let name = format!("{}{} {constants:?}", shader.name, if immediate { " (immediates)" } else { "" });
            let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
            let caps = Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP | if immediate { Capabilities::IMMEDIATES } else { Capabilities::empty() };
            let info = Validator::new(ValidationFlags::all(), caps).validate(&module).unwrap_or_else(|e| panic!("{name} does not validate: {e:?}"));
            let overrides: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            let entry = "matmul_coop".to_string();
            let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((ShaderStage::Compute, &entry)), &overrides)
                .unwrap_or_else(|e| panic!("{name}: overrides: {e:?}"));
            let out = translate(&module, &info, &entry, (2, 3));
            match out.spirv {
                Ok(words) if spirv_val => match check_with("spirv-val", &["--target-env", "vulkan1.1"], bytemuck::cast_slice(&words), "spv", &name) {
                    Err(e) if e.contains("Invalid capability operand: 6022") => eprintln!("{name}: this spirv-val does not know SPV_KHR_cooperative_matrix"),
                    Err(e) => failures.push(e),
                    Ok(()) => {}
                },
                Ok(_) => {}
                Err(e) => failures.push(format!("{name}: {e}")),
            }
            if let Err(e) = out.msl {
                failures.push(format!("{name}: {e}"));
            }
            if out.hlsl.is_ok() {
                failures.push(format!("{name}: naga now writes cooperative matrices in HLSL: DX12 could offer them"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_subgroup_shaders_translate_for_vulkan_metal_and_dx12() {
    // Subgroups exist on Vulkan, Metal and DX12 (wgpu's GL has none), so the lanes kernels
    // (matmul and attention) must translate to SPIR-V, MSL and HLSL, every entry point in every
    // override set and with immediates.
    let spirv_val = tool("spirv-val");
    let mut failures = vec![];
    let mut translated = 0;
    for (shader, constants) in subgroup_variants() {
        for (source, immediate) in [(shader.source.to_string(), false), (immediate_source(shader.source), true)] {
            let name = format!("{}{} {constants:?}", shader.name, if immediate { " (immediates)" } else { "" });
            let module = naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| panic!("{name} does not parse:\n{}", e.emit_to_string(&source)));
            let caps = Capabilities::SUBGROUP | if immediate { Capabilities::IMMEDIATES } else { Capabilities::empty() };
            let info = Validator::new(ValidationFlags::all(), caps)
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name} does not validate: {e:?}"));
            let overrides: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            for entry in module.entry_points.iter().map(|e| e.name.clone()) {
                let what = format!("{name}:{entry}");
                let (module, info) = naga::back::pipeline_constants::process_overrides(&module, &info, Some((ShaderStage::Compute, &entry)), &overrides)
                    .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
                failures.extend(translate(&module, &info, &entry, (2, 1)).problems(&what, spirv_val));
                translated += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    // matmul_lanes' two kernels in 16 override sets (8 × two row counts of the dot kernel),
    // attention's three lanes kernels; each with and without immediates.
    assert_eq!(translated, 2 * (2 * 16 + 3), "every entry point in every override set, with and without immediates");
}
