// Orthonormalisation by Cholesky QR, for subspace iteration (src/ops/ortho.rs).
// The factorisation and the triangular inverse are blocked in NB × NB tiles, so every dispatch
// is short and all but the diagonal tiles spread over many workgroups (no host round trip and
// no single-workgroup loop over the whole matrix, whatever its size).
//   chol_shift     One workgroup: the diagonal of G (n×n, symmetric) grows by shift × trace(G)
//                  (shifted Cholesky QR: with shift > 0 the factorisation cannot break down,
//                  however ill-conditioned the columns); aux = [that diagonal | dead flags = 0].
//   chol_diag      One workgroup: the diagonal tile at `block`, factorised in workgroup memory
//                  (unblocked, right-looking). A column whose pivot falls to tol × its diagonal
//                  in aux or below is linearly dependent on the earlier ones (to working
//                  precision): it is marked dead (aux flag 1) and its row and column of L become
//                  e_j, so the other columns factor as if it were absent. A NaN pivot is not
//                  "dead": it propagates. The tile's rows are zeroed right of the diagonal.
//   chol_panel     One thread per row below the tile: that row of L21 = A21 L11⁻ᵀ by forward
//                  substitution (zero in dead columns).
//   chol_update    The trailing lower triangle A22 −= L21 L21ᵀ, in 16 × 16 output tiles.
//   tri_diag_inv   One thread per column: the inverse of its diagonal tile by forward
//                  substitution, and the zeros above the diagonal. A dead column's diagonal is
//                  0, so Q = Y L⁻ᵀ gets a zero column there.
//   tri_rows       The block row at `block` of L⁻¹ left of its diagonal tile:
//                  X_IJ = −X_II · Σ_{K<I} L_IK X_KJ, tile rows before it already final.
//   chol_inv_small One workgroup, n ≤ SMALL: chol_shift, the whole factorisation (as chol_diag
//                  on one tile) and L⁻¹ (as tri_diag_inv) in workgroup memory, one dispatch.
//                  For the narrow blocks of a small-k SVD, where the blocked kernels' eight
//                  dispatches per pass cost more than their arithmetic. Reads G (binding 1),
//                  writes aux and L⁻¹ (binding 3); L itself is not kept.
//   fill_dead      Writes hash-random values into the dead columns of Q (m×n), so the next pass
//                  turns them into fresh directions instead of losing rank.
//   ritz_residual  Eᵀ (k×m) with E[r][i] = Y[r][i] − σ_i U[r][i] for the first k columns of the
//                  row-major m×ld matrices Y = W V and U: the residuals of the Ritz triplets.
// Bindings are numbered from 1 in the order each entry point uses them; names say the role.
// Every kernel is in bounds by construction: loops run to n or to the tile's edge, and the
// host splits the 1-D and 2-D grids into pieces (`base`, `col_base`) of at most one dispatch.

