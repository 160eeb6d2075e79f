// Row gather (embedding lookup): out[i, :] = table[ids[i], :].
// A table larger than one binding is processed in row ranges: this dispatch sees table rows
// [row_start, row_start + table_rows) and writes only the output rows whose id falls there.

struct Meta {
    n_ids: u32, cols: u32, row_start: u32, table_rows: u32,
    ids_off: u32, table_off: u32, out_off: u32, _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Meta;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wg.y;
    let j = wg.x * 256u + lid.x;
    if (i >= p.n_ids || j >= p.cols) { return; }
    let id = ids[p.ids_off + i];
    if (id < p.row_start || id >= p.row_start + p.table_rows) { return; }
    out[p.out_off + i * p.cols + j] = table[p.table_off + (id - p.row_start) * p.cols + j];
}

// Scatter-add (the gradient of gather_rows w.r.t. the table): out[id, :] = sum of d_rows[i, :]
// over the positions i with ids[i] = id. The host groups positions by id; `ids` here holds,
// for this dispatch's n_ids distinct ids, [ids (n)][starts (n + 1)][positions], and `table` is
// d_rows. One thread per (distinct id, column) sums its positions in order: deterministic.
// Output rows are counted from row_start.
@compute @workgroup_size(256, 1, 1)
fn scatter_add_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let u = wg.y;
    let j = wg.x * 256u + lid.x;
    if (u >= p.n_ids || j >= p.cols) { return; }
    let base = p.ids_off;
    let id = ids[base + u];
    let first = ids[base + p.n_ids + u];
    let last = ids[base + p.n_ids + u + 1u];
    let pos = base + 2u * p.n_ids + 1u;
    var acc = 0.0;
    for (var k = first; k < last; k++) { acc += table[p.table_off + ids[pos + k] * p.cols + j]; }
    out[p.out_off + (id - p.row_start) * p.cols + j] = acc;
}
