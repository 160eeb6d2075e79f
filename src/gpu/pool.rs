//! A buffer pool: freed tensors hand their buffer back for reuse by the next tensor of the same
//! size. Reuse can be switched off (`REVIVE_NO_POOL=1`) to rule it out when debugging.
//!
//! Running out of memory is an error of the allocation that caused it, not a log line: buffers
//! are created inside an out-of-memory error scope (on a failure `Gpu::alloc` drops the idle
//! pooled buffers and the bind groups holding them, and tries once more), and an optional budget (`REVIVE_MEMORY_LIMIT`, e.g. `2GiB`)
//! caps what the pool holds, for a GPU shared with other work.
//!
//! A freed buffer goes back under its creation number, and a request takes the lowest-numbered
//! free buffer of its size: a piece of work that repeats the same allocations and frees from
//! the same idle set (an Adam step of the targets, a decoded token) is then handed the same
//! buffers every time, so every bind group it needs is already cached. (Handing back the
//! last-freed buffer instead permuted the buffers from one step to the next: 80 % of the
//! targets' dispatches created a bind group.)
//!
//! Reuse is safe because all work goes through one queue in order: a buffer freed while a
//! recorded command still reads it can only be written by commands recorded later. The one
//! exception, `Queue::write_buffer`, runs before the pending encoder, so the runtime submits
//! pending work before every host write (see `Gpu::write`).

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

pub(crate) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

#[derive(Default)]
struct PoolState {
    /// Idle buffers by size, each under its creation number.
    free: HashMap<u64, BTreeMap<u64, wgpu::Buffer>>,
    live_bytes: u64,
    pooled_bytes: u64,
}

impl PoolState {
    /// Whether there were any to drop.
    fn drop_idle(&mut self) -> bool {
        let any = !self.free.is_empty();
        self.free.clear();
        self.pooled_bytes = 0;
        any
    }
}

pub struct BufferPool {
    state: Mutex<PoolState>,
    reuse: std::sync::atomic::AtomicBool,
    created: std::sync::atomic::AtomicU64,
    /// Bytes the pool may hold (live and idle together); `u64::MAX` when unbounded.
    budget: std::sync::atomic::AtomicU64,
    /// How many times idle buffers were dropped. Cached bind groups still hold them (and their
    /// memory), so the device's bind-group cache lets its groups go when this changes.
    drops: std::sync::atomic::AtomicU64,
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
    /// The buffer's creation number in its pool.
    serial: u64,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Its creation number in its pool: unique among the pool's buffers, never reused.
    pub fn serial(&self) -> u64 {
        self.serial
    }
    /// Whether it came from `pool` (a device's buffers are bound on that device only).
    pub fn is_from(&self, pool: &Arc<BufferPool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.pool.release(buffer, self.size, self.serial);
        }
    }
}

impl BufferPool {
    pub fn new(reuse: bool) -> Arc<Self> {
        Arc::new(BufferPool {
            state: Mutex::new(PoolState::default()),
            reuse: std::sync::atomic::AtomicBool::new(reuse),
            created: std::sync::atomic::AtomicU64::new(0),
            budget: std::sync::atomic::AtomicU64::new(u64::MAX),
            drops: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Caps the bytes of GPU memory the pool holds (`None`: no cap).
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.budget.store(bytes.unwrap_or(u64::MAX), std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops the idle buffers, giving their memory back to the device.
    pub fn trim(&self) {
        let dropped = self.state.lock().unwrap().drop_idle();
        self.count_drop(dropped);
    }

    fn count_drop(&self, dropped: bool) {
        if dropped {
            self.drops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Sizes are rounded to 16 bytes so every buffer can be bound as `array<vec4<f32>>`.
    pub fn rounded(size: u64) -> u64 {
        size.max(16).div_ceil(16) * 16
    }

    pub fn set_reuse(&self, reuse: bool) {
        self.reuse.store(reuse, std::sync::atomic::Ordering::SeqCst);
        if !reuse {
            self.trim();
        }
    }

    pub fn reuse(&self) -> bool {
        self.reuse.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns a buffer of at least `size` bytes and whether it was reused, or
    /// [`Error::OutOfMemory`] when neither the budget nor the device has room for it.
    pub fn acquire(self: &Arc<Self>, device: &wgpu::Device, size: u64) -> Result<(PooledBuffer, bool)> {
        let size = Self::rounded(size);
        let mut s = self.state.lock().unwrap();
        if self.reuse() {
            if let Some((serial, buffer)) = s.free.get_mut(&size).and_then(BTreeMap::pop_first) {
                s.pooled_bytes -= size;
                s.live_bytes += size;
                return Ok((PooledBuffer { buffer: Some(buffer), size, serial, pool: self.clone() }, true));
            }
        }
        let budget = self.budget.load(std::sync::atomic::Ordering::SeqCst);
        if s.live_bytes.saturating_add(s.pooled_bytes).saturating_add(size) > budget {
            let dropped = s.drop_idle();
            self.count_drop(dropped);
        }
        if s.live_bytes.saturating_add(size) > budget {
            return Err(out_of_memory(size, s.live_bytes, format!("the memory budget of {} (REVIVE_MEMORY_LIMIT) is reached", mib(budget))));
        }
        s.live_bytes += size;
        drop(s);
        // Where the device refuses, the caller (`Gpu::alloc`) gives back the idle buffers and
        // the bind groups that hold them, and asks once more.
        let Some((serial, buffer)) = self.create(device, size) else {
            let live = {
                let mut s = self.state.lock().unwrap();
                s.live_bytes -= size;
                s.live_bytes
            };
            return Err(out_of_memory(size, live, "the device is out of memory".into()));
        };
        Ok((PooledBuffer { buffer: Some(buffer), size, serial, pool: self.clone() }, false))
    }

    /// A new buffer with its creation number, or `None` when the device reports that it is
    /// out of memory.
    fn create(&self, device: &wgpu::Device, size: u64) -> Option<(u64, wgpu::Buffer)> {
        let serial = self.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("revive tensor"),
            size,
            usage: USAGE,
            mapped_at_creation: false,
        });
        match pollster::block_on(scope.pop()) {
            None => Some((serial, buffer)),
            Some(e) => {
                log::debug!("buffer of {size} bytes: {e}");
                None
            }
        }
    }

    fn release(&self, buffer: wgpu::Buffer, size: u64, serial: u64) {
        let mut s = self.state.lock().unwrap();
        s.live_bytes -= size;
        if self.reuse() {
            s.pooled_bytes += size;
            s.free.entry(size).or_default().insert(serial, buffer);
        }
    }

    /// How many times the pool has dropped idle buffers (see `BufferPool::drops`).
    pub fn idle_drops(&self) -> u64 {
        self.drops.load(std::sync::atomic::Ordering::SeqCst)
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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn out_of_memory(size: u64, live: u64, why: String) -> Error {
    Error::OutOfMemory { detail: format!("{} more were needed with {} in use: {why}", mib(size), mib(live)) }
}

/// Parses a memory size: a number of bytes or one with a unit (KiB, MiB, GiB, KB, MB, GB).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return None,
    };
    let bytes = value * scale;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1.5 MiB"), Some(3 << 19));
        assert_eq!(parse_size("3gb"), Some(3_000_000_000));
        for bad in ["", "0", "-1", "1 parsec", "NaN", "GiB", "1e400"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
