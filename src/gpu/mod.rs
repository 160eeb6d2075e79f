//! The GPU runtime: adapter and device choice, tensors, buffer pool, pipeline cache, timing.

mod backend;
mod binding;
pub use binding::{immediate_source, reflect, Params, Reflection};
mod choices;
mod context;
mod lost;
mod modes;
mod pool;
mod stats;
mod tensor;

pub use backend::BackendChoice;
pub use choices::tuning_enabled;
pub use lost::devices_lost;
pub use context::{AdapterSummary, Bind, Gpu, Kernel, PendingRead, SplitLimits, PARAMS_SIZE};
pub(crate) use modes::env_flag;
pub use modes::{offers_cooperative_matrices, KernelModes};
pub use stats::{KernelTime, RuntimeStats, Timing};
pub use pool::{BufferPool, PoolStats};
pub use tensor::{DType, Tensor};

/// The most iterations of one loop statement llvmpipe and lavapipe run in an invocation (a
/// guard against hung shaders; counted over the whole invocation, so a loop nested in another
/// counts its iterations over all of the outer's): past it the loop is cut short and the result
/// is silently wrong. A kernel whose loop count grows with its input checks it on software
/// adapters ([`Gpu::is_cpu`]) and splits the work or refuses it.
pub const SOFTWARE_LOOP_LIMIT: usize = 65_535;
