//! revive: sequential knowledge editing of language models on any GPU, through wgpu, with
//! REVIVE's spectral protection of the dominant singular subspace.
//!
//! Layers: `gpu` (runtime), `ops` (host side of each WGSL op family in `shaders/`), `cpu` (the
//! f64 oracle every kernel is tested against), `bench` (the measurements behind `revive bench`).

pub mod bench;
pub mod cpu;
pub mod edit;
pub mod error;
pub mod eval;
pub mod fuzz;
pub mod gpu;
pub mod linalg;
pub mod model;
pub mod ops;
pub mod progress;
pub mod shaders;
pub mod store;
pub mod testing;

pub use error::{Error, Result};
pub use gpu::{BackendChoice, Gpu, Tensor};
