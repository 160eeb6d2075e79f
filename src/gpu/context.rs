//! The GPU context: adapter choice, device with the adapter's own limits, pipeline cache,
//! command recording, host <-> device copies and timing.

use super::backend::BackendChoice;
use super::pool::{BufferPool, PoolStats};
use crate::error::{Error, Result};
use crate::shaders::Shader;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wgpu::util::DeviceExt;

/// How large one dispatch and one binding may be. Work beyond either is split into pieces.
/// Defaults come from the adapter; tests shrink them to exercise the splitting on small data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    pub max_workgroups: u32,
    pub max_binding_bytes: u64,
}

/// One storage binding: a byte range of a buffer.
#[derive(Clone, Copy)]
pub struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// What `revive info` shows about an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    timestamps: bool,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pool: Arc<BufferPool>,
    recorder: Mutex<Recorder>,
    errors: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pending: usize,
}

/// Submitting every few dozen dispatches lets the GPU start while the host records the rest.
const DISPATCHES_PER_SUBMIT: usize = 64;

/// A handle to one device. Clones share the device, queue, caches and pool; each clone has its
/// own split limits and poison switch.
#[derive(Clone)]
pub struct Gpu {
    shared: Arc<Shared>,
    split: SplitLimits,
    poison: bool,
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn device_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // GL is the fallback: it has fewer features and slower dispatch than the native APIs.
    let backend = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
    (kind, backend)
}

impl Gpu {
    /// All adapters the choice can reach, best first.
    pub fn adapters(choice: BackendChoice) -> Vec<wgpu::Adapter> {
        let inst = instance(choice.backends());
        let mut adapters = pollster::block_on(inst.enumerate_adapters(choice.backends()));
        adapters.retain(|a| a.get_info().backend != wgpu::Backend::Noop);
        adapters.sort_by_key(|a| device_rank(&a.get_info()));
        adapters
    }

    pub fn summaries(choice: BackendChoice) -> Vec<AdapterSummary> {
        Self::adapters(choice)
            .into_iter()
            .map(|a| AdapterSummary { info: a.get_info(), features: a.features(), limits: a.limits() })
            .collect()
    }

