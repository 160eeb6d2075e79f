use revive::ops::reduce::*;
fn main() {
    for g in revive::Gpu::all() {
        let gpu = g.unwrap().with_poison(true);
        for n in [1usize, 2, 3, 5] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let t = gpu.upload(&x, &[n]).unwrap();
            let s = reduce_all_value(&gpu, &t, ReduceOp::Sum).unwrap();
            println!("{} n={n} sum={s}", gpu.label());
        }
        let x: Vec<f32> = (0..13*257).map(|i| (i % 7) as f32).collect();
        let t = gpu.upload(&x, &[13, 257]).unwrap();
        let y = gpu.download(&revive::ops::softmax::softmax_rows(&gpu, &t).unwrap()).unwrap();
        println!("softmax nan count {}", y.iter().filter(|v| v.is_nan()).count());
    }
}
