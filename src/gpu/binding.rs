//! Explicit bind-group layouts and a bind-group cache, so steady-state dispatches create no
//! wgpu objects.
//!
//! Every kernel binds its parameters at binding 0 (a uniform, read at a dynamic offset into the
//! submit's uniform arena) and its storage ranges at bindings 1... Where the device has
//! immediates (push constants) and a kernel's parameters fit them, the kernel is built from a
//! variant of its shader that reads them as `var<immediate>` instead, with no binding 0:
//! nothing is written to a buffer for them at all. The layout of an entry point
//! is read from the shader itself (naga reflection: which globals the entry uses and whether
//! each is declared `read` or `read_write`), so one layout serves every entry point with the
//! same signature and a bind group built for one kernel is reused by the next kernel that binds
//! the same buffer ranges — the chain matmul → add → norm of one layer binds mostly the same
//! tensors, and the next token binds the same pooled buffers again.

use crate::error::{Error, Result};
use crate::shaders::Shader;
use foldhash::fast::FixedState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// The storage bindings 1..=n of an entry point: `true` where declared `read`.
pub type Signature = Vec<bool>;

/// What the host needs to know of an entry point to bind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reflection {
    pub signature: Signature,
    /// The size in bytes of its parameter struct (binding 0).
    pub params_size: u32,
    /// The largest parameter struct of any entry point of the shader: the shader's immediates
    /// variant declares them all as immediates, so it is built only where all of them fit.
    pub shader_params_max: u32,
}

/// The signature of `entry` in `shader` and the size of its parameters, from naga's analysis of
/// which globals it uses.
pub fn reflect(shader: Shader, entry: &str) -> Result<Reflection> {
    let fail = |reason: String| Error::Shader { shader: shader.name.into(), entry: entry.into(), reason };
    let module = naga::front::wgsl::parse_str(shader.source).map_err(|e| fail(e.emit_to_string(shader.source)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| fail(format!("{e:?}")))?;
    let index = module.entry_points.iter().position(|e| e.name == entry).ok_or_else(|| fail("no such entry point".into()))?;
    let uses = info.get_entry_point(index);
    let mut storage: HashMap<u32, bool> = HashMap::new();
    let mut params_size = None;
    let mut shader_params_max = 0;
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        let params = ((binding.group, binding.binding, var.space) == (0, 0, naga::AddressSpace::Uniform))
            .then(|| module.types[var.ty].inner.size(module.to_ctx()));
        if let Some(size) = params {
            shader_params_max = shader_params_max.max(size);
        }
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(fail(format!("binding group {} (all kernels use group 0)", binding.group)));
        }
        match (binding.binding, var.space) {
            (0, naga::AddressSpace::Uniform) => params_size = params,
            (b, naga::AddressSpace::Storage { access }) if b > 0 => {
                storage.insert(b, !access.contains(naga::StorageAccess::STORE));
            }
            (b, space) => return Err(fail(format!("binding {b} in address space {space:?} (0 must be the uniform parameters, 1.. storage)"))),
        }
    }
    let Some(params_size) = params_size else {
        return Err(fail("does not read its parameters at binding 0".into()));
    };
    let signature = (1..=storage.len() as u32)
        .map(|b| storage.get(&b).copied().ok_or_else(|| fail(format!("storage bindings are not 1..={}: {b} is missing", storage.len()))))
        .collect::<Result<Signature>>()?;
    Ok(Reflection { signature, params_size, shader_params_max })
}

/// The shader's source with its parameters read as immediates: each `@group(0) @binding(0)
/// var<uniform>` declaration becomes `var<immediate>` (an entry point uses at most one of them).
pub fn immediate_source(source: &str) -> String {
    source.replace("@group(0) @binding(0) var<uniform> ", "var<immediate> ")
}

/// How a kernel receives its parameters: at a dynamic offset of the uniform arena, or as this
/// many bytes of immediates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Params {
    Arena,
    Immediate(u32),
}

/// One layout per signature, shared by every pipeline with it.
pub struct Layouts {
    by_signature: HashMap<(Signature, Params), KernelLayout>,
    params_size: u64,
}

/// A bind-group layout, the pipeline layout over it, and its number among this device's
/// layouts (what the bind-group cache keys on: comparing wgpu handles reads their shared state).
#[derive(Clone)]
pub struct KernelLayout {
    pub group: wgpu::BindGroupLayout,
    pub pipeline: wgpu::PipelineLayout,
    pub id: u32,
}

impl Layouts {
    /// `params_size`: the bytes of the uniform arena each dispatch sees at its offset.
    pub fn new(params_size: u64) -> Layouts {
        Layouts { by_signature: HashMap::new(), params_size }
    }

