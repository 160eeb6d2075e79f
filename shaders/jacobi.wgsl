// One-sided (Hestenes) Jacobi SVD of a small square matrix S = U Σ Vᵀ (src/ops/jacobi.rs): the
// Rayleigh–Ritz step of the subspace iteration, so a convergence check reads back a few bytes
// instead of the p×p quotient. Columns of S are rotated in pairs until every pair is
// orthogonal to working precision; then σ_i = ‖column i‖, U's column i = column i / σ_i, and V
// is the product of the rotations. Both are held transposed (row i of `cols` is column i of the
// rotated S, row i of `vecs` column i of V), so every vector a kernel touches is contiguous.
//   jacobi_rotate   One workgroup per pair of one round-robin round (p' = p rounded up to
//                   even; p' − 1 rounds make a sweep, every pair meets once, the pairs of a
//                   round are disjoint). α = ‖a_i‖², β = ‖a_j‖², γ = a_i·a_j; unless
//                   |γ| ≤ tol·√(αβ) the pair is rotated by the angle that zeroes γ (the
//                   smaller of the two roots, Rutishauser's formula) and rotations[sweep] is
//                   counted. A sweep that counts nothing has converged.
//   jacobi_norms    One workgroup per column: σ_i = ‖a_i‖.
//   jacobi_rank     One thread per column: its place in non-increasing σ order (ties by index,
//                   NaN first, so the places are a permutation whatever the values and a NaN
//                   reaches the host in sorted[0]); the sorted σ.
//   jacobi_scatter  One thread per element: U[r][rank_i] = a_i[r] / σ_i (zero where σ_i = 0),
//                   V[r][rank_i] = v_i[r], both row-major p×p.
// Bindings are numbered from 1 in the order each entry point uses them; names say the role.
// Every kernel is in bounds by construction: loops run to p, and the host splits the grids
// into pieces of at most one dispatch (`base` is a piece's first pair, column or element).

struct Meta {
    p: u32, base: u32, round: u32, sweep: u32,
    tol: f32, pad0: u32, pad1: u32, pad2: u32,
}

@group(0) @binding(0) var<uniform> m: Meta;
// jacobi_rotate: columns and V (transposed, in place), the per-sweep rotation counts.
@group(0) @binding(1) var<storage, read_write> cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> vecs: array<f32>;
@group(0) @binding(3) var<storage, read_write> rotations: array<atomic<u32>>;
// jacobi_norms: columns in, σ out. jacobi_rank: σ in, places and sorted σ out.
// jacobi_scatter: columns, V (transposed), σ and places in; U and V (sorted, row-major) out.
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> norms: array<f32>;
@group(0) @binding(2) var<storage, read_write> places: array<u32>;
@group(0) @binding(3) var<storage, read_write> sorted: array<f32>;
@group(0) @binding(2) var<storage, read> vecs_in: array<f32>;
@group(0) @binding(3) var<storage, read> sigma_in: array<f32>;
@group(0) @binding(4) var<storage, read> places_in: array<u32>;
@group(0) @binding(5) var<storage, read_write> u_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_out: array<f32>;

const WG: u32 = 64u;

var<workgroup> partial: array<vec4<f32>, 64>;

// The workgroup's sum of `v` (every thread gets it); called in uniform control flow.
fn workgroup_sum(lid: u32, v: vec4<f32>) -> vec4<f32> {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    return partial[0];
}