struct Meta {
    n: u32, m: u32, k: u32, seed: u32,
    tol: f32, ld: u32, base: u32, shift: f32,
    block: u32, col_base: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
// chol_*: the matrix (in: G, out: L) and aux = [diagonal (n) | dead flags (n)].
@group(0) @binding(1) var<storage, read_write> gram: array<f32>;
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
// tri_*: L and aux in, L⁻¹ out. ritz_residual: Y, σ, Eᵀ out, U.
@group(0) @binding(1) var<storage, read> lower: array<f32>;
@group(0) @binding(2) var<storage, read> aux_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> basis: array<f32>;
// fill_dead: aux in (binding 1), Q in place (binding 2).
@group(0) @binding(2) var<storage, read_write> q: array<f32>;

const WG: u32 = 256u;
// The tile width of the blocked factorisation and inverse.
const NB: u32 = 32u;

var<workgroup> partial: array<f32, 256>;
// One NB × NB tile (chol_diag, chol_panel), two 16 × NB strips (chol_update) or NB × 8 sums
// (tri_rows).
var<workgroup> tile: array<f32, 1024>;

@compute @workgroup_size(256, 1, 1)
fn chol_shift(@builtin(local_invocation_index) t: u32) {
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
}

// The nb × nb diagonal tile at (jb, jb) into `tile` (zero outside it), by `threads` threads.
fn load_diagonal_tile(t: u32, threads: u32, n: u32, jb: u32, nb: u32) {
    for (var e = t; e < NB * NB; e += threads) {
        let i = e / NB;
        let c = e % NB;
        var v = 0.0;
        if (i < nb && c < nb) { v = gram[(jb + i) * n + jb + c]; }
        tile[e] = v;
    }
}

@compute @workgroup_size(32, 1, 1)
fn chol_diag(@builtin(local_invocation_index) t: u32) {
    let n = p.n;
    let jb = p.block;
    let nb = min(NB, n - jb);
    load_diagonal_tile(t, NB, n, jb, nb);
    workgroupBarrier();
    for (var j = 0u; j < nb; j++) {
        let d = tile[j * NB + j];
        let dead = d <= p.tol * aux[jb + j];
        let l = select(sqrt(d), 1.0, dead);
        workgroupBarrier();
        if (t > j && t < nb) { tile[t * NB + j] = select(tile[t * NB + j] / l, 0.0, dead); }
        if (t == j) { tile[j * NB + j] = l; }
        if (dead) {
            if (t < j) { tile[j * NB + t] = 0.0; }
            // The dead row left of the tile, from earlier panels.
            for (var c = t; c < jb; c += NB) { gram[(jb + j) * n + c] = 0.0; }
            if (t == 0u) { aux[n + jb + j] = 1.0; }
        }
        workgroupBarrier();
        if (!dead && t > j && t < nb) {
            let lij = tile[t * NB + j];
            for (var c = j + 1u; c <= t; c++) { tile[t * NB + c] -= lij * tile[c * NB + j]; }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < nb; i++) {
        let row = (jb + i) * n;
        if (t < nb) { gram[row + jb + t] = select(tile[i * NB + t], 0.0, t > i); }
        for (var c = jb + nb + t; c < n; c += NB) { gram[row + c] = 0.0; }
    }
}

@compute @workgroup_size(64, 1, 1)
fn chol_panel(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let n = p.n;
    let jb = p.block;
    let nb = min(NB, n - jb);
    load_diagonal_tile(t, 64u, n, jb, nb);
    workgroupBarrier();
    let r = p.base + gid.x;
    if (r < n) {
        let row = r * n + jb;
        for (var j = 0u; j < nb; j++) {
            var s = gram[row + j];
            for (var c = 0u; c < j; c++) { s -= gram[row + c] * tile[j * NB + c]; }
            gram[row + j] = select(s / tile[j * NB + j], 0.0, aux[n + jb + j] == 1.0);
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn chol_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = p.n;
    let jb = p.block;
    let nb = min(NB, n - jb);
    let row0 = p.base + wid.y * 16u;
    let col0 = p.col_base + wid.x * 16u;
    // A tile wholly above the diagonal has nothing to do.
    if (col0 > row0 + 15u) { return; }
    let t = lid.y * 16u + lid.x;
    for (var e = t; e < 16u * NB; e += 256u) {
        let i = e / NB;
        let k = e % NB;
        var a = 0.0;
        var b = 0.0;
        if (k < nb && row0 + i < n) { a = gram[(row0 + i) * n + jb + k]; }
        if (k < nb && col0 + i < n) { b = gram[(col0 + i) * n + jb + k]; }
        tile[e] = a;
        tile[16u * NB + e] = b;
    }
    workgroupBarrier();
    let r = row0 + lid.y;
    let c = col0 + lid.x;
    if (r < n && c <= r) {
        var s = 0.0;
        for (var k = 0u; k < nb; k++) { s += tile[lid.y * NB + k] * tile[16u * NB + lid.x * NB + k]; }
        gram[r * n + c] -= s;
    }
}

@compute @workgroup_size(64, 1, 1)
fn tri_diag_inv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.n;
    let c = p.base + gid.x;
    if (c >= n) { return; }
    for (var r = 0u; r < c; r++) { out[r * n + c] = 0.0; }
    let end = min(c / NB * NB + NB, n);
    out[c * n + c] = select(1.0 / lower[c * n + c], 0.0, aux_in[n + c] == 1.0);
    for (var r = c + 1u; r < end; r++) {
        var s = 0.0;
        for (var i = c; i < r; i++) { s += lower[r * n + i] * out[i * n + c]; }
        out[r * n + c] = -s / lower[r * n + r];
    }
}

@compute @workgroup_size(32, 8, 1)
fn tri_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = p.n;
    let ib = p.block;
    let nb = min(NB, n - ib);
    let c = p.col_base + wid.x * 8u + lid.y;
    let inside = c < ib && lid.x < nb;
    // A dead row of L is e_jᵀ: its row of L⁻¹ left of the diagonal is zero, nothing to sum.
    let live = inside && aux_in[n + ib + lid.x] != 1.0;
    // T[s][c] = Σ_{c ≤ k < ib} L[ib + s][k] X[k][c] (X is zero above its diagonal).
    var s = 0.0;
    if (live) {
        let row = (ib + lid.x) * n;
        for (var k = c; k < ib; k++) { s += lower[row + k] * out[k * n + c]; }
    }
    tile[lid.x * 8u + lid.y] = s;
    workgroupBarrier();
    if (inside) {
        let row = (ib + lid.x) * n;
        var acc = 0.0;
        for (var j = 0u; j <= lid.x; j++) { acc += out[row + ib + j] * tile[j * 8u + lid.y]; }
        out[row + c] = select(-acc, 0.0, !live);
    }
}

// The widest matrix chol_inv_small takes (`ortho::SMALL` on the host): 9 KB of workgroup
// memory, so that no entry point of this module needs more than WebGPU's default 16 KB.
const SMALL: u32 = 48u;
var<workgroup> small: array<f32, 2304>;
// The shifted diagonal before factorisation, and the dead flags.
var<workgroup> small_diag: array<f32, 48>;
var<workgroup> small_dead: array<f32, 48>;

@compute @workgroup_size(64, 1, 1)
fn chol_inv_small(@builtin(local_invocation_index) t: u32) {
    let n = min(p.n, SMALL);
    for (var e = t; e < n * n; e += 64u) { small[e] = lower[e]; }
    workgroupBarrier();
    // n ≤ 48 adds per thread: cheaper than a reduction, and every thread has the same sum.
    var tr = 0.0;
    for (var i = 0u; i < n; i++) { tr += small[i * n + i]; }
    workgroupBarrier();
    if (t < n) {
        let d = small[t * n + t] + p.shift * tr;
        small[t * n + t] = d;
        small_diag[t] = d;
        small_dead[t] = 0.0;
    }
    workgroupBarrier();
    for (var j = 0u; j < n; j++) {
        let d = small[j * n + j];
        let dead = d <= p.tol * small_diag[j];
        let l = select(sqrt(d), 1.0, dead);
        workgroupBarrier();
        if (t > j && t < n) { small[t * n + j] = select(small[t * n + j] / l, 0.0, dead); }
        if (t == j) {
            small[j * n + j] = l;
            small_dead[j] = select(0.0, 1.0, dead);
        }
        if (dead && t < j) { small[j * n + t] = 0.0; }
        workgroupBarrier();
        if (!dead && t > j && t < n) {
            let lij = small[t * n + j];
            for (var c = j + 1u; c <= t; c++) { small[t * n + c] -= lij * small[c * n + j]; }
        }
        workgroupBarrier();
    }
    if (t < n) {
        aux[t] = small_diag[t];
        aux[n + t] = small_dead[t];
        // Column t of L⁻¹ by forward substitution; this invocation reads back only its own writes.
        let c = t;
        for (var r = 0u; r < c; r++) { out[r * n + c] = 0.0; }
        out[c * n + c] = select(1.0 / small[c * n + c], 0.0, small_dead[c] == 1.0);
        for (var r = c + 1u; r < n; r++) {
            var s = 0.0;
            for (var i = c; i < r; i++) { s += small[r * n + i] * out[i * n + c]; }
            out[r * n + c] = -s / small[r * n + r];
        }
    }
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
