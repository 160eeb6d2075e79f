//! Knowledge editing: requests, hyper-parameters, keys, targets, and the methods.

pub mod hparams;
pub mod keys;
pub mod request;
pub mod rome;
pub mod target;
pub mod run;
