//! Weights on the host, in the canonical naming, checked against the configuration.

use super::config::Config;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

#[derive(Debug, Clone)]
pub struct Weights {
    pub config: Config,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl Weights {
    /// Checks that every tensor the configuration needs is present with the right shape and
    /// finite values; `source` (a file or directory) is named in the error.
    pub fn validate(&self, source: &str) -> Result<()> {
        self.validate_named(source, &|name| format!("'{name}'"))
    }

    /// [`Weights::validate`], with each tensor named in errors by `describe` (a loader names
    /// it as its file does).
    pub fn validate_named(&self, source: &str, describe: &dyn Fn(&str) -> String) -> Result<()> {
        for name in self.config.tensor_names() {
            let want = self.config.expected_shape(&name).expect("names come from the config");
            let t = self.tensors.get(&name).ok_or_else(|| Error::Model {
                file: source.into(),
                detail: format!("tensor {} is missing", describe(&name)),
            })?;
            if t.shape != want {
                return Err(Error::Model {
                    file: source.into(),
                    detail: format!("tensor {} has shape {:?}, the config implies {want:?}", describe(&name), t.shape),
                });
            }
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(Error::Model {
                    file: source.into(),
                    detail: format!("tensor {} holds a non-finite value at element {i}", describe(&name)),
                });
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| Error::Model { file: "weights".into(), detail: format!("tensor '{name}' is missing") })
    }
}
