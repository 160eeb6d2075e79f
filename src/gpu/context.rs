//! The GPU context: adapter choice, device with the adapter's own limits, command recording
//! and submission, errors and a lost device (the pipeline cache in context/pipelines.rs, host
//! <-> device copies and timing in context/transfer.rs, the counters in stats.rs, the kernel
//! modes in modes.rs, the measured kernel choices in choices.rs, the loss in lost.rs).

mod pipelines;
mod transfer;

pub use pipelines::Kernel;
pub use transfer::PendingRead;

use super::backend::BackendChoice;
use super::binding::{GroupCache, Layouts, Params};
use super::choices::Choices;
use super::lost::{self, LostState};
use super::modes::{env_flag, offers_cooperative_matrices, offers_lanes, KernelModes, COOPERATIVE_FEATURES};
use super::pool::{BufferPool, PoolStats};
use super::stats::{Counters, KernelTime, RuntimeStats};
use crate::error::{Error, Result};
use crate::shaders::Shader;
use pipelines::PipelineCache;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The buffer's creation number in the device's pool: its identity for the bind-group
    /// cache, so only `Tensor::bind` makes one.
    pub(crate) serial: u64,
    pub offset: u64,
    pub size: u64,
}

/// What `revive info` shows about an adapter.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Whether the cooperative-matrix matmul can run here ([`offers_cooperative_matrices`]).
    pub cooperative_matmul: bool,
    /// Whether the lanes kernels (matmul, attention) run here ([`offers_lanes`]).
    pub lanes_kernels: bool,
}

struct Shared {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    timestamps: bool,
    /// By shader name and whether it is the immediates variant.
    modules: Mutex<HashMap<(&'static str, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<PipelineCache>,
    layouts: Mutex<Layouts>,
    groups: Mutex<GroupCache>,
    /// Every dispatch's parameters live here, one slot each, written once per submit.
    params: wgpu::Buffer,
    params_align: u64,
    pool: Arc<BufferPool>,
    recorder: Mutex<Recorder>,
    /// Idle staging buffers of reads ([`Gpu::read_later`]): a read takes one, and gives it back
    /// when finished.
    staging: Mutex<Vec<wgpu::Buffer>>,
    timer: Mutex<Option<(wgpu::QuerySet, wgpu::Buffer)>>,
    counters: Counters,
    profile: Option<Mutex<HashMap<&'static str, (u64, Duration)>>>,
    /// Shader modules keep naga's injected bounds checks and loop bounding (REVIVE_CHECKED=1).
    checked: bool,
    /// Bytes of immediates a kernel may take its parameters in (0: every kernel reads them from
    /// the uniform arena): the device's limit where it has the feature, unless
    /// REVIVE_NO_IMMEDIATES=1.
    immediates: u32,
    /// Whether f16 16×16 cooperative matrices (f32 accumulators) were enabled (`KernelModes`).
    cooperative: bool,
    /// Whether subgroups exactly 8 wide were enabled, for the lanes kernels ([`offers_lanes`]).
    lanes: bool,
    /// Kernel choices measured on this adapter (`revive tune`): key → choice.
    choices: Mutex<Choices>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Set once the device is lost; every error after it is reported as the loss.
    lost: LostState,
    /// `REVIVE_LOSE_DEVICE_AFTER`: the submit after which to destroy this device (tests).
    lose_after: Option<u64>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // What a device did in its life, for tests that inject faults at a chosen submit.
        log::debug!("device of '{}' closed after {} submits", self.info.name, self.counters.submits.load(Ordering::Relaxed));
    }
}

#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    /// The open compute pass: consecutive dispatches share it; anything else recorded into the
    /// encoder (copies, timestamps) ends it first.
    pass: Option<wgpu::ComputePass<'static>>,
    pending: usize,
    /// The parameters of the dispatches recorded since the last submit, slot by slot.
    params: Vec<u8>,
}

/// Submitting every few dozen dispatches lets the GPU start while the host records the rest.
const DISPATCHES_PER_SUBMIT: usize = 64;
/// The bytes of parameters one dispatch may have: every kernel's `Meta` fits (rope's, with its
/// frequency table, is the largest). Each dispatch's slot is its own size rounded up to the
/// offset alignment; the binding window is this size.
pub const PARAMS_SIZE: u64 = 2048;
/// The most bytes of immediates a kernel takes its parameters in: Vulkan guarantees 128, GPUs
/// offer 256; a larger `Meta` (rope's frequency table) uses the uniform arena.
const MAX_IMMEDIATES: usize = 256;
/// The parameter buffer: when a submit's parameters would overflow it, the submit goes early.
const PARAMS_ARENA: u64 = 64 * 1024;

