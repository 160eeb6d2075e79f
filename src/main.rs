//! The `revive` command line: a thin layer over the library.

mod cli;

use clap::Parser;

fn main() {
    // Mesa's Vulkan device-selection layer connects to Wayland to find the default GPU when
    // the instance enables the Wayland surface extension (wgpu always does), and libwayland
    // prints "error: XDG_RUNTIME_DIR is invalid or not set" on every headless machine. revive
    // picks its adapter itself, so the layer is switched off unless the user set it. Set
    // before any thread starts (set_var is unsound while other threads read the environment).
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    // usvg warns once per text element when a machine has no font for a family; the PNG
    // copies of plots are drawn anyway, so those warnings are noise.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,usvg=error")).init();
    if let Err(e) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
