//! The WGSL sources, one op family per file under `shaders/`. They are compiled into the binary
//! so the program runs from anywhere; `ALL` lets a test translate every one through naga.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($ident:ident, $name:literal) => {
        pub const $ident: Shader =
            Shader { name: $name, source: include_str!(concat!("../shaders/", $name, ".wgsl")) };
    };
    // A shader after a prelude of declarations it shares with others (WGSL has no include).
    ($ident:ident, $name:literal, after $prelude:literal) => {
        pub const $ident: Shader = Shader {
            name: $name,
            source: concat!(include_str!(concat!("../shaders/", $prelude, ".wgsl")), "\n", include_str!(concat!("../shaders/", $name, ".wgsl"))),
        };
    };
}

shader!(MATMUL, "matmul", after "matmul_common");
shader!(REDUCE, "reduce");
shader!(ELEMENTWISE, "elementwise");
shader!(SOFTMAX, "softmax");
shader!(GATHER, "gather");
shader!(NORM, "norm");
shader!(ACTIVATION, "activation");
shader!(ATTENTION, "attention", after "attention_common");
shader!(ROPE, "rope");
shader!(LOSS, "loss");
shader!(ORTHO, "ortho");
shader!(PROJECT, "project");
shader!(JACOBI, "jacobi");
// Built only where the device has cooperative matrices and f16 (`Gpu::cooperative_matrix`).
shader!(MATMUL_COOP, "matmul_coop");
// Built only where the device has subgroups exactly 8 wide (`Gpu::subgroup_lanes`).
shader!(MATMUL_LANES, "matmul_lanes", after "matmul_common");
shader!(ATTENTION_LANES, "attention_lanes", after "attention_common");

/// Every shader with the override-constant sets the host uses with it, so a translation test
/// covers each pipeline variant that can be built at run time.
pub fn all_variants() -> Vec<(Shader, Vec<(&'static str, f64)>)> {
    let mut v = vec![];
    for constants in matmul_constants() {
        v.push((MATMUL, constants.clone()));
        // The block kernel's eight-row form (the default, ROWS = 4, is the line above).
        v.push((MATMUL, [constants, vec![("ROWS", 8.0)]].concat()));
    }
    for op in [0.0, 1.0, 2.0] {
        v.push((REDUCE, vec![("OP", op)]));
    }
    v.push((ELEMENTWISE, vec![]));
    v.push((SOFTMAX, vec![]));
    v.push((GATHER, vec![]));
    // Threads per row: a GPU's and a CPU adapter's (`Gpu::row_threads`).
    v.push((NORM, vec![("WG", 256.0)]));
    v.push((NORM, vec![("WG", 8.0)]));
    v.push((ROPE, vec![]));
    v.push((ATTENTION, vec![]));
    v.push((ACTIVATION, vec![]));
    v.push((LOSS, vec![]));
    v.push((ORTHO, vec![]));
    v.push((PROJECT, vec![]));
    v.push((JACOBI, vec![]));
    v
}

/// The shaders that need optional device features, with their override-constant sets: they
/// translate only for the backends that offer those features (SPIR-V and MSL).
pub fn cooperative_variants() -> Vec<(Shader, Vec<(&'static str, f64)>)> {
    let mut v = vec![];
    for ta in [0.0, 1.0] {
        for tb in [0.0, 1.0] {
            v.push((MATMUL_COOP, vec![("TRANS_A", ta), ("TRANS_B", tb)]));
        }
    }
    v
}

/// The shaders that need subgroups, with their override-constant sets: they translate for the
/// backends whose devices can offer subgroups (SPIR-V, MSL, HLSL; wgpu's GL has none).
pub fn subgroup_variants() -> Vec<(Shader, Vec<(&'static str, f64)>)> {
    let mut v = vec![];
    for constants in matmul_constants() {
        v.push((MATMUL_LANES, constants.clone()));
        // The lanes dot kernel's four-row form (the default, DOT_ROWS = 1, is the line above).
        v.push((MATMUL_LANES, [constants, vec![("DOT_ROWS", 4.0)]].concat()));
    }
    v.push((ATTENTION_LANES, vec![]));
    v
}

/// The override sets of the matmul kernels that share matmul_common.wgsl: every transpose, with
/// and without aligned vec4 loads.
fn matmul_constants() -> Vec<Vec<(&'static str, f64)>> {
    let mut v = vec![];
    for ta in [0.0, 1.0] {
        for tb in [0.0, 1.0] {
            for aligned in [0.0, 1.0] {
                v.push(vec![("TRANS_A", ta), ("TRANS_B", tb), ("ALIGNED", aligned)]);
            }
        }
    }
    v
}
