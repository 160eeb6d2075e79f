//! The crate's error type: every failure names what it was about (the backend, the tensor, the
//! shape, the field), so a user can act on it without a backtrace.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("unknown backend '{0}': expected one of auto, vulkan, metal, dx12, gl")]
    UnknownBackend(String),

    #[error("no GPU adapter found (tried: {tried}). {hint}")]
    NoAdapter { tried: String, hint: String },

    #[error("REVIVE_ADAPTER='{want}' matches none of the adapters found: {found}")]
    AdapterNotFound { want: String, found: String },

    #[error("could not open a device on adapter '{adapter}': {reason}")]
    Device { adapter: String, reason: String },

    #[error("shape error in {op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: work cannot be split to fit this adapter: {detail}")]
    TooLarge { op: &'static str, detail: String },

    #[error("out of GPU memory: {detail}")]
    OutOfMemory { detail: String },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("the GPU '{adapter}' was lost ({reason}): a driver reset, a watchdog that stopped a long kernel, or the device removed; what it held is gone. A journaled session (`revive edit --batch`, `revive experiment`) continues from its last finished batch on a new device: by itself up to --gpu-retries times, then with `revive edit --resume DIR` or the same `revive experiment` command")]
    DeviceLost { adapter: String, reason: String },

    #[error("the GPU lost earlier, {adapter}, is not offered again (yet): work that goes on after a loss stays on its adapter, whose results it would otherwise mix with another's")]
    LostAdapterAbsent { adapter: String },

    #[error("{file}: {detail}")]
    Model { file: String, detail: String },

    #[error("numerical error: {0}")]
    Numeric(String),

    #[error("edit: {0}")]
    Edit(String),

    #[error("shader '{shader}' entry '{entry}' failed to build: {reason}")]
    Shader { shader: String, entry: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
}