/// A handle to one device. Clones share the device, queue, caches and pool; each clone has its
/// own split limits, poison switch and first-use measurement switch.
#[derive(Clone)]
pub struct Gpu {
    shared: Arc<Shared>,
    split: SplitLimits,
    poison: bool,
    measure_on_first_use: bool,
    /// Threads of a workgroup that reduces one row (`row_threads`), where set.
    row_threads: Option<u32>,
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
            .map(|a| AdapterSummary { info: a.get_info(), features: a.features(), limits: a.limits(), cooperative_matmul: offers_cooperative_matrices(&a), lanes_kernels: offers_lanes(&a) })
            .collect()
    }

    /// Opens the best adapter for the choice. `REVIVE_ADAPTER=substring` picks by name.
    pub fn new(choice: BackendChoice) -> Result<Gpu> {
        let mut adapters = Self::adapters(choice);
        if let Ok(want) = std::env::var("REVIVE_ADAPTER") {
            let found: Vec<String> = adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want.to_lowercase()));
            if adapters.is_empty() && !found.is_empty() {
                return Err(Error::AdapterNotFound { want, found: found.join(", ") });
            }
        }
        if let Some((name, backend)) = lost::lost_adapter() {
            // Work that goes on after a loss stays on the adapter it started on: another would
            // give other bits (and another speed).
            adapters.retain(|a| a.get_info().name == name && a.get_info().backend == backend);
            if adapters.is_empty() {
                return Err(Error::LostAdapterAbsent { adapter: format!("{name} ({backend:?})") });
            }
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
        Self::open_with(adapter, KernelModes::from_env())
    }

    /// Opens the adapter with the kernels built as `modes` says (`open` follows the
    /// environment): tests compare the modes.
    pub fn open_with(adapter: wgpu::Adapter, modes: KernelModes) -> Result<Gpu> {
        let checked = modes.checked;
        let info = adapter.get_info();
        // wgpu's default limits are far below real hardware (e.g. 128 MiB bindings);
        // ask for what the adapter has.
        let limits = adapter.limits();
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let immediates = if adapter.features().contains(wgpu::Features::IMMEDIATES) && modes.immediates {
            limits.max_immediate_size.min(MAX_IMMEDIATES as u32)
        } else {
            0
        };
        let cooperative = modes.cooperative && offers_cooperative_matrices(&adapter);
        let lanes = offers_lanes(&adapter);
        let mut required_features = wgpu::Features::empty();
        if cooperative {
            required_features |= COOPERATIVE_FEATURES;
        }
        if lanes {
            required_features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if immediates > 0 {
            required_features |= wgpu::Features::IMMEDIATES;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("revive"),
            required_features,
            required_limits: limits.clone(),
            // SAFETY: wgpu's experimental features may have bugs with undefined behaviour; only
            // cooperative matrices are experimental here, asked for only on the user's request
            // (REVIVE_COOPERATIVE=1), and used by one kernel that is off by default.
            experimental_features: if cooperative { unsafe { wgpu::ExperimentalFeatures::enabled() } } else { wgpu::ExperimentalFeatures::disabled() },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device { adapter: info.name.clone(), reason: e.to_string() })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let choices = Mutex::new(Choices::load(&info));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("wgpu: {e}");
            sink.lock().unwrap().push(e.to_string());
        }));
        let lost = LostState::watch(&device, &info);
        let reuse = !env_flag("REVIVE_NO_POOL");
        let pool = BufferPool::new(reuse);
        pool.set_budget(memory_limit()?);
        let split = SplitLimits {
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            max_binding_bytes: limits.max_storage_buffer_binding_size.min(limits.max_buffer_size),
        };
        let poison = env_flag("REVIVE_POISON");
        let params_align = (limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kernel parameters"),
            size: PARAMS_ARENA,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let profile = env_flag("REVIVE_PROFILE").then(Mutex::default);
        Ok(Gpu {
            shared: Arc::new(Shared {
                device,
                queue,
                info,
                limits,
                timestamps,
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                layouts: Mutex::new(Layouts::new(PARAMS_SIZE)),
                groups: Mutex::default(),
                params,
                params_align,
                pool,
                recorder: Mutex::default(),
                staging: Mutex::default(),
                timer: Mutex::default(),
                counters: Counters::default(),
                profile,
                checked,
                immediates,
                cooperative,
                lanes,
                choices,
                errors,
                lost,
                lose_after: lost::injection_point(),
            }),
            split,
            poison,
            measure_on_first_use: true,
            row_threads: None,
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
    /// Whether shader modules keep wgpu's runtime checks (see `checked_shaders`).
    pub fn checked(&self) -> bool {
        self.shared.checked
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
    /// Counts of dispatches, passes, submits and created objects so far.
    pub fn runtime_stats(&self) -> RuntimeStats {
        let c = &self.shared.counters;
        RuntimeStats {
            dispatches: c.dispatches.load(Ordering::Relaxed),
            passes: c.passes.load(Ordering::Relaxed),
            submits: c.submits.load(Ordering::Relaxed),
            buffers: c.buffers.load(Ordering::Relaxed) + self.shared.pool.created(),
            bind_groups: self.shared.groups.lock().unwrap().created,
            readbacks: c.readbacks.load(Ordering::Relaxed),
            readback_bytes: c.readback_bytes.load(Ordering::Relaxed),
            waited_ns: c.waited_ns.load(Ordering::Relaxed),
            submit_ns: c.submit_ns.load(Ordering::Relaxed),
            pipelines: c.pipelines.load(Ordering::Relaxed),
            pipeline_ns: c.pipeline_ns.load(Ordering::Relaxed),
        }
    }

    /// With `REVIVE_PROFILE=1` every dispatch waits for the GPU and its wall time is charged to
    /// its entry point: (entry, dispatches, time), most expensive first. Empty otherwise.
    pub fn profile(&self) -> Vec<(&'static str, u64, Duration)> {
        let Some(p) = &self.shared.profile else { return vec![] };
        let mut v: Vec<_> = p.lock().unwrap().iter().map(|(k, (n, t))| (*k, *n, *t)).collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v
    }

    /// What `profile` gained since `before` (an earlier `profile`), most expensive first.
    pub fn profile_since(&self, before: &[(&'static str, u64, Duration)]) -> Vec<KernelTime> {
        let mut v: Vec<_> = self
            .profile()
            .into_iter()
            .map(|(k, n, t)| match before.iter().find(|b| b.0 == k) {
                Some(&(_, n0, t0)) => (k, n.saturating_sub(n0), t.saturating_sub(t0)),
                None => (k, n, t),
            })
            .filter(|x| x.1 > 0)
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v.into_iter().map(|(k, n, t)| KernelTime { kernel: k.to_string(), dispatches: n, ms: t.as_secs_f64() * 1e3 }).collect()
    }

    pub fn reset_profile(&self) {
        if let Some(p) = &self.shared.profile {
            p.lock().unwrap().clear();
        }
    }

    /// The measured choice for `key` on this adapter, if `revive tune` has made one.
    pub fn choice(&self, key: &str) -> Option<String> {
        self.shared.choices.lock().unwrap().table.get(key).cloned()
    }

    /// Records a measured choice (kept in memory; `save_choices` writes the table).
    pub fn set_choice(&self, key: &str, value: &str) {
        let mut choices = self.shared.choices.lock().unwrap();
        choices.table.insert(key.to_string(), value.to_string());
        choices.derived.clear();
        choices.generation += 1;
    }

    /// A decision derived from the measured choices for an exact key (the kernel `Auto` runs
    /// for one product shape), remembered until the next recorded choice: deriving it formats
    /// the shape class's key and searches the table, which for every dispatch showed in the
    /// host's profile of a decoded token (`docs/results.md`, "The host's time per dispatch").
    pub fn derived_choice(&self, key: [u64; 4], derive: impl FnOnce() -> u8) -> u8 {
        let generation = {
            let choices = self.shared.choices.lock().unwrap();
            if let Some(&value) = choices.derived.get(&key) {
                return value;
            }
            choices.generation
        };
        // Derived outside the lock: `derive` reads the choices itself.
        let value = derive();
        let mut choices = self.shared.choices.lock().unwrap();
        if choices.generation == generation {
            if choices.derived.len() >= super::choices::DERIVED_CAPACITY {
                choices.derived.clear();
            }
            choices.derived.insert(key, value);
        }
        value
    }

    /// Writes this adapter's choices to its file (atomically, merged with the file's under a
    /// lock) and returns the path. `keep_file` (a first use): where the file already has a
    /// choice this process also measured, the file's stays and this process runs it from now
    /// on, so that processes sharing the cache run the same kernels and give the same bits.
    pub fn save_choices(&self, keep_file: bool) -> Result<std::path::PathBuf> {
        self.shared.choices.lock().unwrap().save(&self.shared.info, keep_file)
    }

    pub fn split_limits(&self) -> SplitLimits {
        self.split
    }
    pub fn poison(&self) -> bool {
        self.poison
    }

    /// Whether the adapter is software on the CPU (lavapipe, llvmpipe, WARP): there a load
    /// costs far more than arithmetic and the kernel choices differ.
    pub fn is_cpu(&self) -> bool {
        self.shared.info.device_type == wgpu::DeviceType::Cpu
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
            ..self.clone()
        }
    }

    /// The same device; with poison on, every new tensor starts as NaN so a kernel that leaves
    /// an element unwritten is caught.
    pub fn with_poison(&self, poison: bool) -> Gpu {
        Gpu { poison, ..self.clone() }
    }

    /// The threads of a workgroup that reduces one row (the norms): 256 on a GPU, 8 on a CPU
    /// adapter, where a workgroup's invocations run as SIMD lanes in turn and every barrier of
    /// the reduction switches between all of them (a 128-token prefill's RMS norms 3× faster
    /// with 8; docs/results.md).
    pub fn row_threads(&self) -> u32 {
        self.row_threads.unwrap_or(if self.is_cpu() { 8 } else { 256 })
    }

    /// The same device with `threads` (a power of two, 1 to 256) per row-reducing workgroup:
    /// tests run every size on every adapter.
    pub fn with_row_threads(&self, threads: u32) -> Gpu {
        Gpu { row_threads: Some(threads.clamp(1, 256).next_power_of_two().min(256)), ..self.clone() }
    }

    /// A handle on which loading a model does not measure the matmul kernels
    /// (`model::tuning::tune_on_first_use`): for tests that share one device, where a
    /// measurement in one would change the kernel choices under another.
    pub fn without_first_use_measurement(&self) -> Gpu {
        Gpu { measure_on_first_use: false, ..self.clone() }
    }

    /// Whether loading a model may measure the matmul kernels first (see above).
    pub fn measures_on_first_use(&self) -> bool {
        self.measure_on_first_use
    }

    /// Byte alignment of a storage binding's offset (at least 16, for vec4 arrays).
    pub fn binding_alignment(&self) -> u64 {
        (self.shared.limits.min_storage_buffer_offset_alignment as u64).max(16)
    }

    /// Whether kernels take their parameters as immediates where they fit (see `Shared`).
    pub fn immediates(&self) -> u32 {
        self.shared.immediates
    }

    /// Whether the lanes kernels (the matmul's and attention's `Lanes`) can run: subgroups
    /// exactly 8 wide.
    pub fn subgroup_lanes(&self) -> bool {
        self.shared.lanes
    }

    /// Why `kernel` (a lanes kernel) cannot run here, where `subgroup_lanes` says so.
    pub fn lanes_missing(&self, kernel: &str) -> String {
        let info = self.info();
        format!(
            "{kernel} needs subgroups exactly 8 wide; {} has subgroups of {}–{} lanes{}",
            self.label(),
            info.subgroup_min_size,
            info.subgroup_max_size,
            if info.backend == wgpu::Backend::Gl { " (none on GL)" } else { "" }
        )
    }

    /// Whether the cooperative-matrix matmul (`Kernel::Coop`) can run: asked for and offered.
    pub fn cooperative_matrix(&self) -> bool {
        self.shared.cooperative
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
        let kernel = self.pipeline(shader, entry, constants)?;
        let params_room = match kernel.params {
            Params::Arena => PARAMS_SIZE,
            Params::Immediate(size) => size as u64,
        };
        if binds.len() != kernel.signature.len() || meta.len() as u64 > params_room {
            return Err(Error::Shader {
                shader: shader.name.into(),
                entry: entry.into(),
                reason: format!(
                    "the host bound {} storage ranges and {} bytes of parameters; the kernel declares {} ranges (parameters ≤ {params_room} bytes)",
                    binds.len(),
                    meta.len(),
                    kernel.signature.len()
                ),
            });
        }
        let arena = (kernel.params == Params::Arena).then_some((&self.shared.params, PARAMS_SIZE));
        let pool = &self.shared.pool;
        let group = self.shared.groups.lock().unwrap().get(&self.shared.device, &kernel.layout, arena, binds, pool.reuse(), pool.idle_drops());
        let profile_start = self.shared.profile.as_ref().map(|_| Instant::now());
        let mut r = self.shared.recorder.lock().unwrap();
        // Arena parameters take a slot of the submit's arena (which may first have to go).
        let offset = (kernel.params == Params::Arena).then(|| {
            if r.params.len() as u64 + PARAMS_SIZE > PARAMS_ARENA {
                self.submit_pending(&mut r);
            }
            let offset = r.params.len();
            r.params.extend_from_slice(meta);
            r.params.resize(offset + (meta.len() as u64).div_ceil(self.shared.params_align) as usize * self.shared.params_align as usize, 0);
            offset as u32
        });
        let pass = self.open_pass(&mut r);
        pass.set_pipeline(&kernel.pipeline);
        match (kernel.params, offset) {
            (Params::Immediate(size), _) => {
                // The whole declared block, zero past what the host gave (its trailing padding).
                let mut bytes = [0u8; MAX_IMMEDIATES];
                bytes[..meta.len()].copy_from_slice(meta);
                pass.set_bind_group(0, &group, &[]);
                pass.set_immediates(0, &bytes[..size as usize]);
            }
            (Params::Arena, offset) => pass.set_bind_group(0, &group, &[offset.expect("an arena slot was taken above")]),
        }
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.shared.counters.dispatches.fetch_add(1, Ordering::Relaxed);
        r.pending += 1;
        if r.pending >= DISPATCHES_PER_SUBMIT {
            self.submit_pending(&mut r);
        }
        drop(r);
        if let (Some(start), Some(profile)) = (profile_start, &self.shared.profile) {
            self.sync()?;
            let mut p = profile.lock().unwrap();
            let e = p.entry(entry).or_default();
            e.0 += 1;
            e.1 += start.elapsed();
        }
        Ok(())
    }

    /// The recorder's compute pass, begun if none is open.
    fn open_pass<'r>(&self, r: &'r mut Recorder) -> &'r mut wgpu::ComputePass<'static> {
        if r.pass.is_none() {
            let enc = r.encoder.get_or_insert_with(|| {
                self.shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("revive") })
            });
            let pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kernels"), timestamp_writes: None });
            r.pass = Some(pass.forget_lifetime());
            self.shared.counters.passes.fetch_add(1, Ordering::Relaxed);
        }
        r.pass.as_mut().expect("just opened")
    }

    /// Records non-dispatch commands; they end the open compute pass.
    fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut r = self.shared.recorder.lock().unwrap();
        r.pass = None;
        let enc = r.encoder.get_or_insert_with(|| {
            self.shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("revive") })
        });
        f(enc);
    }

    fn create_buffer(&self, label: &'static str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.shared.counters.buffers.fetch_add(1, Ordering::Relaxed);
        self.shared.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
    }

    /// Submits recorded work without waiting for it.
    pub fn flush(&self) -> Result<()> {
        self.submit_pending(&mut self.shared.recorder.lock().unwrap());
        self.check_errors()
    }

    /// Submits under the recorder's lock, so no other thread's host write can slip in between
    /// taking the encoder and submitting it (it would run before the commands recorded earlier).
    /// The parameters go to their buffer first: a queue write lands after the work submitted
    /// before it, so the previous submit has read its parameters by then.
    fn submit_pending(&self, r: &mut Recorder) -> Option<wgpu::SubmissionIndex> {
        r.pending = 0;
        r.pass = None;
        if !r.params.is_empty() {
            self.shared.queue.write_buffer(&self.shared.params, 0, &r.params);
            r.params.clear();
        }
        if let Some(enc) = r.encoder.take() {
            let commands = enc.finish();
            let start = Instant::now();
            let index = self.shared.queue.submit(Some(commands));
            self.shared.counters.submit_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let submits = self.shared.counters.submits.fetch_add(1, Ordering::Relaxed) + 1;
            if self.shared.lose_after == Some(submits) {
                lost::destroy(&self.shared.device, &self.shared.lost, format!("destroyed after submit {submits} by REVIVE_LOSE_DEVICE_AFTER, an injected fault"), true);
            }
            return Some(index);
        }
        None
    }

    /// Drops the cached bind groups and the pool's idle buffers, and waits until the device has
    /// finished the work that used them, so that their memory is the device's again.
    pub fn release_cached_groups(&self) -> Result<()> {
        self.shared.groups.lock().unwrap().clear();
        self.shared.pool.trim();
        self.sync()
    }

    /// Submits recorded work and waits until the GPU has finished it.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.poll(wgpu::PollType::wait_indefinitely())?;
        self.check_errors()
    }

    /// An error of the device: the loss, once it is lost (whatever the call itself reported).
    fn gpu_error(&self, message: String) -> Error {
        self.lost_or(Error::Gpu(message))
    }

    /// `e`, or the loss when the device is lost: after a loss any failure is the loss's.
    pub(crate) fn lost_or(&self, e: Error) -> Error {
        match self.shared.lost.reason() {
            Some(reason) => Error::DeviceLost { adapter: self.shared.info.name.clone(), reason },
            None => e,
        }
    }

    /// Waits for the device. wgpu 30 panics in `Device::poll` on a device error other than a
    /// timeout or a wrong submission index — which a driver's VK_ERROR_DEVICE_LOST is, once its
    /// callback has fired — so the panic is caught here, without the panic hook's report, and
    /// returned as the loss (or, on a device still alive, as the GPU error it names).
    fn poll(&self, poll: wgpu::PollType) -> Result<()> {
        let start = Instant::now();
        let polled = lost::caught(|| self.shared.device.poll(poll)).and_then(|r| r.map_err(|e| e.to_string()));
        self.shared.counters.waited_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        polled.map(|_| ()).map_err(|what| self.gpu_error(format!("waiting for the GPU: {what}")))
    }

    /// Destroys the device now, the way a driver reset takes it: every later wait or read on
    /// this context (and its clones) reports [`Error::DeviceLost`].
    pub fn destroy(&self) {
        lost::destroy(&self.shared.device, &self.shared.lost, "destroyed by this process (Gpu::destroy)".into(), false);
    }

    /// Whether the device has been lost (a driver reset, a watchdog, [`lost`]'s injected fault).
    pub fn is_lost(&self) -> bool {
        self.shared.lost.reason().is_some()
    }

    fn check_errors(&self) -> Result<()> {
        if self.shared.errors.lock().unwrap().is_empty() && !self.is_lost() {
            return Ok(());
        }
        // A device made invalid reports the loss only from a later maintenance pass, while the
        // calls after it already fail as invalid objects: one pass without waiting lets the
        // callback say whether these errors are the loss's.
        if !self.is_lost() {
            if let Err(e) = self.poll(wgpu::PollType::Poll) {
                self.shared.errors.lock().unwrap().push(e.to_string());
            }
        }
        let msg = std::mem::take(&mut *self.shared.errors.lock().unwrap()).join("; ");
        Err(self.lost_or(Error::Gpu(msg)))
    }
}

/// `REVIVE_MEMORY_LIMIT`: the most GPU memory the tensors may hold (e.g. `1.5GiB`).
fn memory_limit() -> Result<Option<u64>> {
    match std::env::var("REVIVE_MEMORY_LIMIT") {
        Ok(v) if !v.trim().is_empty() => super::pool::parse_size(&v)
            .map(Some)
            .ok_or_else(|| Error::Gpu(format!("REVIVE_MEMORY_LIMIT='{v}' is not a size (e.g. 2GiB, 512MiB or a number of bytes)"))),
        _ => Ok(None),
    }
}

fn backend_names(choice: BackendChoice) -> String {
    match choice {
        BackendChoice::Auto => "vulkan, metal, dx12, gl".into(),
        other => other.to_string(),
    }
}
