//! The `revive` command line: a thin layer over the library.

mod cli;

use clap::Parser;

fn main() {
    // usvg warns once per text element when a machine has no font for a family; the PNG
    // copies of plots are drawn anyway, so those warnings are noise.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,usvg=error")).init();
    if let Err(e) = cli::run(cli::Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
