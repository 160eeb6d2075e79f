//! GPU tensors: a shape, an element type and a pooled buffer. Row-major and contiguous; a
//! tensor may be a contiguous view into another's buffer (`Tensor::view`: a fused weight's
//! parts), and every op reaches the data through `Tensor::bind`, which adds the view's start.
//! Strided views are made by the ops that need them (copy with strides).

use super::context::{Bind, Gpu};
use super::pool::PooledBuffer;
use crate::error::{Error, Result};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
}

#[derive(Clone)]
pub struct Tensor {
    buf: Arc<PooledBuffer>,
    /// Where the tensor starts in its buffer, in elements (0 except for views).
    start: usize,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Whether the two live in one buffer (a view of the other, or the same tensor): a kernel
    /// may not read one while it writes the other.
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.buffer()
    }
    /// Whether this is the only handle on the buffer (no clone, reshape or tape shares it), so
    /// that an op may write into it in place without another holder seeing the change.
    pub fn is_unique(&self) -> bool {
        Arc::strong_count(&self.buf) == 1 && Arc::weak_count(&self.buf) == 0
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} -> {:?} changes the element count", self.shape, shape)));
        }
        Ok(Tensor { buf: self.buf.clone(), start: self.start, shape: shape.to_vec(), dtype: self.dtype })
    }

    /// Elements `[first, first + Π shape)` of this tensor as a tensor of `shape`, sharing the
    /// buffer: writes through either are seen by both.
    pub fn view(&self, first: usize, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if first + n > self.numel() {
            return Err(Error::shape("view", format!("elements {first}..{} of a {:?} tensor", first + n, self.shape)));
        }
        Ok(Tensor { buf: self.buf.clone(), start: self.start + first, shape: shape.to_vec(), dtype: self.dtype })
    }

    /// The first byte of the tensor in its buffer.
    fn byte_start(&self) -> u64 {
        self.start as u64 * 4
    }

    /// Binds elements `[start, start + len)`: the binding starts at the aligned offset at or
    /// below `start`, and the returned residual (in elements) says where `start` lies in it.
    pub fn bind(&self, gpu: &Gpu, start: usize, len: usize) -> Result<(Bind<'_>, u32)> {
        // Bind groups are cached by each buffer's number in its device's pool: another device's
        // buffer would match one of this device's.
        if !self.buf.is_from(gpu.pool()) {
            return Err(Error::Gpu(format!("a {:?} tensor of another device was bound on {}", self.shape, gpu.label())));
        }
        let align = gpu.binding_alignment();
        let first = (self.start + start) as u64 * 4;
        let offset = first - first % align;
        let end = ((self.start + start + len.max(1)) as u64 * 4).div_ceil(16) * 16;
        let size = end.min(self.buf.size()) - offset;
        let max = gpu.split_limits().max_binding_bytes;
        if size > max {
            return Err(Error::TooLarge {
                op: "bind",
                detail: format!("a range of {size} bytes of a {:?} tensor exceeds the {max}-byte binding limit", self.shape),
            });
        }
        Ok((Bind { buffer: self.buf.buffer(), serial: self.buf.serial(), offset, size }, ((first - offset) / 4) as u32))
    }

    /// The largest element count a binding may cover here, leaving room for the alignment slack.
    pub fn max_binding_elems(gpu: &Gpu) -> usize {
        let limits = gpu.split_limits();
        ((limits.max_binding_bytes - gpu.binding_alignment() - 16) / 4) as usize
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if len != n {
        return Err(Error::shape(op, format!("{len} values for shape {shape:?} ({n} elements)")));
    }
    Ok(())
}

impl Gpu {
    fn alloc(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let bytes = n as u64 * 4;
        if bytes > self.limits().max_buffer_size {
            return Err(Error::TooLarge {
                op: "alloc",
                detail: format!("{shape:?} needs {bytes} bytes; this adapter's largest buffer is {}", self.limits().max_buffer_size),
            });
        }
        let buf = match self.pool().acquire(self.device(), bytes) {
            // Refused: give back the idle buffers and the cached bind groups that hold them (a
            // trim alone leaves them alive there), wait until the device has destroyed them,
            // and try once more.
            Err(Error::OutOfMemory { .. }) => {
                self.release_cached_groups()?;
                self.pool().acquire(self.device(), bytes)
            }
            other => other,
        };
        let (buf, _) = buf.map_err(|e| self.lost_or(e))?;
        Ok(Tensor { buf: Arc::new(buf), start: 0, shape: shape.to_vec(), dtype })
    }

    /// A new f32 tensor whose contents are unspecified (NaN when poisoning is on).
    pub fn empty(&self, shape: &[usize]) -> Result<Tensor> {
        let t = self.alloc(shape, DType::F32)?;
        if self.poison() {
            let nan = vec![f32::NAN; t.buf.size() as usize / 4];
            self.write(t.buffer(), 0, bytemuck::cast_slice(&nan))?;
        }
        Ok(t)
    }

    pub fn full(&self, shape: &[usize], value: f32) -> Result<Tensor> {
        let t = self.alloc(shape, DType::F32)?;
        let data = vec![value; t.buf.size() as usize / 4];
        self.write(t.buffer(), 0, bytemuck::cast_slice(&data))?;
        Ok(t)
    }

    /// The n×n identity.
    pub fn identity(&self, n: usize) -> Result<Tensor> {
        let mut eye = vec![0f32; n * n];
        (0..n).for_each(|i| eye[i * n + i] = 1.0);
        self.upload(&eye, &[n, n])
    }

    pub fn upload(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("upload", data.len(), shape)?;
        let t = self.alloc(shape, DType::F32)?;
        self.write(t.buffer(), 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    pub fn upload_u32(&self, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_len("upload_u32", data.len(), shape)?;
        let t = self.alloc(shape, DType::U32)?;
        self.write(t.buffer(), 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        if t.dtype != DType::F32 {
            return Err(Error::shape("download", format!("{t:?} is not f32")));
        }
        Ok(bytemuck::pod_collect_to_vec(&self.read(t.buffer(), t.byte_start(), t.numel() as u64 * 4)?))
    }

    /// `download` started without waiting ([`Gpu::read_later`]).
    pub fn download_later(&self, t: &Tensor) -> Result<super::PendingRead> {
        if t.dtype != DType::F32 {
            return Err(Error::shape("download", format!("{t:?} is not f32")));
        }
        self.read_later(t.buffer(), t.byte_start(), t.numel() as u64 * 4)
    }

    pub fn download_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.read(t.buffer(), t.byte_start(), t.numel() as u64 * 4)?))
    }

    /// Copies `src` into `dst` (same element count; either may be a view) on the GPU.
    pub fn copy_into(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.numel() != dst.numel() || src.dtype != dst.dtype {
            return Err(Error::shape("copy_into", format!("{src:?} into {dst:?}")));
        }
        self.copy_buffer(src.buffer(), src.byte_start(), dst.buffer(), dst.byte_start(), src.numel() as u64 * 4)
    }

    /// Element `i` of a 32-bit tensor as u32: four bytes read back, e.g. a counter a kernel
    /// wrote.
    pub fn read_u32(&self, t: &Tensor, i: usize) -> Result<u32> {
        if i >= t.numel() {
            return Err(Error::shape("read_u32", format!("element {i} of {t:?}")));
        }
        let bytes = self.read(t.buffer(), t.byte_start() + i as u64 * 4, 4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}
