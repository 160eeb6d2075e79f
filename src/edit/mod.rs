//! Knowledge editing: requests, hyper-parameters, keys, targets, covariance statistics, and
//! the methods.

pub mod corpus;
pub mod cov_cache;
pub mod covariance;
pub mod hparams;
pub mod keys;
pub mod request;
pub mod rome;
pub mod run;
pub mod target;
