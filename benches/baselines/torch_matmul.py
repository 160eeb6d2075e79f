"""cuBLAS SGEMM through PyTorch (TF32 off), the baseline for `revive bench matmul` on an NVIDIA
GPU. Run in the same session as the revive bench so the ratio compares one card at one time:

    python3 benches/baselines/torch_matmul.py --size 4096 [--json out.json]
"""
import argparse
import json
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, action="append", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    sizes = args.size or [1024, 2048, 4096]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    rows = []
    for n in sizes:
        a = torch.rand(n, n, device="cuda") * 2 - 1
        b = torch.rand(n, n, device="cuda") * 2 - 1
        for _ in range(3):
            torch.mm(a, b)
        torch.cuda.synchronize()
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            torch.mm(a, b)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        t = sorted(times)[len(times) // 2]
        rows.append({"size": n, "gflops": 2 * n**3 / t / 1e9, "device": torch.cuda.get_device_name()})
        print(f"torch sgemm (tf32 off) n={n}: {rows[-1]['gflops']:.0f} GFLOP/s on {rows[-1]['device']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
