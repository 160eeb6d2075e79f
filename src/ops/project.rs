//! The REVIVE filter, (I − U Uᵀ) X (I − V Vᵀ), in complement-projector form
//! (shaders/project.wgsl): the coefficients T = Uᵀ X and S = (I − U Uᵀ) X V come from matmuls,
//! the kernel forms X − U T − S Vᵀ in one pass. Never a re-expansion of X through a thin SVD.

use super::{groups, whole};
use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::PROJECT;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    m: u32,
    n: u32,
    kl: u32,
    kr: u32,
}

/// (I − U Uᵀ) X (I − V Vᵀ) for X m×n, U m×kl and V n×kr with orthonormal columns; either basis
/// may be absent (that side is left alone).
pub fn complement(gpu: &Gpu, x: &Tensor, u: Option<&Tensor>, v: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "project";
    let &[m, n] = x.shape() else { return Err(Error::shape(OP, format!("ΔW {:?} is not 2-D", x.shape()))) };
    let kl = match u {
        Some(u) if u.shape().len() == 2 && u.shape()[0] == m => u.shape()[1],
        Some(u) => return Err(Error::shape(OP, format!("left basis {:?} does not match ΔW {:?}", u.shape(), x.shape()))),
        None => 0,
    };
    let kr = match v {
        Some(v) if v.shape().len() == 2 && v.shape()[0] == n => v.shape()[1],
        Some(v) => return Err(Error::shape(OP, format!("right basis {:?} does not match ΔW {:?}", v.shape(), x.shape()))),
        None => 0,
    };
    let max = Tensor::max_binding_elems(gpu);
    if m * n > max || m * kl.max(kr) > max || n * kl.max(kr) > max {
        return Err(Error::TooLarge { op: OP, detail: format!("{m}×{n} with ranks {kl}, {kr} exceeds one binding ({max} values)") });
    }
    let limit = gpu.split_limits().max_workgroups as usize;
    if m.div_ceil(16) > limit || n.div_ceil(16) > limit {
        return Err(Error::TooLarge { op: OP, detail: format!("{m}×{n} needs more than {limit} workgroups per dimension") });
    }
    // An absent side binds a one-value placeholder its loop never reads.
    let (u_t, t) = match u {
        Some(u) if kl > 0 => (u.clone(), gemm(gpu, u, x, None, Gemm { trans_a: true, ..Gemm::default() })?),
        _ => {
            let d = gpu.full(&[1], 0.0)?;
            (d.clone(), d)
        }
    };
    let (s, v_t) = match v {
        Some(v) if kr > 0 => {
            // S = X V − U (T V): the right coefficients of the left-projected X.
            let s = gemm(gpu, x, v, None, Gemm::default())?;
            if kl > 0 {
                let tv = gemm(gpu, &t, v, None, Gemm::default())?;
                gemm(gpu, &u_t, &tv, Some(&s), Gemm { alpha: -1.0, beta: 1.0, ..Gemm::default() })?;
            }
            (s, v.clone())
        }
        _ => {
            let d = gpu.full(&[1], 0.0)?;
            (d.clone(), d)
        }
    };
    let out = gpu.empty(&[m, n])?;
    let meta = Meta { m: m as u32, n: n as u32, kl: kl as u32, kr: kr as u32 };
    let binds = [whole(gpu, x)?, whole(gpu, &u_t)?, whole(gpu, &t)?, whole(gpu, &s)?, whole(gpu, &v_t)?, whole(gpu, &out)?];
    gpu.dispatch(PROJECT, "complement", &[], bytemuck::bytes_of(&meta), &binds, [groups(n, 16), groups(m, 16), 1])?;
    Ok(out)
}
