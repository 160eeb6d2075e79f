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

/// A tensor's name built on the stack. Weights are looked up by name for every dispatch of a
/// forward pass, where a formatted `String` each (an allocation and a free) showed in the host's
/// profile of a decoded token (`docs/results.md`, "The host's time per dispatch"). Names past
/// the buffer fall back to the heap.
pub(crate) struct Name {
    buf: [u8; NAME_BYTES],
    len: usize,
    long: Option<String>,
}

const NAME_BYTES: usize = 64;

impl Name {
    pub(crate) fn new(args: std::fmt::Arguments<'_>) -> Name {
        let mut buf = [0u8; NAME_BYTES];
        let mut rest = &mut buf[..];
        let fits = std::io::Write::write_fmt(&mut rest, args).is_ok();
        let len = NAME_BYTES - rest.len();
        Name { buf, len, long: (!fits).then(|| args.to_string()) }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        match &self.long {
            Some(s) => s,
            None => std::str::from_utf8(&self.buf[..self.len]).expect("written from a str, never cut (a cut name goes to the heap)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Name;

    /// Short names stay on the stack, long ones (and ones ending exactly at the buffer) come out
    /// whole either way, including multi-byte characters across the boundary.
    #[test]
    fn names_come_out_whole_on_the_stack_or_the_heap() {
        let i = 29;
        assert_eq!(&*Name::new(format_args!("layers.{i}.attn_norm.weight")), "layers.29.attn_norm.weight");
        assert!(Name::new(format_args!("layers.{i}.w_down")).long.is_none());
        for len in [62, 63, 64, 65, 200] {
            let s: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let name = Name::new(format_args!("{s}"));
            assert_eq!(&*name, s, "{len} bytes");
            assert_eq!(name.long.is_some(), s.len() > 64, "{len} bytes");
        }
    }
}
