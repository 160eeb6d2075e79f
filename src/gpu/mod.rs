//! The GPU runtime: adapter and device choice, tensors, buffer pool, pipeline cache, timing.

mod backend;
mod binding;
pub use binding::{immediate_source, reflect, Params, Reflection};
mod context;
mod pool;
mod tensor;

pub use backend::BackendChoice;
pub(crate) use context::env_flag;
pub use context::{offers_cooperative_matrices, tuning_enabled, AdapterSummary, Bind, Gpu, Kernel, KernelModes, KernelTime, RuntimeStats, SplitLimits, Timing, PARAMS_SIZE};
pub use pool::{BufferPool, PoolStats};
pub use tensor::{DType, Tensor};