    /// Opens the best adapter for the choice. `REVIVE_ADAPTER=substring` picks by name.
    pub fn new(choice: BackendChoice) -> Result<Gpu> {
        let mut adapters = Self::adapters(choice);
        if let Ok(want) = std::env::var("REVIVE_ADAPTER") {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        let adapter = adapters.into_iter().next().ok_or_else(|| Error::NoAdapter {
            tried: backend_names(choice),
            hint: choice.install_hint().to_string(),
        })?;
        Self::open(adapter)
    }

    /// One context per adapter present, for tests that must pass on every backend.
    pub fn all() -> Vec<Result<Gpu>> {
        Self::adapters(BackendChoice::Auto).into_iter().map(Self::open).collect()
    }

    pub fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        // wgpu's default limits are far below real hardware (e.g. 128 MiB bindings);
        // ask for what the adapter has.
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let required_features =
            if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("revive"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device { adapter: info.name.clone(), reason: e.to_string() })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            sink.lock().unwrap().push(e.to_string());
        }));
        let reuse = std::env::var("REVIVE_NO_POOL").map(|v| v.is_empty() || v == "0").unwrap_or(true);
        let split = SplitLimits {
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            max_binding_bytes: limits.max_storage_buffer_binding_size.min(limits.max_buffer_size),
        };
        let poison = std::env::var("REVIVE_POISON").map(|v| !v.is_empty() && v != "0").unwrap_or(false);
        Ok(Gpu {
            shared: Arc::new(Shared {
                device,
                queue,
                info,
                limits,
                timestamps,
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                pool: BufferPool::new(reuse),
                recorder: Mutex::default(),
                errors,
            }),
            split,
            poison,
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.shared.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.shared.queue
    }
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.shared.info
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.shared.limits
    }
    pub fn has_timestamps(&self) -> bool {
        self.shared.timestamps
    }
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.shared.pool
    }
    pub fn pool_stats(&self) -> PoolStats {
        self.shared.pool.stats()
    }
    pub fn split_limits(&self) -> SplitLimits {
        self.split
    }
    pub fn poison(&self) -> bool {
        self.poison
    }

    /// A name for messages and tables: "llvmpipe (Vulkan)".
    pub fn label(&self) -> String {
        format!("{} ({:?})", self.shared.info.name, self.shared.info.backend)
    }

    /// The same device with other split limits (tests use tiny ones to exercise splitting).
    pub fn with_split_limits(&self, split: SplitLimits) -> Gpu {
        let hard = SplitLimits {
            max_workgroups: self.shared.limits.max_compute_workgroups_per_dimension,
            max_binding_bytes: self.shared.limits.max_storage_buffer_binding_size,
        };
        Gpu {
            shared: self.shared.clone(),
            split: SplitLimits {
                max_workgroups: split.max_workgroups.clamp(1, hard.max_workgroups),
                max_binding_bytes: split.max_binding_bytes.clamp(256, hard.max_binding_bytes),
            },
            poison: self.poison,
        }
    }

    /// The same device; with poison on, every new tensor starts as NaN so a kernel that leaves
    /// an element unwritten is caught.
    pub fn with_poison(&self, poison: bool) -> Gpu {
        Gpu { poison, ..self.clone() }
    }

    /// Byte alignment of a storage binding's offset (at least 16, for vec4 arrays).
    pub fn binding_alignment(&self) -> u64 {
        (self.shared.limits.min_storage_buffer_offset_alignment as u64).max(16)
    }

    fn module(&self, shader: Shader) -> Result<wgpu::ShaderModule> {
        let mut modules = self.shared.modules.lock().unwrap();
        if let Some(m) = modules.get(shader.name) {
            return Ok(m.clone());
        }
        if let Ok(dir) = std::env::var("REVIVE_DUMP_WGSL") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(format!("{dir}/{}.wgsl", shader.name), shader.source);
        }
        let scope = self.shared.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.shared.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { shader: shader.name.into(), entry: "*".into(), reason: e.to_string() });
        }
        modules.insert(shader.name, module.clone());
        Ok(module)
    }

    /// The compute pipeline for (shader, entry point, override constants), built once.
    pub fn pipeline(
        &self,
        shader: Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key: PipelineKey =
            (shader.name, entry, constants.iter().map(|(k, v)| (*k, v.to_bits())).collect());
        if let Some(p) = self.shared.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(shader)?;
        let scope = self.shared.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self.shared.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
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
            return Err(Error::Shader { shader: shader.name.into(), entry: entry.into(), reason: e.to_string() });
        }
        let pipeline = Arc::new(pipeline);
        self.shared.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch: binding 0 is the metadata uniform, bindings 1.. the storage ranges.
    pub fn dispatch(
        &self,
        shader: Shader,
        entry: &'static str,
        constants: &[(&'static str, f64)],
        meta: &[u8],
        binds: &[Bind<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.shared.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::TooLarge {
                op: "dispatch",
                detail: format!("{entry}: {groups:?} workgroups exceed {max} per dimension (a splitting bug)"),
            });
        }
        let pipeline = self.pipeline(shader, entry, constants)?;
        let device = &self.shared.device;
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("meta"),
            contents: meta,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size),
                }),
            });
        }
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: None });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
        let mut r = self.shared.recorder.lock().unwrap();
        r.pending += 1;
        if r.pending >= DISPATCHES_PER_SUBMIT {
            self.submit_pending(&mut r);
        }
        Ok(())
    }

    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut r = self.shared.recorder.lock().unwrap();
        let enc = r.encoder.get_or_insert_with(|| {
            self.shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("revive") })
        });
        f(enc);
    }

    /// Submits recorded work without waiting for it.
    pub fn flush(&self) -> Result<()> {
        self.submit_pending(&mut self.shared.recorder.lock().unwrap());
        self.check_errors()
    }

    /// Submits under the recorder's lock, so no other thread's host write can slip in between
    /// taking the encoder and submitting it (it would run before the commands recorded earlier).
    fn submit_pending(&self, r: &mut Recorder) {
        r.pending = 0;
        if let Some(enc) = r.encoder.take() {
            self.shared.queue.submit(Some(enc.finish()));
        }
    }

    /// Submits recorded work and waits until the GPU has finished it.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.shared
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check_errors()
    }

    fn check_errors(&self) -> Result<()> {
        let mut errs = self.shared.errors.lock().unwrap();
        if errs.is_empty() {
            Ok(())
        } else {
            let msg = errs.join("; ");
            errs.clear();
            Err(Error::Gpu(msg))
        }
    }

    /// Host -> buffer. Pending work is submitted first: `write_buffer` would otherwise run before
    /// it and could overwrite a pooled buffer that recorded commands still read.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut r = self.shared.recorder.lock().unwrap();
        self.submit_pending(&mut r);
        self.shared.queue.write_buffer(buffer, offset, bytes);
        drop(r);
        self.check_errors()
    }

    /// Buffer -> host, waiting for all recorded work.
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(vec![]);
        }
        let padded = size.div_ceil(4) * 4;
        let staging = self.shared.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.record(|enc| enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded));
        self.flush()?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv()
            .map_err(|_| Error::Gpu("readback callback never ran".into()))?
            .map_err(|e| Error::Gpu(format!("mapping the readback buffer: {e}")))?;
        let bytes = slice
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading the mapped buffer: {e}")))?[..size as usize]
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Runs `f` and measures it: GPU time from timestamp queries where the adapter has them,
    /// and wall-clock time from submit to completion always.
    pub fn time(&self, f: impl FnOnce() -> Result<()>) -> Result<Timing> {
        self.sync()?;
        let queries = self.shared.timestamps.then(|| {
            self.shared.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        let mark = |index: u32| {
            if let Some(q) = &queries {
                self.record(|enc| {
                    let (begin, end) = if index == 0 { (Some(0), None) } else { (None, Some(1)) };
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("timestamp"),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: begin,
                            end_of_pass_write_index: end,
                        }),
                    });
                });
            }
        };
        let start = Instant::now();
        mark(0);
        f()?;
        mark(1);
        let gpu = match &queries {
            Some(q) => {
                let resolve = self.shared.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("timestamps"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                self.record(|enc| enc.resolve_query_set(q, 0..2, &resolve, 0));
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read(&resolve, 0, 16)?);
                let period = self.shared.queue.get_timestamp_period() as f64;
                (ticks[1] > ticks[0]).then(|| Duration::from_nanos(((ticks[1] - ticks[0]) as f64 * period) as u64))
            }
            None => {
                self.sync()?;
                None
            }
        };
        Ok(Timing { wall: start.elapsed(), gpu })
    }
}

/// A measured region: `gpu` is None where the adapter has no usable timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub wall: Duration,
    pub gpu: Option<Duration>,
}

impl Timing {
    /// The best measure available: GPU time, else wall-clock.
    pub fn best(&self) -> Duration {
        self.gpu.unwrap_or(self.wall)
    }
}

fn backend_names(choice: BackendChoice) -> String {
    match choice {
        BackendChoice::Auto => "vulkan, metal, dx12, gl".into(),
        other => other.to_string(),
    }
}