    pub fn get(&mut self, device: &wgpu::Device, sig: &Signature, params: Params) -> &KernelLayout {
        let params_size = self.params_size;
        let id = self.by_signature.len() as u32;
        self.by_signature.entry((sig.clone(), params)).or_insert_with(|| {
            let mut entries = vec![];
            if params == Params::Arena {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(params_size),
                    },
                    count: None,
                });
            }
            for (i, &read_only) in sig.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some("revive kernel"), entries: &entries });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("revive kernel"),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: match params {
                    Params::Arena => 0,
                    Params::Immediate(size) => size,
                },
            });
            KernelLayout { group: bgl, pipeline: pl, id }
        })
    }
}

/// The most storage bindings a kernel has (WebGPU's default limit per shader stage).
const MAX_BINDS: usize = 8;

/// What a bind group binds: its layout's number (which stands for the kernel's signature and
/// whether the uniform arena is bound) and each storage range as (the buffer's creation number
/// in the device's pool, offset, size). Plain numbers, kept in the entry itself: a lookup runs
/// for every dispatch, and hashing or comparing wgpu handles reads each buffer's shared state
/// behind its reference count (`docs/results.md`, "The host's time per dispatch").
#[derive(PartialEq, Eq)]
struct GroupKey {
    layout: u32,
    len: u8,
    ranges: [(u64, u64, u64); MAX_BINDS],
}

impl GroupKey {
    /// None past `MAX_BINDS` ranges (no such kernel; its group is then built every time).
    fn new(layout: u32, binds: &[super::Bind<'_>]) -> Option<GroupKey> {
        let mut ranges = [(0, 0, 0); MAX_BINDS];
        for (slot, b) in ranges.iter_mut().zip(binds) {
            *slot = (b.serial, b.offset, b.size);
        }
        (binds.len() <= MAX_BINDS).then_some(GroupKey { layout, len: binds.len() as u8, ranges })
    }

    fn hash(&self) -> u64 {
        let mut h = FixedState::default().build_hasher();
        h.write_u32(self.layout);
        for &(serial, offset, size) in &self.ranges[..self.len as usize] {
            h.write_u64(serial);
            h.write_u64(offset);
            h.write_u64(size);
        }
        h.finish()
    }
}

/// A cached bind group (which holds the buffers it binds; creation numbers are never reused).
struct CachedGroup {
    key: GroupKey,
    group: wgpu::BindGroup,
}

/// Bind groups by what they bind. Pooled buffers come back with the same ranges, so in steady
/// state every lookup hits, and a hit allocates nothing: it is on the path of every dispatch,
/// where the host's time per dispatch bounds how fast a GPU can decode (`revive bench
/// forward`, "host CPU µs per dispatch"). A group holds its buffers, so the cache starts over
/// when the pool drops its idle buffers (their memory is wanted back) and past `CAPACITY`
/// groups (buffers that left the pool are not kept alive for long).
#[derive(Default)]
pub struct GroupCache {
    groups: hashbrown::HashTable<CachedGroup>,
    pub created: u64,
    /// The pool's count of idle drops when the cache last looked (`BufferPool::idle_drops`).
    pool_drops: u64,
}

const CAPACITY: usize = 8192;

impl GroupCache {
    /// Lets every cached group (and the buffers it holds) go.
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// `pool_drops`: the pool's `idle_drops` now.
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        layout: &KernelLayout,
        arena: Option<(&wgpu::Buffer, u64)>,
        binds: &[super::Bind<'_>],
        keep: bool,
        pool_drops: u64,
    ) -> wgpu::BindGroup {
        if pool_drops != self.pool_drops {
            self.pool_drops = pool_drops;
            self.clear();
        }
        let key = GroupKey::new(layout.id, binds);
        let hash = key.as_ref().map_or(0, GroupKey::hash);
        if let Some(cached) = key.as_ref().and_then(|key| self.groups.find(hash, |c| c.key == *key)) {
            return cached.group.clone();
        }
        let mut entries = vec![];
        if let Some((params, params_size)) = arena {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: params, offset: 0, size: wgpu::BufferSize::new(params_size) }),
            });
        }
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b.buffer, offset: b.offset, size: wgpu::BufferSize::new(b.size) }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("revive kernel"), layout: &layout.group, entries: &entries });
        self.created += 1;
        if let (true, Some(key)) = (keep, key) {
            if self.groups.len() >= CAPACITY {
                self.groups.clear();
            }
            let cached = CachedGroup { key, group: group.clone() };
            self.groups.insert_unique(hash, cached, |c| c.key.hash());
        }
        group
    }
}
