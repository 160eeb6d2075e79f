//! Knowledge editing: requests, hyper-parameters, keys, targets, covariance statistics, the
//! methods, and the REVIVE guard every method's update goes through.

pub mod alphaedit;
pub mod corpus;
pub mod cov_cache;
pub mod covariance;
pub mod guard;
pub mod hparams;
pub mod journal;
pub mod keys;
pub mod memit;
pub mod method;
pub mod moment;
pub mod nse;
pub mod prune;
pub mod rect;
pub mod request;
pub mod rome;
pub mod run;
pub mod session;
pub mod target;
pub mod update;
