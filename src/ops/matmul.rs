//! Batched GEMM, C = alpha * op(A) * op(B) + beta * C (shaders/matmul.wgsl).
//!
//! Problems larger than one dispatch (workgroups per dimension) or one binding are cut into
//! pieces along batch, M, N and K; pieces along K accumulate into C with beta = 1.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::shaders::{MATMUL, MATMUL_COOP, MATMUL_LANES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Register-tiled 128x128 kernel with vector loads.
    Tuned,
    /// The same tile with named accumulators and double-buffered workgroup tiles, so the next
    /// K step's global loads overlap this step's arithmetic (issue 11's GPU scheme; `revive
    /// tune` decides per adapter whether it beats Tuned).
    Pipelined,
    /// The tuned kernel's scheme on a 32x128 tile: for products of a few dozen rows (the
    /// prompts of an edit), which would leave most of a 128-row tile idle.
    Rows32,
    /// 32x32 tile, each thread a 4x4 block: for products of a hundred to a few thousand rows
    /// by a few hundred columns, too few 128-row tiles to fill a GPU (a prefill, an edit's
    /// batch), with more work per thread than Tile16.
    Tile32,
    /// The same scheme on a 64x64 tile (16x16 threads): between Tile32 and the 128-row tiles.
    Tile64,
    /// Plain 16x16 shared-memory tile: the baseline the tuned kernel must beat.
    Tile16,
    /// One output per workgroup, threads split K: for products of a few rows (decoding).
    Dot,
    /// One output column per thread, up to 4 rows per workgroup row, no barriers: the other
    /// decode kernel (far faster than Dot where a workgroup runs as one CPU thread).
    Gemv,
    /// Each thread a block of up to 8 x 16 outputs, no workgroup memory: few load
    /// instructions per multiply-add, for adapters where a load costs far more than
    /// arithmetic (llvmpipe).
    Block,
    /// The block kernel's scheme with op(A) shared across a subgroup of 8 by broadcasts
    /// (shaders/matmul_lanes.wgsl): 16 × 8 outputs per thread for fewer loads still. Only on
    /// a device with subgroups exactly 8 wide (`Gpu::subgroup_lanes`: lavapipe on AVX2).
    Lanes,
    /// Products of a few rows on the same devices: a subgroup of 8 per up to 4 rows × 8
    /// columns, each lane a quarter of every 32 steps of K, the sums ended by `subgroupAdd`
    /// (shaders/matmul_lanes.wgsl), so the subgroup streams the rows of W one after another.
    DotLanes,
    /// Cooperative matrices (tensor cores) on f16-rounded operands with f32 accumulation
    /// (shaders/matmul_coop.wgsl): only on a device opened with them (`Gpu::cooperative_matrix`,
    /// REVIVE_COOPERATIVE=1), never chosen by Auto or the autotune, since it changes the result
    /// by about 1e-3 relative.
    Coop,
    /// The kernel the autotune measured fastest for this shape class on this adapter; without
    /// a measurement, the fixed rule (`Kernel::by_rule`).
    Auto,
}

/// Up to this many rows of op(A) a GPU's fixed rule takes the dot-product kernel.
pub const DOT_MAX_ROWS: usize = 4;
/// From this many 128×128 output tiles on, a GPU's fixed rule takes the pipelined kernel: fewer
/// leave most of the GPU's multiprocessors idle, where the small tile's many workgroups win.
pub const PIPELINED_MIN_TILES: usize = 48;
/// Nor does it take the pipelined kernel for fewer rows than this, which would leave most of
/// each 128-row tile idle.
pub const PIPELINED_MIN_ROWS: usize = 65;
/// From this many rows of op(A) on, a CPU adapter's fixed rule takes the lanes kernel where the
/// device has it: its blocks are 16 rows high, and below this the block kernel's 8 waste less.
pub const LANES_MIN_ROWS: usize = 9;
/// Up to this many rows, and from `DOT_LANES_MIN_COLS` columns of a B stored N × K (a layer's
/// W) on, the same devices' rule takes the lanes dot kernel. On lavapipe (2026-12-06,
/// docs/results.md) it computed a decoded token's vocabulary head (1 × 49,152 × 576, 113 MB
/// of weights, never in cache) 1.6–1.7× faster than the block kernel; at 4 rows the block
/// kernel was faster, and on a layer's products (576–3,072 columns) it was no faster within a
/// decoding step, where each layer's weights arrive cold.
pub const DOT_LANES_MAX_ROWS: usize = 1;
pub const DOT_LANES_MIN_COLS: usize = 16384;

