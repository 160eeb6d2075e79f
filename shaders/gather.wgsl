// Row gather (embedding lookup): out[i, :] = table[ids[i], :].
// A table larger than one binding is processed in row ranges: this dispatch sees table rows
// [row_start, row_start + table_rows) and writes only the output rows whose id falls there.

struct Meta {
    n_ids: u32, cols: u32, row_start: u32, table_rows: u32,
    ids_off: u32, table_off: u32, out_off: u32,
    // gather_rows_at: every ids_stride-th value of `ids` is an index, of total_rows rows.
    ids_stride: u32, total_rows: u32, _pad0: u32, _pad1: u32, _pad2: u32,
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

// Row gather at indices a kernel found on the GPU (row_top_k's index plane: f32 values, every
// ids_stride-th one an index): the next token's embedding without its id going through the
// host. An index that is not a finite whole number below total_rows (logits that held a NaN
// give a NaN index) makes its row NaN, written by the dispatch of the first row range, so the
// fault reaches the host with the index instead of a stale row going on.
@compute @workgroup_size(256, 1, 1)
fn gather_rows_at(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wg.y;
    let j = wg.x * 256u + lid.x;
    if (i >= p.n_ids || j >= p.cols) { return; }
    let bits = ids[p.ids_off + i * p.ids_stride];
    let v = bitcast<f32>(bits);
    // The exponent test rather than v != v: a compiler may assume floats are never NaN.
    let finite = (bits & 0x7f800000u) != 0x7f800000u;
    if (!finite || v < 0.0 || v >= f32(p.total_rows) || floor(v) != v) {
        if (p.row_start == 0u) { out[p.out_off + i * p.cols + j] = bitcast<f32>(0x7fc00000u); }
        return;
    }
    let id = u32(v);
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
