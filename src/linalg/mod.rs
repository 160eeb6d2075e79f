//! Dense linear algebra on the GPU beyond single kernels: the top singular triplets of a
//! matrix (and eigenpairs of a PSD one) by subspace iteration, and the tools that compare
//! singular subspaces.

pub mod subspace;
pub mod svd;
