// Rotary position embedding of x: [B, T, H, D] (rows of D, one row per (b, t, h)), into out.
// One thread per rotated pair. The host covers rows row0 .. row0 + pairs / half; token t of a
// row sits at position pos0 + t. Pairs are (2i, 2i+1) when `adjacent` (GGUF) and (i, i + D/2)
// otherwise (Hugging Face rotate_half); both use frequency i. With `inverse` the rotation is by
// -angle: the transpose, which is the backward of the rotation (rope_bwd).
//
// Precision: inv_freq comes from the host, computed in f64 and rounded once to f32. The angle
// pos * inv_freq is one f32 product (relative error 2^-24, so about 6e-5 rad at position 1000),
// and sin/cos are the device's f32 ones.

struct Meta {
    pairs: u32, half: u32, heads: u32, seq: u32,
    row0: u32, pos0: u32, in_off: u32, out_off: u32,
    adjacent: u32, inverse: u32, _pad1: u32, _pad2: u32,
    // Uniform arrays need a 16-byte stride: frequency i is inv_freq[i / 4][i % 4].
    inv_freq: array<vec4<f32>, 64>,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let k = gid.x;
    if (k >= p.pairs) { return; }
    let row = k / p.half;
    let i = k % p.half;
    let t = ((p.row0 + row) / p.heads) % p.seq;
    let angle = f32(p.pos0 + t) * p.inv_freq[i / 4u][i % 4u];
    let c = cos(angle);
    let s = select(sin(angle), -sin(angle), p.inverse != 0u);
    var ia = row * 2u * p.half + i;
    var ib = ia + p.half;
    if (p.adjacent != 0u) {
        ia = row * 2u * p.half + 2u * i;
        ib = ia + 1u;
    }
    let a = x[p.in_off + ia];
    let b = x[p.in_off + ib];
    out[p.out_off + ia] = a * c - b * s;
    out[p.out_off + ib] = a * s + b * c;
}
