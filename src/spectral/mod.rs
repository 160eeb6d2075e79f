//! REVIVE's spectral side: the top singular subspaces of a weight (power iteration on the GPU),
//! the filter that keeps updates out of them, and diagnostics of how an edited weight's
//! spectrum moved.

pub mod svd;
pub mod guard;
pub mod diagnostics;
