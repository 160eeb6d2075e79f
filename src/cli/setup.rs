//! `revive setup`: fetch the real model once.

use anyhow::Result;

pub(super) fn run() -> Result<()> {
    let path = revive::model::fetch::setup_smollm2(&|msg| eprintln!("{msg}"))?;
    println!("{}", path.display());
    Ok(())
}
