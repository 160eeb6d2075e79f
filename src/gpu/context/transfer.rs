//! Host <-> device copies and timing: writes, reads at once or later ([`PendingRead`]),
//! buffer-to-buffer copies, and timestamps around a piece of work.

use super::Gpu;
use crate::error::Result;
use crate::gpu::stats::Timing;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Gpu {
    /// Host -> buffer. Pending work is submitted first: `write_buffer` would otherwise run before
    /// it and could overwrite a pooled buffer that recorded commands still read.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut r = self.shared.recorder.lock().unwrap();
        self.submit_pending(&mut r);
        self.shared.queue.write_buffer(buffer, offset, bytes);
        drop(r);
        self.check_errors()
    }

    /// Buffer -> buffer, recorded after the work before it.
    pub(crate) fn copy_buffer(&self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) -> Result<()> {
        if size > 0 {
            self.record(|enc| enc.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size));
        }
        self.check_errors()
    }

    /// Buffer -> host, waiting for all recorded work: a read started and finished at once (the
    /// copy goes in the last submission, after everything recorded before it).
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(vec![]);
        }
        self.read_later(buffer, offset, size)?.finish()
    }

    /// Buffer -> host without waiting: the copy is recorded and submitted with the work before
    /// it, and [`PendingRead::finish`] waits for that submission only, so work recorded in
    /// between keeps the GPU busy meanwhile (a decode step queued while the last one's token
    /// comes back).
    pub fn read_later(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<PendingRead> {
        self.shared.counters.readbacks.fetch_add(1, Ordering::Relaxed);
        self.shared.counters.readback_bytes.fetch_add(size, Ordering::Relaxed);
        let padded = (size.div_ceil(4) * 4).max(4);
        let staging = {
            let mut free = self.shared.staging.lock().unwrap();
            match free.iter().position(|b| b.size() >= padded) {
                Some(i) => free.swap_remove(i),
                None => {
                    // Grown to the largest read so far: the smaller idle ones go, so a few
                    // large reads (a model's weights hashed) leave one buffer behind, not one
                    // of each size.
                    free.clear();
                    self.create_buffer("readback", padded.next_power_of_two(), wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST)
                }
            }
        };
        let submission = {
            let mut r = self.shared.recorder.lock().unwrap();
            r.pass = None;
            let enc = r.encoder.get_or_insert_with(|| {
                self.shared.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("revive") })
            });
            if size > 0 {
                enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
            }
            self.submit_pending(&mut r).expect("an encoder was just recorded into")
        };
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..padded).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.check_errors()?;
        Ok(PendingRead { gpu: self.clone(), staging: Some(staging), size, padded, submission, mapped: rx })
    }

    /// Runs `f` and measures it: GPU time from timestamp queries where the adapter has them,
    /// and wall-clock time from submit to completion always.
    pub fn time(&self, f: impl FnOnce() -> Result<()>) -> Result<Timing> {
        self.sync()?;
        let timer = self.shared.timestamps.then(|| {
            self.shared
                .timer
                .lock()
                .unwrap()
                .get_or_insert_with(|| {
                    let q = self.shared.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("timing"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    });
                    (q, self.create_buffer("timestamps", 16, wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC))
                })
                .clone()
        });
        let queries = timer.as_ref().map(|t| &t.0);
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
        let c = &self.shared.counters;
        let blocked = || c.waited_ns.load(Ordering::Relaxed) + c.submit_ns.load(Ordering::Relaxed);
        let blocked_before = blocked();
        let cpu_start = cpu_time::ThreadTime::try_now().ok();
        mark(0);
        f()?;
        mark(1);
        let gpu = match &queries {
            Some(q) => {
                let resolve = &timer.as_ref().expect("with queries").1;
                self.record(|enc| enc.resolve_query_set(q, 0..2, resolve, 0));
                let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read(resolve, 0, 16)?);
                let period = self.shared.queue.get_timestamp_period() as f64;
                (ticks[1] > ticks[0]).then(|| Duration::from_nanos(((ticks[1] - ticks[0]) as f64 * period) as u64))
            }
            None => {
                self.sync()?;
                None
            }
        };
        let waited = Duration::from_nanos(blocked() - blocked_before);
        let host_cpu = cpu_start.map(|t| t.elapsed());
        Ok(Timing { wall: start.elapsed(), gpu, waited, host_cpu })
    }
}

/// A read from the GPU started by [`Gpu::read_later`].
pub struct PendingRead {
    gpu: Gpu,
    staging: Option<wgpu::Buffer>,
    size: u64,
    padded: u64,
    submission: wgpu::SubmissionIndex,
    mapped: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl PendingRead {
    /// The bytes, once the submission that copies them has finished; later submissions may
    /// still be running.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let shared = &self.gpu.shared;
        self.gpu.poll(wgpu::PollType::Wait { submission_index: Some(self.submission.clone()), timeout: None })?;
        self.gpu.check_errors()?;
        self.mapped
            .recv()
            .map_err(|_| self.gpu.gpu_error("readback callback never ran".into()))?
            .map_err(|e| self.gpu.gpu_error(format!("mapping the readback buffer: {e}")))?;
        let staging = self.staging.take().expect("taken only here");
        let bytes = staging
            .slice(..self.padded)
            .get_mapped_range()
            .map_err(|e| self.gpu.gpu_error(format!("reading the mapped buffer: {e}")))?[..self.size as usize]
            .to_vec();
        staging.unmap();
        let mut free = shared.staging.lock().unwrap();
        // A few buffers serve any depth of reads ahead; more would only hold memory.
        if free.len() < 8 {
            free.push(staging);
        }
        Ok(bytes)
    }

    /// [`finish`](Self::finish) as f32 values.
    pub fn finish_f32(self) -> Result<Vec<f32>> {
        Ok(bytemuck::pod_collect_to_vec(&self.finish()?))
    }
}
