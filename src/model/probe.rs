//! What editing needs from a forward pass besides logits: reading the residual stream and the
//! input of each MLP down-projection at chosen places, and adding a vector to the residual
//! stream; for causal tracing also the attention heads' outputs, and states put in place.
//! Shared by the CPU oracle and the GPU forward.

/// A place in a batch: layer, sequence in the batch, token position in that sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Site {
    pub layer: usize,
    pub seq: usize,
    pub pos: usize,
}

/// Requests for one forward pass.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// Read the residual stream after the block of `layer` (its output, what the next layer
    /// reads) at these sites.
    pub residual: Vec<Site>,
    /// Read the down-projection input of `layer` (the MLP key k, width ffn_hidden).
    pub down_in: Vec<Site>,
    /// Add a vector (width d) to the residual stream after the block of `layer`, before any
    /// later layer reads it (ROME's and MEMIT's δ).
    pub add: Vec<(Site, Vec<f32>)>,
    /// Add a vector (width d) to the input embedding of a (sequence, position), before the
    /// first block reads it (causal tracing's noise on the subject's tokens).
    pub add_to_embedding: Vec<((usize, usize), Vec<f32>)>,
    /// Put this key (width ffn_hidden) in place of the down-projection input of `layer` at a
    /// site, so that the MLP writes the output it would write for that key (causal tracing's
    /// restored MLP state; the oracle replaces the key, the GPU adds the difference it makes).
    /// A `down_in` read at the same site reads the key the layer computed.
    pub set_down_in: Vec<(Site, Vec<f32>)>,
    /// Read the attention heads' outputs of `layer`, concatenated (the input of its output
    /// projection wo, width n_heads·head_dim).
    pub heads: Vec<Site>,
    /// Put these heads' outputs (width n_heads·head_dim) in place of those `layer` computed at
    /// a site, before the output projection reads them: the attention then writes what it
    /// would write for them (causal tracing's restored attention state). A `heads` read at the
    /// same site reads what the layer computed.
    pub set_heads: Vec<(Site, Vec<f32>)>,
    /// Start the pass at this layer from this residual stream — what enters the layer, one
    /// row of width d per position of each sequence, [seq][pos·d + i] — in place of the
    /// embedding and the layers before it (a pass that changes nothing before a layer need not
    /// run them; causal tracing restores states from a layer on). The layer may be the layer
    /// count: then only the final norm and the head run. No probe may read or change a layer
    /// before it.
    pub start_at: Option<(usize, Vec<Vec<f32>>)>,
}

impl Probes {
    /// Every site a probe reads or changes in a layer (not the embedding's).
    pub fn sites(&self) -> impl Iterator<Item = &Site> {
        let sets = self.add.iter().chain(&self.set_down_in).chain(&self.set_heads).map(|(s, _)| s);
        self.residual.iter().chain(&self.down_in).chain(&self.heads).chain(sets)
    }
}

/// What a forward pass captured, in the order of the requests.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub residual: Vec<Vec<f32>>,
    pub down_in: Vec<Vec<f32>>,
    pub heads: Vec<Vec<f32>>,
}
