"""Seconds per training step, float32 against bfloat16 autocast, in one run.

Usage: python bench/bench_train_step.py [--batch 8] [--patch 192] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    from napari_wbc.core.train import segmentation_loss
    from napari_wbc.models import create_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mifnet")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=192)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    net = create_model(args.model).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.patch, args.patch)
    y = torch.randint(0, 3, (args.batch, args.patch, args.patch))
    results = {}
    for bf16 in (False, True, False, True):  # interleaved, so load changes hit both alike
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = segmentation_loss(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        results.setdefault(bf16, []).extend(times[1:])
    f32, b16 = statistics.median(results[False]), statistics.median(results[True])
    print(f"{args.model}, batch {args.batch} x {args.patch}^2, torch threads {torch.get_num_threads()}")
    print(f"float32: {f32:.2f} s/step; bfloat16 autocast: {b16:.2f} s/step; ratio {f32 / b16:.2f}x")


if __name__ == "__main__":
    main()
