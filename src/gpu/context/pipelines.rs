//! The pipeline cache: shader modules built once (with or without wgpu's runtime checks), and
//! compute pipelines by shader, entry point and override constants, each with the layout its
//! storage signature shares with every kernel of the same signature.

use super::Gpu;
use crate::error::{Error, Result};
use crate::gpu::binding::{immediate_source, reflect, KernelLayout, Params, Reflection, Signature};
use crate::shaders::Shader;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Pipelines by (shader, entry point, override constants as bits). A lookup allocates
/// nothing: it runs for every dispatch.
#[derive(Default)]
pub(super) struct PipelineCache {
    table: hashbrown::HashTable<(PipelineKey, Arc<Kernel>)>,
}

struct PipelineKey {
    shader: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

fn pipeline_hash(shader: &str, entry: &str, constants: impl Iterator<Item = (&'static str, u64)>) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    (shader, entry).hash(&mut h);
    for (name, bits) in constants {
        (name, bits).hash(&mut h);
    }
    h.finish()
}

impl PipelineCache {
    fn find(&self, hash: u64, shader: &str, entry: &str, constants: &[(&'static str, f64)]) -> Option<&Arc<Kernel>> {
        self.table
            .find(hash, |(k, _)| {
                k.shader == shader
                    && k.entry == entry
                    && k.constants.len() == constants.len()
                    && k.constants.iter().zip(constants).all(|(a, b)| a.0 == b.0 && a.1 == b.1.to_bits())
            })
            .map(|(_, kernel)| kernel)
    }

    fn insert(&mut self, hash: u64, key: PipelineKey, kernel: Arc<Kernel>) {
        self.table.insert_unique(hash, (key, kernel), |(k, _)| pipeline_hash(k.shader, k.entry, k.constants.iter().copied()));
    }
}

/// A compute pipeline with the storage signature its bind groups follow and the layout they
/// are built for (shared with every kernel of the same signature).
#[derive(Clone)]
pub struct Kernel {
    pub(super) pipeline: Arc<wgpu::ComputePipeline>,
    pub(super) signature: Signature,
    pub(super) layout: KernelLayout,
    pub(super) params: Params,
}

impl Kernel {
    pub fn pipeline(&self) -> &Arc<wgpu::ComputePipeline> {
        &self.pipeline
    }
    /// Storage bindings 1..=n: `true` where the kernel only reads.
    pub fn signature(&self) -> &[bool] {
        &self.signature
    }
    /// How it receives its parameters.
    pub fn params(&self) -> Params {
        self.params
    }
}

impl Gpu {
    fn module(&self, shader: Shader, immediate: bool) -> Result<wgpu::ShaderModule> {
        let mut modules = self.shared.modules.lock().unwrap();
        if let Some(m) = modules.get(&(shader.name, immediate)) {
            return Ok(m.clone());
        }
        let source = if immediate { immediate_source(shader.source).into() } else { std::borrow::Cow::Borrowed(shader.source) };
        if let Ok(dir) = std::env::var("REVIVE_DUMP_WGSL") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(format!("{dir}/{}{}.wgsl", shader.name, if immediate { "-immediate" } else { "" }), source.as_ref());
        }
        let scope = self.shared.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor { label: Some(shader.name), source: wgpu::ShaderSource::Wgsl(source) };
        let module = if self.shared.checked {
            self.shared.device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel keeps its indices inside its bindings and its loops finite
            // by construction (the host sizes each dispatch and binding from the same shapes
            // it passes in the parameters); the kernel tests run in both modes in CI, and
            // REVIVE_CHECKED=1 turns the checks back on when a kernel is in doubt.
            unsafe { self.shared.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        if let Some(e) = pollster::block_on(scope.pop()) {
            if self.is_lost() {
                return Err(self.gpu_error(e.to_string()));
            }
            return Err(Error::Shader { shader: shader.name.into(), entry: "*".into(), reason: e.to_string() });
        }
        modules.insert((shader.name, immediate), module.clone());
        Ok(module)
    }

    /// The compute pipeline for (shader, entry point, override constants), built once, with
    /// the layout its signature shares with every other kernel of the same signature.
    pub fn pipeline(&self, shader: Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Result<Arc<Kernel>> {
        let hash = pipeline_hash(shader.name, entry, constants.iter().map(|(k, v)| (*k, v.to_bits())));
        if let Some(p) = self.shared.pipelines.lock().unwrap().find(hash, shader.name, entry, constants) {
            return Ok(p.clone());
        }
        let start = Instant::now();
        let built = self.build_pipeline(shader, entry, constants);
        self.shared.counters.pipeline_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let kernel = Arc::new(built?);
        self.shared.counters.pipelines.fetch_add(1, Ordering::Relaxed);
        let mut pipelines = self.shared.pipelines.lock().unwrap();
        // Another thread may have built it meanwhile: one entry per key.
        if let Some(p) = pipelines.find(hash, shader.name, entry, constants) {
            return Ok(p.clone());
        }
        let key = PipelineKey { shader: shader.name, entry, constants: constants.iter().map(|(k, v)| (*k, v.to_bits())).collect() };
        pipelines.insert(hash, key, kernel.clone());
        Ok(kernel)
    }

    fn build_pipeline(&self, shader: Shader, entry: &'static str, constants: &[(&'static str, f64)]) -> Result<Kernel> {
        let Reflection { signature, params_size, shader_params_max } = reflect(shader, entry)?;
        let params = if shader_params_max.div_ceil(4) * 4 <= self.shared.immediates { Params::Immediate(params_size.div_ceil(4) * 4) } else { Params::Arena };
        let module = self.module(shader, params != Params::Arena)?;
        let layout = self.shared.layouts.lock().unwrap().get(&self.shared.device, &signature, params).clone();
        let scope = self.shared.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self.shared.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&layout.pipeline),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // Every kernel writes its shared memory before reading it.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            if self.is_lost() {
                return Err(self.gpu_error(e.to_string()));
            }
            return Err(Error::Shader { shader: shader.name.into(), entry: entry.into(), reason: e.to_string() });
        }
        Ok(Kernel { pipeline: Arc::new(pipeline), signature, layout, params })
    }
}
