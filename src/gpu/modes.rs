//! How kernels are built on a device, and what an adapter offers them: runtime checks,
//! immediates, cooperative matrices, subgroup lanes; the switches that set them.

/// `REVIVE_CHECKED=1`: build shader modules with wgpu's runtime checks (bounds checks, loop
/// bounding). Off by default: they cost speed and every kernel is in bounds by construction.
pub fn checked_shaders() -> bool {
    env_flag("REVIVE_CHECKED")
}

/// How kernels are built on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelModes {
    /// Keep wgpu's injected runtime checks in the shaders (see `checked_shaders`).
    pub checked: bool,
    /// Take parameters as immediates where the device has them and they fit; otherwise (and
    /// with REVIVE_NO_IMMEDIATES=1) from the uniform arena.
    pub immediates: bool,
    /// Enable f16 cooperative matrices where the adapter offers them (REVIVE_COOPERATIVE=1): an
    /// experimental wgpu feature, so never by default.
    pub cooperative: bool,
}

impl KernelModes {
    pub fn from_env() -> KernelModes {
        KernelModes { checked: checked_shaders(), immediates: !env_flag("REVIVE_NO_IMMEDIATES"), cooperative: env_flag("REVIVE_COOPERATIVE") }
    }
}

/// What shaders/matmul_coop.wgsl needs of a device.
pub(super) const COOPERATIVE_FEATURES: wgpu::Features =
    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX.union(wgpu::Features::SHADER_F16).union(wgpu::Features::SUBGROUP);

/// Whether the adapter can run shaders/matmul_coop.wgsl: cooperative matrices with an f16
/// 16×16×16 configuration accumulating in f32, f16 arithmetic, and subgroups exactly 32 wide
/// (the kernel gives each of the four subgroups of its 128 invocations one quadrant of the tile).
pub fn offers_cooperative_matrices(adapter: &wgpu::Adapter) -> bool {
    use wgpu::CooperativeScalarType::{F16, F32};
    let info = adapter.get_info();
    adapter.features().contains(COOPERATIVE_FEATURES)
        && (info.subgroup_min_size, info.subgroup_max_size) == (32, 32)
        && adapter.cooperative_matrix_properties().iter().any(|c| (c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type) == (16, 16, 16, F16, F32))
}

/// Whether the adapter can run shaders/matmul_lanes.wgsl and shaders/attention_lanes.wgsl:
/// subgroups, always exactly 8 wide, so that a workgroup of 8 is one subgroup. Asked for only
/// then: a GPU with other subgroup sizes opens its device as before. `REVIVE_NO_LANES=1` leaves
/// them off (to compare with the block matmul and the tiled attention).
pub fn offers_lanes(adapter: &wgpu::Adapter) -> bool {
    let info = adapter.get_info();
    adapter.features().contains(wgpu::Features::SUBGROUP) && (info.subgroup_min_size, info.subgroup_max_size) == (8, 8) && !env_flag("REVIVE_NO_LANES")
}

/// A debugging switch: set to anything but empty or "0".
pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}
