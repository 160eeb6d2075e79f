//! Host side of each op family: shape checks, splitting into dispatches that fit the adapter,
//! bind groups. One module per shader file.

pub mod activation;
pub mod attention;
pub mod elementwise;
pub mod gather;
pub mod jacobi;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod ortho;
pub mod project;
pub mod reduce;
pub mod rope;
pub mod softmax;

use crate::gpu::{Gpu, Tensor};

/// Where a batch's query tokens sit in their sequences: the kernels that place keys in a cache
/// and attend (`rope::rope_kv_at`, `attention::attention_at_into`) take either.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    /// Every sequence's tokens from this position on.
    From(usize),
    /// One token per sequence, sequence s at position `[s]` (sequences decoded together after
    /// prompts of different lengths).
    Each(&'a [usize]),
}

impl At<'_> {
    /// One past the last position any of `t` tokens per sequence takes.
    pub fn end(&self, t: usize) -> usize {
        match *self {
            At::From(pos0) => pos0 + t,
            At::Each(ps) => ps.iter().max().map_or(0, |p| p + 1),
        }
    }
}

/// Sequences at their own positions that one dispatch of the rotation or the attention takes:
/// the positions ride in the kernel's parameters (four vec4s, so that attention's stay within
/// the 128 bytes of immediates every Vulkan device offers).
pub(crate) const EACH_PER_DISPATCH: usize = 16;

/// The marker in a kernel's position parameter that says "sequence z of the dispatch is at
/// `each[z]`" (shaders/attention_common.wgsl, shaders/rope.wgsl).
pub(crate) const EACH: u32 = u32::MAX;

/// The positions of sequences first .. first + n (n ≤ EACH_PER_DISPATCH) as a kernel reads them.
pub(crate) fn each_positions(ps: &[usize], first: usize, n: usize) -> [u32; EACH_PER_DISPATCH] {
    let mut each = [0; EACH_PER_DISPATCH];
    for (e, &p) in each.iter_mut().zip(&ps[first..first + n]) {
        *e = p as u32;
    }
    each
}

/// Threads per workgroup of the 1-D kernels.
pub(crate) const WG: usize = 256;

/// Elements one dispatch of a 1-D kernel may cover: bounded by the workgroup count and by the
/// binding size (with alignment slack).
pub(crate) fn max_elems_per_dispatch(gpu: &Gpu, threads_per_group: usize) -> usize {
    let by_groups = gpu.split_limits().max_workgroups as usize * threads_per_group;
    by_groups.min(Tensor::max_binding_elems(gpu)).max(1)
}

/// `[start, start + len)` pieces covering `0..total`, each at most `chunk` long.
pub(crate) fn chunks(total: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..total.div_ceil(chunk)).map(move |i| (i * chunk, chunk.min(total - i * chunk)))
}

/// Pieces (first, count) of an n-row matrix for a kernel with one workgroup per output of a
/// few input rows (`norm::rms_norm_matvec`, `activation::silu_mul_matvec`): each piece's
/// matrix rows fit one binding and one dispatch. The input (`rows` of `row_elems` values), the
/// output (`rows` × n) and the rows (a workgroup row each) must fit one binding and one
/// dispatch whole: these kernels are for a decoded token's few rows, not split by row.
pub(crate) fn matvec_pieces(gpu: &Gpu, op: &'static str, rows: usize, row_elems: usize, n: usize, cols: usize) -> crate::error::Result<Vec<(usize, usize)>> {
    let limits = gpu.split_limits();
    let max_elems = crate::gpu::Tensor::max_binding_elems(gpu);
    if rows * row_elems > max_elems || rows * n > max_elems || rows > limits.max_workgroups as usize {
        return Err(crate::error::Error::TooLarge { op, detail: format!("{rows} rows of {cols} into {n} outputs: meant for a few rows") });
    }
    let per = (max_elems / cols.max(1)).min(limits.max_workgroups as usize).max(1);
    Ok(chunks(n, per).collect())
}

/// A binding of the whole tensor (callers check it fits one binding), for kernels that take
/// no offset for it: a view that does not start on a binding boundary is refused, never read
/// from the wrong place.
pub(crate) fn whole<'a>(gpu: &Gpu, t: &'a Tensor) -> crate::error::Result<crate::gpu::Bind<'a>> {
    match t.bind(gpu, 0, t.numel())? {
        (b, 0) => Ok(b),
        (_, off) => Err(crate::error::Error::shape("bind", format!("a {:?} view starts {off} elements past a binding boundary, where the kernel takes it whole", t.shape()))),
    }
}

pub(crate) fn groups(n: usize, per_group: usize) -> u32 {
    n.div_ceil(per_group) as u32
}