@compute @workgroup_size(64, 1, 1)
fn jacobi_rotate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = m.p;
    let last = p + (p & 1u) - 1u;
    let pair = m.base + wid.x;
    if (pair > last / 2u) { return; }
    // The circle method: `last` stays put, the others turn by one place per round.
    var i = last;
    var j = m.round;
    if (pair > 0u) {
        i = (m.round + pair) % last;
        j = (m.round + last - pair) % last;
    }
    // An odd p pairs one column per round with the place p, which is not a column.
    if (i >= p || j >= p) { return; }
    let ri = i * p;
    let rj = j * p;
    var acc = vec4<f32>(0.0);
    for (var r = lid; r < p; r += WG) {
        let a = cols[ri + r];
        let b = cols[rj + r];
        acc += vec4<f32>(a * a, b * b, a * b, 0.0);
    }
    let sums = workgroup_sum(lid, acc);
    let alpha = sums.x;
    let beta = sums.y;
    let gamma = sums.z;
    // A NaN rotates nothing (it reaches σ and the host sees it there). Tested on the bits, since
    // a driver's fast-math may fold a negated comparison into the plain one.
    if (is_nan(gamma) || is_nan(alpha) || is_nan(beta)) { return; }
    if (!(abs(gamma) > m.tol * sqrt(alpha) * sqrt(beta))) { return; }
    let zeta = (beta - alpha) / (2.0 * gamma);
    let az = abs(zeta);
    // Past 1e18, √(1 + ζ²) is |ζ| in f32 and ζ² would overflow.
    let root = select(sqrt(1.0 + az * az), az, az > 1e18);
    let t = select(-1.0, 1.0, zeta >= 0.0) / (az + root);
    let c = 1.0 / sqrt(1.0 + t * t);
    let s = c * t;
    // A rotation too small to change a value in f32 leaves the pair as orthogonal as it gets.
    if (s == 0.0) { return; }
    // (c a − s b, s a + c b) as (a − s(b + τa), b + s(a − τb)) with τ = s / (1 + c) = (1 − c) / s:
    // for the small angles of the late sweeps c rounds to 1 while 1 − c is not 0, and the plain
    // form then grows both columns by √(1 + s²) per rotation (σ drifted by p·ε); this form
    // keeps 1 − c in τ.
    let tau = s / (1.0 + c);
    for (var r = lid; r < p; r += WG) {
        let a = cols[ri + r];
        let b = cols[rj + r];
        cols[ri + r] = a - s * (b + tau * a);
        cols[rj + r] = b + s * (a - tau * b);
        let va = vecs[ri + r];
        let vb = vecs[rj + r];
        vecs[ri + r] = va - s * (vb + tau * va);
        vecs[rj + r] = vb + s * (va - tau * vb);
    }
    if (lid == 0u) { atomicAdd(&rotations[m.sweep], 1u); }
}

@compute @workgroup_size(64, 1, 1)
fn jacobi_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let p = m.p;
    let i = m.base + wid.x;
    if (i >= p) { return; }
    var acc = 0.0;
    for (var r = lid; r < p; r += WG) {
        let a = values[i * p + r];
        acc += a * a;
    }
    let sum = workgroup_sum(lid, vec4<f32>(acc, 0.0, 0.0, 0.0)).x;
    if (lid == 0u) { norms[i] = sqrt(sum); }
}

fn is_nan(x: f32) -> bool {
    // On the bits: a compiler may assume x == x.
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

// Whether σ_a (column a) sorts before σ_b: larger first, NaN before everything, ties by index.
fn sorts_before(x: f32, a: u32, y: f32, b: u32) -> bool {
    let xn = is_nan(x);
    let yn = is_nan(y);
    if (xn != yn) { return xn; }
    if (!xn && x != y) { return x > y; }
    return a < b;
}

@compute @workgroup_size(256, 1, 1)
fn jacobi_rank(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = m.p;
    let i = m.base + gid.x;
    if (i >= p) { return; }
    let x = values[i];
    var place = 0u;
    for (var j = 0u; j < p; j++) {
        if (j != i && sorts_before(values[j], j, x, i)) { place++; }
    }
    places[i] = place;
    sorted[place] = x;
}

@compute @workgroup_size(256, 1, 1)
fn jacobi_scatter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let p = m.p;
    let e = m.base + gid.x;
    if (e >= p * p) { return; }
    let i = e / p;
    let r = e % p;
    let to = r * p + places_in[i];
    let sigma = sigma_in[i];
    u_out[to] = select(values[e] / sigma, 0.0, sigma == 0.0);
    v_out[to] = vecs_in[e];
}
