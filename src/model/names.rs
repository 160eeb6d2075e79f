//! Canonical names of the matrices other modules address by layer (the table in the module
//! comment of `model` has them all).

/// The down-projection name of a layer.
pub fn down_name(layer: usize) -> String {
    format!("layers.{layer}.w_down")
}

/// The down-projection bias name of a layer (GPT-2 has one, Llama does not).
pub fn down_bias_name(layer: usize) -> String {
    format!("layers.{layer}.b_down")
}
