"""PyTorch baselines for `revive bench svd` on an NVIDIA GPU, on the same matrices and at the
same accuracy, in the same session:

    revive bench svd --save DIR --json revive-svd.json
    python3 benches/baselines/torch_svd.py --dir DIR --revive revive-svd.json --json torch-svd.json

For each (matrix, k) of revive's JSON: torch.linalg.svd (full, f32) and torch.svd_lowrank with
q = revive's block width and the fewest power iterations (niter) whose accuracy matches revive's
(largest relative error of the top-k singular values and the sine of the largest principal angle
of the top-k left subspace, both against an f64 SVD). TF32 is off; times are medians after a
warm-up, with torch.cuda.synchronize() around the timed region.
"""
import argparse
import json
import time

import torch
from safetensors.torch import load_file


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def accuracy(u, s, ref_u, ref_s, k):
    rel = ((s[:k].double() - ref_s[:k]).abs() / ref_s[:k]).max().item()
    a, b = ref_u[:, :k], u[:, :k].double()
    sine = torch.linalg.matrix_norm(b - a @ (a.T @ b), ord=2).item()
    return rel, sine


def fewest_iterations(w, q, k, ref_u, ref_s, want_rel, want_sine, reps):
    """torch.svd_lowrank with the fewest power iterations that reach the wanted accuracy."""
    low = None
    for niter in [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]:
        torch.manual_seed(0)
        t, (u, s, _) = timed(lambda: torch.svd_lowrank(w, q=q, niter=niter), reps)
        rel, sine = accuracy(u, s, ref_u, ref_s, k)
        low = {"niter": niter, "q": q, "seconds": t, "sigma_rel_err": rel, "subspace_sine": sine, "matched": False}
        if rel <= want_rel and sine <= want_sine:
            low["matched"] = True
            break
    return low


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--revive", required=True, help="revive bench svd --json output")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = json.load(open(args.revive))["rows"]
    out = []
    cache = {}
    lowrank = {}  # per (m, n, k, accuracy): revive's JSON has a row per --ritz entry
    for r in rows:
        m, n, k = r["m"], r["n"], r["k"]
        if (m, n) not in cache:
            w = load_file(f"{args.dir}/svd-{m}x{n}.safetensors")["w"].cuda()
            ref_u, ref_s, _ = torch.linalg.svd(w.double(), full_matrices=False)
            t_full, (fu, fs, _) = timed(lambda: torch.linalg.svd(w, full_matrices=False), args.reps)
            cache[(m, n)] = (w, ref_u, ref_s, t_full, accuracy(fu, fs, ref_u, ref_s, min(m, n)))
        w, ref_u, ref_s, t_full, _ = cache[(m, n)]
        full_acc = accuracy(*torch.linalg.svd(w, full_matrices=False)[:2], ref_u, ref_s, k)
        want_rel = max(r.get("sigma_rel_err") or 0.0, 1e-7)
        want_sine = max(r.get("subspace_sine") or 0.0, 1e-6)
        q = min(r["block"], m, n)
        key = (m, n, k, q, want_rel, want_sine)
        if key not in lowrank:
            lowrank[key] = fewest_iterations(w, q, k, ref_u, ref_s, want_rel, want_sine, args.reps)
        low = lowrank[key]
        row = {
            "m": m, "n": n, "k": k, "ritz": r.get("ritz", "host"),
            "revive_gpu_seconds": r["gpu_seconds"],
            "revive_sigma_rel_err": r.get("sigma_rel_err"), "revive_subspace_sine": r.get("subspace_sine"),
            "torch_svd_seconds": t_full, "torch_svd_sigma_rel_err": full_acc[0], "torch_svd_subspace_sine": full_acc[1],
            "svd_lowrank": low,
            "revive_vs_torch_svd": t_full / r["gpu_seconds"],
            "revive_vs_svd_lowrank": low["seconds"] / r["gpu_seconds"],
            "device": torch.cuda.get_device_name(),
        }
        out.append(row)
        print(f"{m}x{n} k={k} (small SVD: {row['ritz']}): revive {r['gpu_seconds']:.4f} s | torch.linalg.svd {t_full:.4f} s "
              f"({row['revive_vs_torch_svd']:.2f}x) | svd_lowrank q={q} niter={low['niter']} {low['seconds']:.4f} s "
              f"({row['revive_vs_svd_lowrank']:.2f}x, matched={low['matched']}, σ err {low['sigma_rel_err']:.1e}, sin {low['subspace_sine']:.1e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