/// Every concrete kernel, for the autotune and the tests.
/// Not every device runs every one (`Kernel::runs_on`).
pub const KERNELS: [Kernel; 11] = [Kernel::Tuned, Kernel::Pipelined, Kernel::Rows32, Kernel::Tile64, Kernel::Tile32, Kernel::Tile16, Kernel::Dot, Kernel::Gemv, Kernel::Block, Kernel::Lanes, Kernel::DotLanes];

/// The shape class a tuned choice applies to: each dimension rounded up to a power of two,
/// the transposes and whether the product is batched.
pub fn tune_key(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, batched: bool) -> String {
    let p = |x: usize| x.max(1).next_power_of_two();
    format!("matmul/{}{}{}/m{}/n{}/k{}", if trans_a { "t" } else { "n" }, if trans_b { "t" } else { "n" }, if batched { "b" } else { "" }, p(m), p(n), p(k))
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Tuned => "tuned",
            Kernel::Pipelined => "pipelined",
            Kernel::Rows32 => "rows32",
            Kernel::Tile32 => "tile32",
            Kernel::Tile64 => "tile64",
            Kernel::Tile16 => "tile16",
            Kernel::Dot => "dot",
            Kernel::Gemv => "gemv",
            Kernel::Block => "block",
            Kernel::Lanes => "lanes",
            Kernel::DotLanes => "dotlanes",
            Kernel::Coop => "coop",
            Kernel::Auto => "auto",
        }
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        KERNELS.into_iter().find(|k| k.name() == name)
    }

    /// Whether `gpu` can run this kernel: the cooperative and lanes kernels need device
    /// features, the others run anywhere.
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        match self {
            Kernel::Coop => gpu.cooperative_matrix(),
            Kernel::Lanes | Kernel::DotLanes => gpu.subgroup_lanes(),
            _ => true,
        }
    }

    /// Why `gpu` cannot run this kernel (where `runs_on` says so): what it needs and what the
    /// device has.
    fn missing_on(self, gpu: &Gpu) -> String {
        let info = gpu.info();
        match self {
            Kernel::Coop => format!(
                "matmul: the cooperative-matrix kernel needs a device opened with REVIVE_COOPERATIVE=1 on an adapter with f16 16×16 cooperative matrices and 32-wide subgroups; {} has {}",
                gpu.label(),
                if info.device_type == wgpu::DeviceType::Cpu { "none (a CPU adapter)" } else { "them off or missing" }
            ),
            Kernel::Lanes | Kernel::DotLanes => gpu.lanes_missing(&format!("matmul: the {} kernel", self.name())),
            other => format!("matmul: {} cannot run the {} kernel", gpu.label(), other.name()),
        }
    }

    /// The fixed rule, where nothing was measured for an m×n output (`lanes`: the device runs
    /// the lanes kernel). On a software adapter (llvmpipe) the block kernel was 1.4–6× faster
    /// than every other on every shape of SmolLM2's forward and backward passes, and the lanes
    /// kernel then 1.6–1.7× faster than it on square products of 512 and 1,024 and 1.2–1.4× on
    /// a 128-token prefill (docs/results.md, 2026-12-05). On the H200 (2026-12-04) the
    /// dot kernel won every single-row product, the 16×16 tile nearly every product of up to a
    /// few hundred rows (by 2–30× over the 128-row tiles, which leave most multiprocessors
    /// idle there), and the pipelined 128×128 tile the large ones (0.53× cuBLAS at 4096³).
    pub fn by_rule(m: usize, n: usize, trans_b: bool, cpu: bool, lanes: bool) -> Kernel {
        if cpu {
            if lanes && m <= DOT_LANES_MAX_ROWS && trans_b && n >= DOT_LANES_MIN_COLS {
                Kernel::DotLanes
            } else if lanes && m >= LANES_MIN_ROWS {
                Kernel::Lanes
            } else {
                Kernel::Block
            }
        } else if m <= DOT_MAX_ROWS {
            Kernel::Dot
        } else if m >= PIPELINED_MIN_ROWS && m.div_ceil(128) * n.div_ceil(128) >= PIPELINED_MIN_TILES {
            Kernel::Pipelined
        } else {
            Kernel::Tile16
        }
    }

    fn resolve_for(self, gpu: &Gpu, l: &Layout) -> Kernel {
        if self != Kernel::Auto {
            return self;
        }
        Kernel::auto_for(gpu, &Shape { m: l.m, n: l.n, k: l.k, trans_a: l.trans_a, trans_b: l.trans_b }, l.batch > 1)
    }

    /// What `Auto` runs for this product shape (`auto_choice` of its class), remembered per
    /// shape by the device until a new choice is recorded.
    pub fn auto_for(gpu: &Gpu, s: &Shape, batched: bool) -> Kernel {
        let flags = s.trans_a as u64 | (s.trans_b as u64) << 1 | (batched as u64) << 2;
        let index = gpu.derived_choice([s.m as u64, s.n as u64, s.k as u64, flags], || {
            let kernel = Kernel::auto_choice(gpu, &tune_key(s.m, s.n, s.k, s.trans_a, s.trans_b, batched), s.m, s.n, s.trans_b);
            KERNELS.iter().position(|&k| k == kernel).expect("Auto resolves to a measured or ruled kernel, all in KERNELS") as u8
        });
        KERNELS[index as usize]
    }

    /// What `Auto` runs for the shape class `key` (see `tune_key`) of an m×n output. A measured
    /// choice this device cannot run (the lanes kernel, measured before REVIVE_NO_LANES=1 was
    /// set) gives way to the rule.
    pub fn auto_choice(gpu: &Gpu, key: &str, m: usize, n: usize, trans_b: bool) -> Kernel {
        gpu.choice(key).and_then(|c| Kernel::from_name(&c)).filter(|k| k.runs_on(gpu)).unwrap_or_else(|| Kernel::by_rule(m, n, trans_b, gpu.is_cpu(), gpu.subgroup_lanes()))
    }

    fn entry(self) -> &'static str {
        match self {
            Kernel::Tuned | Kernel::Auto => "matmul",
            Kernel::Pipelined => "matmul_pipelined",
            Kernel::Rows32 => "matmul_rows32",
            Kernel::Tile32 => "matmul_tile32",
            Kernel::Tile64 => "matmul_tile64",
            Kernel::Tile16 => "matmul_tile16",
            Kernel::Dot => "matmul_dot",
            Kernel::Gemv => "matmul_gemv",
            Kernel::Block => "matmul_block",
            Kernel::Lanes => "matmul_lanes",
            Kernel::DotLanes => "matmul_dot_lanes",
            Kernel::Coop => "matmul_coop",
        }
    }
    /// Output rows and columns per workgroup.
    fn tile(self, l: &Layout) -> (usize, usize) {
        match self {
            Kernel::Block => (block_rows(l), 16 * 16),
            Kernel::Lanes => (16, 8 * 8),
            Kernel::DotLanes => (dot_rows(l), 8),
            Kernel::Tuned | Kernel::Pipelined | Kernel::Auto => (128, 128),
            Kernel::Rows32 => (32, 128),
            Kernel::Tile32 => (32, 32),
            Kernel::Tile64 => (64, 64),
            Kernel::Tile16 => (16, 16),
            Kernel::Dot => (1, 1),
            Kernel::Gemv => (4, 64),
            Kernel::Coop => (64, 64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub kernel: Kernel,
}

impl Default for Gemm {
    fn default() -> Self {
        Gemm { trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, kernel: Kernel::Auto }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Meta {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    _pad0: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    _pad1: u32,
    a_bstride: u32,
    b_bstride: u32,
    c_bstride: u32,
    _pad2: u32,
    alpha: f32,
    beta: f32,
    _pad3: [u32; 2],
}

/// Rows of C per thread of the block kernel: as many as op(A) has, up to 8, a power of two so
/// that the unused accumulators compile away (8 when A is transposed and has more than 4 rows:
/// its loads then run along M, four rows at once).
fn block_rows(l: &Layout) -> usize {
    if l.trans_a {
        if l.m > 4 { 8 } else { 4 }
    } else {
        l.m.clamp(1, 8).next_power_of_two()
    }
}

/// Rows of C per workgroup of the lanes dot kernel: as many as op(A) has, up to 4, a power of
/// two (the unused sums compile away).
fn dot_rows(l: &Layout) -> usize {
    l.m.clamp(1, 4).next_power_of_two()
}

/// The layout of one problem, in elements.
#[derive(Debug, Clone, Copy)]
struct Layout {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    a_bs: usize,
    b_bs: usize,
    c_bs: usize,
    trans_a: bool,
    trans_b: bool,
}

impl Layout {
    fn a_at(&self, b: usize, m: usize, k: usize) -> usize {
        b * self.a_bs + if self.trans_a { k * self.lda + m } else { m * self.lda + k }
    }
    fn b_at(&self, b: usize, k: usize, n: usize) -> usize {
        b * self.b_bs + if self.trans_b { n * self.ldb + k } else { k * self.ldb + n }
    }
    fn c_at(&self, b: usize, m: usize, n: usize) -> usize {
        b * self.c_bs + m * self.ldc + n
    }
}

/// One piece of the problem: half-open ranges along batch, M, N, K.
#[derive(Debug, Clone, Copy)]
struct Piece {
    b: (usize, usize),
    m: (usize, usize),
    n: (usize, usize),
    k: (usize, usize),
}

impl Piece {
    /// [first, last] element offsets each operand touches (strides are non-negative, so the
    /// extremes sit at the low and high corners).
    fn spans(&self, l: &Layout) -> [(usize, usize); 3] {
        let (b0, b1, m0, m1, n0, n1, k0, k1) =
            (self.b.0, self.b.1 - 1, self.m.0, self.m.1 - 1, self.n.0, self.n.1 - 1, self.k.0, self.k.1 - 1);
        [
            (l.a_at(b0, m0, k0), l.a_at(b1, m1, k1)),
            (l.b_at(b0, k0, n0), l.b_at(b1, k1, n1)),
            (l.c_at(b0, m0, n0), l.c_at(b1, m1, n1)),
        ]
    }
}

/// Sizes of the pieces along (batch, M, N, K) so each fits one dispatch and one binding.
fn piece_sizes(l: &Layout, (tm, tn): (usize, usize), max_groups: usize, max_elems: usize) -> Result<[usize; 4]> {
    // The step each dimension is cut by: whole tiles along M and N, BK along K.
    let q = |d: usize| match d {
        1 => tm,
        2 => tn,
        _ => 8,
    };
    let mut s = [l.batch, l.m, l.n, l.k];
    let shrink = |x: usize, quantum: usize| -> usize {
        let h = x.div_ceil(2);
        if h > quantum { h.div_ceil(quantum) * quantum } else { h }
    };
    for _ in 0..256 {
        let p = Piece { b: (0, s[0]), m: (0, s[1]), n: (0, s[2]), k: (0, s[3]) };
        let [a, b, c] = p.spans(l).map(|(lo, hi)| hi - lo < max_elems);
        let groups_ok = [s[0], s[1].div_ceil(tm), s[2].div_ceil(tn)].iter().all(|&g| g <= max_groups);
        if a && b && c && groups_ok {
            return Ok(s);
        }
        // Batch first: it costs nothing in efficiency. Then the dimension that makes the
        // offending operand large, by its storage order.
        let before = s;
        if s[0] > 1 {
            s[0] = s[0].div_ceil(2);
        } else if s[1].div_ceil(tm) > max_groups {
            s[1] = shrink(s[1], tm);
        } else if s[2].div_ceil(tn) > max_groups {
            s[2] = shrink(s[2], tn);
        } else if !c {
            if s[1] > 1 { s[1] = shrink(s[1], tm) } else { s[2] = shrink(s[2], tn) }
        } else if !a {
            let (outer, inner) = if l.trans_a { (3, 1) } else { (1, 3) };
            if s[outer] > 1 { s[outer] = shrink(s[outer], q(outer)) } else { s[inner] = shrink(s[inner], q(inner)) }
        } else if !b {
            let (outer, inner) = if l.trans_b { (2, 3) } else { (3, 2) };
            if s[outer] > 1 { s[outer] = shrink(s[outer], q(outer)) } else { s[inner] = shrink(s[inner], q(inner)) }
        }
        if s == before {
            break;
        }
    }
    Err(Error::TooLarge { op: "matmul", detail: format!("cannot split {l:?} to fit {max_elems} elements per binding") })
}

/// Splits a 2-D or 3-D shape into (batch, rows, cols).
fn dims(op: &'static str, name: &str, shape: &[usize]) -> Result<(Option<usize>, usize, usize)> {
    match *shape {
        [r, c] => Ok((None, r, c)),
        [b, r, c] => Ok((Some(b), r, c)),
        _ => Err(Error::shape(op, format!("{name} has shape {shape:?}; expected 2-D or 3-D"))),
    }
}

/// C = alpha * op(A) * op(B) + beta * C. A is [M, K] ([K, M] when transposed), optionally with
/// a leading batch dimension; likewise B. A 2-D operand is shared by every batch. With `c`,
/// the result is written into it (and beta applies); without, a new tensor is returned.
pub fn gemm(gpu: &Gpu, a: &Tensor, b: &Tensor, c: Option<&Tensor>, g: Gemm) -> Result<Tensor> {
    const OP: &str = "matmul";
    let (ba, ar, ac) = dims(OP, "A", a.shape())?;
    let (bb, br, bc) = dims(OP, "B", b.shape())?;
    let (m, ka) = if g.trans_a { (ac, ar) } else { (ar, ac) };
    let (kb, n) = if g.trans_b { (bc, br) } else { (br, bc) };
    if ka != kb {
        return Err(Error::shape(OP, format!("inner dimensions differ: op(A) is {m}x{ka}, op(B) is {kb}x{n} (A {:?}, B {:?})", a.shape(), b.shape())));
    }
    let batch = match (ba, bb) {
        (Some(x), Some(y)) if x != y => {
            return Err(Error::shape(OP, format!("batch sizes differ: {x} vs {y}")));
        }
        (Some(x), _) | (_, Some(x)) => Some(x),
        (None, None) => None,
    };
    let out_shape: Vec<usize> = match batch {
        Some(bs) => vec![bs, m, n],
        None => vec![m, n],
    };
    let out = match c {
        Some(c) => {
            if c.shape() != out_shape.as_slice() {
                return Err(Error::shape(OP, format!("C is {:?}, the product is {:?}", c.shape(), out_shape)));
            }
            c.clone()
        }
        None if g.beta != 0.0 => return Err(Error::shape(OP, "beta != 0 needs a C to accumulate into")),
        None => gpu.empty(&out_shape)?,
    };
    if ka == 0 {
        return Err(Error::shape(OP, "the inner dimension K is 0"));
    }
    if m == 0 || n == 0 || batch == Some(0) {
        return Ok(out);
    }
    let layout = Layout {
        batch: batch.unwrap_or(1),
        m,
        n,
        k: ka,
        lda: ac,
        ldb: bc,
        ldc: n,
        a_bs: if ba.is_some() { ar * ac } else { 0 },
        b_bs: if bb.is_some() { br * bc } else { 0 },
        c_bs: m * n,
        trans_a: g.trans_a,
        trans_b: g.trans_b,
    };
    run(gpu, a, b, &out, &layout, g)?;
    Ok(out)
}

/// op(A) * op(B) with the kernel that suits the shape.
pub fn matmul(gpu: &Gpu, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    gemm(gpu, a, b, None, Gemm::default())
}

/// The longest K a product runs in one dispatch on a software adapter: the tiled kernels step
/// their K loops one element at a time, so past [`SOFTWARE_LOOP_LIMIT`](crate::gpu::SOFTWARE_LOOP_LIMIT) (65,535) they return
/// wrong sums there (measured on lavapipe and llvmpipe: the 128 × 128 and 32-row kernels right
/// at K = 49,152 and wrong at 65,536, the others wrong from 131,072 to 400,000); longer
/// products run in pieces of K, each adding onto the last.
const SOFTWARE_MAX_K: usize = 32_768;

fn run(gpu: &Gpu, a: &Tensor, b: &Tensor, c: &Tensor, l: &Layout, g: Gemm) -> Result<()> {
    let kernel = g.kernel.resolve_for(gpu, l);
    if !kernel.runs_on(gpu) {
        return Err(Error::Gpu(kernel.missing_on(gpu)));
    }
    let (shader, aligned_constant) = match kernel {
        Kernel::Coop => (MATMUL_COOP, false),
        Kernel::Lanes | Kernel::DotLanes => (MATMUL_LANES, true),
        _ => (MATMUL, true),
    };
    let tile = kernel.tile(l);
    let max_elems = Tensor::max_binding_elems(gpu);
    let [sb, sm, sn, sk] = piece_sizes(l, tile, gpu.split_limits().max_workgroups as usize, max_elems)?;
    // Some kernels' K loops step one element at a time: on a software adapter, K pieces that
    // keep every kernel's loop within the adapter's limit (pieces of 8-multiples, as piece_sizes
    // cuts K).
    let sk = if gpu.is_cpu() { sk.min(SOFTWARE_MAX_K) } else { sk };
    let ranges = |total: usize, step: usize| super::chunks(total, step).map(|(s, n)| (s, s + n));
    let lds_aligned = [l.lda, l.ldb, l.ldc, l.a_bs, l.b_bs, l.c_bs].iter().all(|x| x % 4 == 0);
    for bpart in ranges(l.batch, sb) {
        for mpart in ranges(l.m, sm) {
            for npart in ranges(l.n, sn) {
                for (ki, kpart) in ranges(l.k, sk).enumerate() {
                    let piece = Piece { b: bpart, m: mpart, n: npart, k: kpart };
                    let [sa, sbb, sc] = piece.spans(l);
                    let (a_bind, a_off) = a.bind(gpu, sa.0, sa.1 - sa.0 + 1)?;
                    let (b_bind, b_off) = b.bind(gpu, sbb.0, sbb.1 - sbb.0 + 1)?;
                    let (c_bind, c_off) = c.bind(gpu, sc.0, sc.1 - sc.0 + 1)?;
                    let aligned = lds_aligned && [a_off, b_off, c_off].iter().all(|o| o % 4 == 0);
                    let (pb, pm, pn) = (bpart.1 - bpart.0, mpart.1 - mpart.0, npart.1 - npart.0);
                    let meta = Meta {
                        m: pm as u32,
                        n: pn as u32,
                        k: (kpart.1 - kpart.0) as u32,
                        batch: pb as u32,
                        lda: l.lda as u32,
                        ldb: l.ldb as u32,
                        ldc: l.ldc as u32,
                        a_off,
                        b_off,
                        c_off,
                        a_bstride: l.a_bs as u32,
                        b_bstride: l.b_bs as u32,
                        c_bstride: l.c_bs as u32,
                        alpha: g.alpha,
                        // Later K pieces add onto what the earlier ones wrote.
                        beta: if ki == 0 { g.beta } else { 1.0 },
                        _pad0: 0,
                        _pad1: 0,
                        _pad2: 0,
                        _pad3: [0; 2],
                    };
                    // On the stack: this runs for every product of a forward pass.
                    let mut constants = [("TRANS_A", g.trans_a as u8 as f64), ("TRANS_B", g.trans_b as u8 as f64), ("", 0.0), ("", 0.0)];
                    let mut count = 2;
                    let mut add = |name: &'static str, value: f64| {
                        constants[count] = (name, value);
                        count += 1;
                    };
                    if aligned_constant {
                        add("ALIGNED", aligned as u8 as f64);
                    }
                    if kernel == Kernel::Block {
                        add("ROWS", tile.0 as f64);
                    }
                    if kernel == Kernel::DotLanes {
                        add("DOT_ROWS", tile.0 as f64);
                    }
                    let groups = [pn.div_ceil(tile.1) as u32, pm.div_ceil(tile.0) as u32, pb as u32];
                    gpu.dispatch(shader, kernel.entry(), &constants[..count], bytemuck::bytes_of(&meta), &[a_bind, b_bind, c_bind], groups)?;
                }
            }
        }
    }
    Ok(())
}

/// One product shape to tune: op(A) is m×k, op(B) k×n.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// What the autotune measured for one shape class.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TuneRow {
    pub key: String,
    pub shape: Shape,
    /// (kernel, median ms); a candidate dropped after its first run (over 3× the best so far)
    /// shows that one run.
    pub times: Vec<(String, f64)>,
    pub best: String,
    /// What the fixed rule would have used, and how much slower it is than the best.
    pub rule: String,
    pub rule_over_best: f64,
}

/// Up to this many outputs the dot kernel (a workgroup per output, K split over its threads)
/// is a candidate whatever the rows: a skinny product with a long K (the SVD's W·Z, 576×48
/// outputs over K = 1536) gives the tiles few workgroups each walking all of K.
const DOT_MAX_OUTPUTS: usize = 1 << 16;

/// The kernels worth trying for an m×n output: the decode kernels only where few rows leave the
/// tiles idle (or few outputs leave them few workgroups), the 128-row tiles only where they can
/// be filled. The rule's choice goes first, so that a slow candidate is dropped after one run
/// (over 3× the best so far).
fn candidates(m: usize, n: usize, rule: Kernel) -> Vec<Kernel> {
    let few_rows = m <= 16;
    let tiles: &[Kernel] = if few_rows { &[Kernel::Tile32] } else { &[Kernel::Tile32, Kernel::Tile64, Kernel::Tuned, Kernel::Pipelined] };
    let dot: &[Kernel] = if few_rows || m * n <= DOT_MAX_OUTPUTS { &[Kernel::Dot, Kernel::DotLanes] } else { &[] };
    let rest = [&[Kernel::Block, Kernel::Lanes, Kernel::Gemv, Kernel::Rows32, Kernel::Tile16], tiles, dot].concat();
    std::iter::once(rule).chain(rest.into_iter().filter(|&k| k != rule)).collect()
}

/// Measures every candidate kernel on each shape (random operands; the median of `reps`
/// timed runs after a warm-up) and records the fastest as this adapter's choice for the
/// shape's class. Shapes of a class already measured in this call are skipped. The choices
/// take effect at once; `Gpu::save_choices` keeps them for later runs.
pub fn tune(gpu: &Gpu, shapes: &[Shape], reps: usize, mut progress: impl FnMut(&TuneRow)) -> Result<Vec<TuneRow>> {
    let mut rows: Vec<TuneRow> = vec![];
    let mut r = crate::testing::rng(7);
    for &s in shapes {
        let key = tune_key(s.m, s.n, s.k, s.trans_a, s.trans_b, false);
        if rows.iter().any(|row| row.key == key) {
            continue;
        }
        let (ar, ac) = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
        let (br, bc) = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
        let a = gpu.upload(&crate::testing::random_vec(&mut r, ar * ac), &[ar, ac])?;
        let b = gpu.upload(&crate::testing::random_vec(&mut r, br * bc), &[br, bc])?;
        let c = gpu.empty(&[s.m, s.n])?;
        let rule = Kernel::by_rule(s.m, s.n, s.trans_b, gpu.is_cpu(), gpu.subgroup_lanes());
        let mut times = vec![];
        let mut best: Option<(Kernel, f64)> = None;
        for kernel in candidates(s.m, s.n, rule).into_iter().filter(|k| k.runs_on(gpu)) {
            let g = Gemm { trans_a: s.trans_a, trans_b: s.trans_b, kernel, ..Gemm::default() };
            gemm(gpu, &a, &b, Some(&c), g)?;
            let mut runs = vec![];
            for _ in 0..reps.max(1) {
                runs.push(gpu.time(|| gemm(gpu, &a, &b, Some(&c), g).map(|_| ()))?.best().as_secs_f64() * 1e3);
                if best.is_some_and(|(_, t)| runs[0] > 3.0 * t) {
                    break;
                }
            }
            runs.sort_by(f64::total_cmp);
            let ms = runs[runs.len() / 2];
            times.push((kernel.name().to_string(), ms));
            if best.is_none_or(|(_, t)| ms < t) {
                best = Some((kernel, ms));
            }
        }
        let (winner, best_ms) = best.expect("at least one candidate");
        let rule_ms = times.iter().find(|(n, _)| n == rule.name()).map(|t| t.1).unwrap_or(f64::NAN);
        gpu.set_choice(&key, winner.name());
        let row = TuneRow { key, shape: s, times, best: winner.name().into(), rule: rule.name().into(), rule_over_best: rule_ms / best_ms };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}
