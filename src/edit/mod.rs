pub mod corpus;
pub mod cov_cache;
pub mod covariance;
pub mod request;
