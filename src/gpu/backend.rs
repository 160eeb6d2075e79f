//! Which wgpu backend to open: `--backend auto|vulkan|metal|dx12|gl`, or `REVIVE_BACKEND`.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

impl BackendChoice {
    pub const ENV: &'static str = "REVIVE_BACKEND";

    /// The explicit choice if given, else `REVIVE_BACKEND`, else auto.
    pub fn resolve(explicit: Option<&str>) -> Result<Self> {
        match explicit {
            Some(s) => s.parse(),
            None => match std::env::var(Self::ENV) {
                Ok(s) if !s.trim().is_empty() => s.parse(),
                _ => Ok(BackendChoice::Auto),
            },
        }
    }

    pub fn backends(self) -> wgpu::Backends {
        match self {
            BackendChoice::Auto => {
                wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL
            }
            BackendChoice::Vulkan => wgpu::Backends::VULKAN,
            BackendChoice::Metal => wgpu::Backends::METAL,
            BackendChoice::Dx12 => wgpu::Backends::DX12,
            BackendChoice::Gl => wgpu::Backends::GL,
        }
    }

    /// What to install when this choice finds no adapter.
    pub fn install_hint(self) -> &'static str {
        match self {
            BackendChoice::Metal => "Metal needs macOS or iOS with a Metal-capable GPU.",
            BackendChoice::Dx12 => "DX12 needs Windows 10 or later with a D3D12 driver.",
            BackendChoice::Gl => {
                "Install an OpenGL ES 3.1+ / EGL driver; on Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri (llvmpipe runs without a GPU)."
            }
            BackendChoice::Vulkan | BackendChoice::Auto => {
                "Install a Vulkan driver and loader; on Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1 (lavapipe runs without a GPU), or your GPU vendor's driver."
            }
        }
    }
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "vulkan" | "vk" => Ok(BackendChoice::Vulkan),
            "metal" | "mtl" => Ok(BackendChoice::Metal),
            "dx12" | "d3d12" => Ok(BackendChoice::Dx12),
            "gl" | "gles" | "opengl" => Ok(BackendChoice::Gl),
            _ => Err(Error::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Vulkan => "vulkan",
            BackendChoice::Metal => "metal",
            BackendChoice::Dx12 => "dx12",
            BackendChoice::Gl => "gl",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_and_rejects_unknown() {
        assert_eq!("Vulkan".parse::<BackendChoice>().unwrap(), BackendChoice::Vulkan);
        assert_eq!("gl".parse::<BackendChoice>().unwrap(), BackendChoice::Gl);
        let err = "cuda".parse::<BackendChoice>().unwrap_err().to_string();
        assert!(err.contains("cuda") && err.contains("vulkan"), "{err}");
    }
}
