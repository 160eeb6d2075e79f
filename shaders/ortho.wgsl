// Orthonormalisation by Cholesky QR, for subspace iteration (src/ops/ortho.rs).
//   cholesky       G (n×n, symmetric) → its lower Cholesky factor L, in place, in one workgroup.
//                  A column whose pivot falls to tol × its original diagonal or below is linearly
//                  dependent on the earlier ones (to working precision): it is marked dead
//                  (flags[j] = 1) and its row and column of L become e_j, so the other columns
//                  factor as if it were absent. A NaN pivot is not "dead": it propagates.
//                  With shift > 0 the diagonal first grows by shift × trace(G) (shifted
//                  Cholesky QR: the factorisation cannot break down however ill-conditioned
//                  the columns, and the Q it gives is conditioned well enough for plain passes).
//   tri_inverse    L⁻¹ by forward substitution, one thread per column; the diagonal of a dead
//                  column is set to 0, so Q = Y L⁻ᵀ gets a zero column there.
//   fill_dead      Writes hash-random values into the dead columns of Q (m×n), so the next pass
//                  turns them into fresh directions instead of losing rank.
//   ritz_residual  Eᵀ (k×m) with E[r][i] = Y[r][i] − σ_i U[r][i] for the first k columns of the
//                  row-major m×ld matrices Y = W V and U: the residuals of the Ritz triplets.
// Bindings are numbered from 1 in the order each entry point uses them; names say the role.

struct Meta {
    n: u32, m: u32, k: u32, seed: u32,
    tol: f32, ld: u32, base: u32, shift: f32,
}

@group(0) @binding(0) var<uniform> p: Meta;
// cholesky: the matrix (in: G, out: L) and aux = [original diagonal (n) | dead flags (n)].
@group(0) @binding(1) var<storage, read_write> gram: array<f32>;
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
// tri_inverse: L and aux in, L⁻¹ out. ritz_residual: Y, σ, Eᵀ out, U.
@group(0) @binding(1) var<storage, read> lower: array<f32>;
@group(0) @binding(2) var<storage, read> aux_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> basis: array<f32>;
// fill_dead: aux in (binding 1), Q in place (binding 2).
@group(0) @binding(2) var<storage, read_write> q: array<f32>;

const WG: u32 = 256u;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn cholesky(@builtin(local_invocation_index) t: u32) {
    let n = p.n;
    var tr = 0.0;
    for (var i = t; i < n; i += WG) { tr += gram[i * n + i]; }
    partial[t] = tr;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (t < s) { partial[t] += partial[t + s]; }
        workgroupBarrier();
    }
    let add = p.shift * partial[0];
    for (var i = t; i < n; i += WG) {
        let d = gram[i * n + i] + add;
        gram[i * n + i] = d;
        aux[i] = d;
        aux[n + i] = 0.0;
    }
    storageBarrier();
    for (var j = 0u; j < n; j++) {
        let d = gram[j * n + j];
        let dead = d <= p.tol * aux[j];
        let l = select(sqrt(d), 1.0, dead);
        for (var i = j + 1u + t; i < n; i += WG) {
            gram[i * n + j] = select(gram[i * n + j] / l, 0.0, dead);
        }
        if (dead) {
            for (var c = t; c < j; c += WG) { gram[j * n + c] = 0.0; }
        }
        storageBarrier();
        if (t == 0u) {
            gram[j * n + j] = l;
            if (dead) { aux[n + j] = 1.0; }
        }
        if (!dead) {
            for (var i = j + 1u + t; i < n; i += WG) {
                let lij = gram[i * n + j];
                for (var c = j + 1u; c <= i; c++) {
                    gram[i * n + c] -= lij * gram[c * n + j];
                }
            }
        }
        storageBarrier();
    }
    // Clean upper triangle, so L can be read as a whole matrix.
    for (var i = t; i < n; i += WG) {
        for (var c = i + 1u; c < n; c++) { gram[i * n + c] = 0.0; }
    }
}

@compute @workgroup_size(64, 1, 1)
fn tri_inverse(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let c = gid.x;
    if (c >= n) { return; }
    for (var r = 0u; r < c; r++) { out[r * n + c] = 0.0; }
    out[c * n + c] = 1.0 / lower[c * n + c];
    for (var r = c + 1u; r < n; r++) {
        var s = 0.0;
        for (var i = c; i < r; i++) { s += lower[r * n + i] * out[i * n + c]; }
        out[r * n + c] = -s / lower[r * n + r];
    }
    if (aux_in[n + c] == 1.0) { out[c * n + c] = 0.0; }
}

// PCG hash: a well-mixed 32-bit value per (seed, index).
fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// The 1-D kernels below run in pieces of at most one dispatch; `base` is the piece's first element.
@compute @workgroup_size(256, 1, 1)
fn fill_dead(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let i = p.base + gid.x;
    if (i >= p.m * n) { return; }
    let col = i % n;
    if (lower[n + col] == 1.0) {
        let h = pcg(pcg(i) ^ p.seed);
        q[i] = f32(h) / 2147483648.0 - 1.0;
    }
}

@compute @workgroup_size(256, 1, 1)
fn ritz_residual(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = p.base + gid.x;
    if (i >= p.m * p.k) { return; }
    let col = i / p.m;
    let row = i % p.m;
    out[i] = lower[row * p.ld + col] - aux_in[col] * basis[row * p.ld + col];
}
