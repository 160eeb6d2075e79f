//! Dense linear algebra on the GPU beyond single kernels: the top singular triplets of a
//! matrix (and eigenpairs of a PSD one) by subspace iteration.

pub mod svd;
