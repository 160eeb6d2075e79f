use revive::edit::{hparams::RomeHparams, keys, target};
fn main() {
    let m = revive::model::load::load("smollm2").unwrap();
    let gpu = revive::gpu::Gpu::new(revive::gpu::BackendChoice::resolve(Some("vulkan")).unwrap()).unwrap();
    let gm = revive::model::forward::GpuModel::new(&gpu, &m.weights).unwrap();
    let mut hp = RomeHparams::smollm2();
    hp.layer = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(5);
    hp.templates.per_prefix = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(2);
    let t0 = std::time::Instant::now();
    let templates = keys::context_templates(&gm, &m.tok, &hp.templates).unwrap();
    println!("templates {:?} in {:.1}s", templates, t0.elapsed().as_secs_f64());
    let tb = target::target_batch(&m.tok, &templates, "The mother tongue of {} is", "Danielle Darrieux", " English").unwrap();
    let plain = keys::subject_prompt(&m.tok, "{}", "The mother tongue of {} is", "Danielle Darrieux").unwrap();
    let k = keys::subject_keys(&gm, &[plain], hp.layer).unwrap().remove(0);
    let w = gm.tensor(&revive::model::names::down_name(hp.layer)).unwrap();
    let h = gpu.download(&gm.linear(&gpu.upload(&k, &[1, k.len()]).unwrap(), w, None).unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let r = target::optimise_target(&gm, &tb, &h, &hp, |s| println!("{:?} {:.1}s", s, t0.elapsed().as_secs_f64())).unwrap();
    println!("done {} steps in {:.1}s", r.history.len(), t0.elapsed().as_secs_f64());
}
