//! A buffer pool: freed tensors hand their buffer back for reuse by the next tensor of the same
//! size. Reuse can be switched off (`REVIVE_NO_POOL=1`) to rule it out when debugging.
//!
//! Reuse is safe because all work goes through one queue in order: a buffer freed while a
//! recorded command still reads it can only be written by commands recorded later. The one
//! exception, `Queue::write_buffer`, runs before the pending encoder, so the runtime submits
//! pending work before every host write (see `Gpu::write`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub(crate) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    live_bytes: u64,
    pooled_bytes: u64,
}

pub struct BufferPool {
    state: Mutex<PoolState>,
    reuse: std::sync::atomic::AtomicBool,
    created: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub live_bytes: u64,
    pub pooled_bytes: u64,
}

/// A buffer that goes back to its pool when the last tensor using it is dropped.
pub struct PooledBuffer {
    buffer: Option<wgpu::Buffer>,
    size: u64,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.release(buffer, self.size);
        }
    }
}

impl BufferPool {
    pub fn new(reuse: bool) -> Arc<Self> {
        Arc::new(BufferPool {
            state: Mutex::new(PoolState::default()),
            reuse: std::sync::atomic::AtomicBool::new(reuse),
            created: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sizes are rounded to 16 bytes so every buffer can be bound as `array<vec4<f32>>`.
    pub fn rounded(size: u64) -> u64 {
        size.max(16).div_ceil(16) * 16
    }

    pub fn set_reuse(&self, reuse: bool) {
        self.reuse.store(reuse, std::sync::atomic::Ordering::SeqCst);
        if !reuse {
            let mut s = self.state.lock().unwrap();
            s.free.clear();
            s.pooled_bytes = 0;
        }
    }

    pub fn reuse(&self) -> bool {
        self.reuse.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns a buffer of at least `size` bytes and whether it was reused.
    pub fn acquire(self: &Arc<Self>, device: &wgpu::Device, size: u64) -> (PooledBuffer, bool) {
        let size = Self::rounded(size);
        let mut s = self.state.lock().unwrap();
        s.live_bytes += size;
        if self.reuse() {
            if let Some(buffer) = s.free.get_mut(&size).and_then(|v| v.pop()) {
                s.pooled_bytes -= size;
                return (PooledBuffer { buffer: Some(buffer), size, pool: self.clone() }, true);
            }
        }
        drop(s);
        self.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("revive tensor"),
            size,
            usage: USAGE,
            mapped_at_creation: false,
        });
        (PooledBuffer { buffer: Some(buffer), size, pool: self.clone() }, false)
    }

    fn release(&self, buffer: wgpu::Buffer, size: u64) {
        let mut s = self.state.lock().unwrap();
        s.live_bytes -= size;
        if self.reuse() {
            s.pooled_bytes += size;
            s.free.entry(size).or_default().push(buffer);
        }
    }

    /// Buffers this pool has had to create.
    pub fn created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.state.lock().unwrap();
        PoolStats { live_bytes: s.live_bytes, pooled_bytes: s.pooled_bytes }
    }
}
