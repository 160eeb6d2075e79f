//! What the runtime counts and measures: work done since the device opened (`RuntimeStats`),
//! each kernel's share of a profiled run (`KernelTime`), a timed region (`Timing`).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) dispatches: AtomicU64,
    pub(super) passes: AtomicU64,
    pub(super) submits: AtomicU64,
    pub(super) buffers: AtomicU64,
    pub(super) readbacks: AtomicU64,
    pub(super) readback_bytes: AtomicU64,
    pub(super) waited_ns: AtomicU64,
    pub(super) submit_ns: AtomicU64,
    pub(super) pipelines: AtomicU64,
    pub(super) pipeline_ns: AtomicU64,
}

/// What the runtime has done since the device was opened: compare two snapshots to see what a
/// piece of work cost (`revive bench forward` reports them per token).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuntimeStats {
    pub dispatches: u64,
    pub passes: u64,
    pub submits: u64,
    /// Buffers created (tensors the pool could not serve, readback and parameter buffers).
    pub buffers: u64,
    pub bind_groups: u64,
    /// Reads back to the host: each waits for the GPU to finish what was recorded before it.
    pub readbacks: u64,
    pub readback_bytes: u64,
    /// Time the host spent blocked until the GPU finished (every wait goes through `sync`):
    /// the rest of a piece of work's wall clock is the host's own (recording, shape checks,
    /// uploads), which bounds how fast a GPU can run it.
    pub waited_ns: u64,
    /// Time inside the queue's submit calls: a driver's work on a GPU; on a software adapter
    /// that runs the commands there (lavapipe), their execution.
    pub submit_ns: u64,
    /// Compute pipelines built (each kernel variant the first time it runs in a process: the
    /// driver compiles it) and the time spent building them: a one-time cost that a timed
    /// piece of work includes when it is the first to run those kernels.
    pub pipelines: u64,
    pub pipeline_ns: u64,
}

/// One kernel's share of a profiled piece of work (`REVIVE_PROFILE=1`: every dispatch waited
/// for, so read the shares rather than the totals).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelTime {
    pub kernel: String,
    pub dispatches: u64,
    pub ms: f64,
}

impl std::ops::Sub for RuntimeStats {
    type Output = RuntimeStats;
    fn sub(self, o: RuntimeStats) -> RuntimeStats {
        RuntimeStats {
            dispatches: self.dispatches - o.dispatches,
            passes: self.passes - o.passes,
            submits: self.submits - o.submits,
            buffers: self.buffers - o.buffers,
            bind_groups: self.bind_groups - o.bind_groups,
            readbacks: self.readbacks - o.readbacks,
            readback_bytes: self.readback_bytes - o.readback_bytes,
            waited_ns: self.waited_ns - o.waited_ns,
            submit_ns: self.submit_ns - o.submit_ns,
            pipelines: self.pipelines - o.pipelines,
            pipeline_ns: self.pipeline_ns - o.pipeline_ns,
        }
    }
}

/// A measured region: `gpu` is None where the adapter has no usable timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub wall: Duration,
    pub gpu: Option<Duration>,
    /// The part of `wall` the host spent waiting for the GPU or inside the queue's submits
    /// (where a software adapter runs the commands).
    pub waited: Duration,
    /// CPU time of the calling thread over the region (where the platform tells it): the
    /// host's cost without the time it was waiting or waiting for a core (on a machine whose
    /// cores a software adapter shares, the wall clock's host part includes the latter).
    pub host_cpu: Option<Duration>,
}

impl Timing {
    /// The host's own part of the wall clock (recording, checks, uploads): where it is most of
    /// `wall` on a GPU, a faster GPU cannot make the work faster.
    pub fn host(&self) -> Duration {
        self.wall.saturating_sub(self.waited)
    }

    /// The best measure available: GPU time, else wall-clock.
    pub fn best(&self) -> Duration {
        self.gpu.unwrap_or(self.wall)
    }
}
