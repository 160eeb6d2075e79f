//! Explicit bind-group layouts and a bind-group cache, so steady-state dispatches create no
//! wgpu objects.
//!
//! Every kernel binds its parameters at binding 0 (a uniform, read at a dynamic offset into the
//! submit's uniform arena) and its storage ranges at bindings 1... The layout of an entry point
//! is read from the shader itself (naga reflection: which globals the entry uses and whether
//! each is declared `read` or `read_write`), so one layout serves every entry point with the
//! same signature and a bind group built for one kernel is reused by the next kernel that binds
//! the same buffer ranges — the chain matmul → add → norm of one layer binds mostly the same
//! tensors, and the next token binds the same pooled buffers again.

use crate::error::{Error, Result};
use crate::shaders::Shader;
use std::collections::HashMap;

/// The storage bindings 1..=n of an entry point: `true` where declared `read`.
pub type Signature = Vec<bool>;

/// The signature of `entry` in `shader`, from naga's analysis of which globals it uses.
pub fn reflect(shader: Shader, entry: &str) -> Result<Signature> {
    let fail = |reason: String| Error::Shader { shader: shader.name.into(), entry: entry.into(), reason };
    let module = naga::front::wgsl::parse_str(shader.source).map_err(|e| fail(e.emit_to_string(shader.source)))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| fail(format!("{e:?}")))?;
    let index = module.entry_points.iter().position(|e| e.name == entry).ok_or_else(|| fail("no such entry point".into()))?;
    let uses = info.get_entry_point(index);
    let mut storage: HashMap<u32, bool> = HashMap::new();
    let mut has_params = false;
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(fail(format!("binding group {} (all kernels use group 0)", binding.group)));
        }
        match (binding.binding, var.space) {
            (0, naga::AddressSpace::Uniform) => has_params = true,
            (b, naga::AddressSpace::Storage { access }) if b > 0 => {
                storage.insert(b, !access.contains(naga::StorageAccess::STORE));
            }
            (b, space) => return Err(fail(format!("binding {b} in address space {space:?} (0 must be the uniform parameters, 1.. storage)"))),
        }
    }
    if !has_params {
        return Err(fail("does not read its parameters at binding 0".into()));
    }
    (1..=storage.len() as u32)
        .map(|b| storage.get(&b).copied().ok_or_else(|| fail(format!("storage bindings are not 1..={}: {b} is missing", storage.len()))))
        .collect()
}

/// One layout per signature, shared by every pipeline with it.
pub struct Layouts {
    by_signature: HashMap<Signature, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    params_size: u64,
}

impl Layouts {
    /// `params_size`: the bytes of the uniform arena each dispatch sees at its offset.
    pub fn new(params_size: u64) -> Layouts {
        Layouts { by_signature: HashMap::new(), params_size }
    }

    pub fn get(&mut self, device: &wgpu::Device, sig: &Signature) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let params_size = self.params_size;
        self.by_signature.entry(sig.clone()).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(params_size),
                },
                count: None,
            }];
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
                immediate_size: 0,
            });
            (bgl, pl)
        })
    }
}

/// What a bind group binds: the signature and each storage range. Holding the buffers keeps
/// them alive while the group may still be used.
type GroupKey = (Signature, Vec<(wgpu::Buffer, u64, u64)>);

/// Bind groups by what they bind. Pooled buffers come back with the same ranges, so in steady
/// state every lookup hits. Bounded: past `CAPACITY` groups the cache starts over, so buffers
/// that left the pool are not kept alive for long.
#[derive(Default)]
pub struct GroupCache {
    groups: HashMap<GroupKey, wgpu::BindGroup>,
    pub created: u64,
}

const CAPACITY: usize = 8192;

impl GroupCache {
    pub fn get(
        &mut self,
        device: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        sig: &Signature,
        params: &wgpu::Buffer,
        params_size: u64,
        binds: &[super::Bind<'_>],
        keep: bool,
    ) -> wgpu::BindGroup {
        let key: GroupKey = (sig.clone(), binds.iter().map(|b| (b.buffer.clone(), b.offset, b.size)).collect());
        if let Some(g) = self.groups.get(&key) {
            return g.clone();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: params, offset: 0, size: wgpu::BufferSize::new(params_size) }),
        }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b.buffer, offset: b.offset, size: wgpu::BufferSize::new(b.size) }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("revive kernel"), layout, entries: &entries });
        self.created += 1;
        if keep {
            if self.groups.len() >= CAPACITY {
                self.groups.clear();
            }
            self.groups.insert(key, group.clone());
        }
        group
    }
}
