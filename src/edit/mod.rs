//! Knowledge editing: requests, hyper-parameters, keys, targets, covariance statistics, the
//! methods, and the REVIVE guard every method's update goes through.

pub mod corpus;
pub mod cov_cache;
pub mod covariance;
pub mod guard;
pub mod hparams;
pub mod keys;
pub mod moment;
pub mod request;
pub mod rome;
pub mod run;
pub mod target;
