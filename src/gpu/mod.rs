//! The GPU runtime: adapter and device choice, tensors, buffer pool, pipeline cache, timing.

mod backend;
mod binding;
pub use binding::{immediate_source, reflect, Params, Reflection};
mod context;
mod pool;
mod tensor;

pub use backend::BackendChoice;
pub(crate) use context::env_flag;
pub use context::{offers_cooperative_matrices, tuning_enabled, AdapterSummary, Bind, Gpu, Kernel, KernelModes, KernelTime, PendingRead, RuntimeStats, SplitLimits, Timing, PARAMS_SIZE};
pub use pool::{BufferPool, PoolStats};
pub use tensor::{DType, Tensor};

/// The most iterations of one loop statement llvmpipe and lavapipe run in an invocation (a
/// guard against hung shaders; counted over the whole invocation, so a loop nested in another
/// counts its iterations over all of the outer's): past it the loop is cut short and the result
/// is silently wrong. A kernel whose loop count grows with its input checks it on software
/// adapters ([`Gpu::is_cpu`]) and splits the work or refuses it.
pub const SOFTWARE_LOOP_LIMIT: usize = 65_535;
