// The REVIVE filter in complement-projector form (src/ops/project.rs):
//   out = (I − U Uᵀ) X (I − V Vᵀ) = X − U T − S Vᵀ,
// with T = Uᵀ X (kl×n) and S = (I − U Uᵀ) X V (m×kr) formed beforehand by matmuls. One pass
// reads X once and writes out once; the kl + kr inner products per element run over 16-wide
// tiles of U|T and S|V in shared memory. kl or kr may be 0 (a one-sided projector).
// X, out: m×n; U: m×kl; T: kl×n; S: m×kr; V: n×kr; all row-major.

struct Meta {
    m: u32, n: u32, kl: u32, kr: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read> s: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const TILE: u32 = 16u;
var<workgroup> left: array<array<f32, 16>, 16>;   // [row][inner]
var<workgroup> right: array<array<f32, 16>, 16>;  // [inner][col]

@compute @workgroup_size(16, 16, 1)
fn complement(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wg.y * TILE + lid.y;
    let col = wg.x * TILE + lid.x;
    var acc = 0.0;
    // U T: left[r][a] = U[row0 + r][a0 + a], right[a][c] = T[a0 + a][col0 + c].
    for (var a0 = 0u; a0 < p.kl; a0 += TILE) {
        let a_l = a0 + lid.x;
        let a_r = a0 + lid.y;
        left[lid.y][lid.x] = select(0.0, u[row * p.kl + a_l], row < p.m && a_l < p.kl);
        right[lid.y][lid.x] = select(0.0, t[a_r * p.n + col], a_r < p.kl && col < p.n);
        workgroupBarrier();
        for (var a = 0u; a < TILE; a++) { acc += left[lid.y][a] * right[a][lid.x]; }
        workgroupBarrier();
    }
    // S Vᵀ: left[r][b] = S[row0 + r][b0 + b], right[b][c] = V[col0 + c][b0 + b].
    for (var b0 = 0u; b0 < p.kr; b0 += TILE) {
        let b_l = b0 + lid.x;
        let b_r = b0 + lid.y;
        left[lid.y][lid.x] = select(0.0, s[row * p.kr + b_l], row < p.m && b_l < p.kr);
        let vc = wg.x * TILE + lid.x;
        right[lid.y][lid.x] = select(0.0, v[vc * p.kr + b_r], vc < p.n && b_r < p.kr);
        workgroupBarrier();
        for (var b = 0u; b < TILE; b++) { acc += left[lid.y][b] * right[b][lid.x]; }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        out[row * p.n + col] = x[row * p.n + col] - acc;
    }
}
