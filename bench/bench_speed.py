"""Median time to segment one 640x480 bccd field: network alone and end to end.

End to end = read the JPEG, run the network, split instances, measure cells.
Usage: python bench/bench_speed.py [--fields 12] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    import torch

    from napari_wbc.core.dataset import list_pairs
    from napari_wbc.core.device import pick_device
    from napari_wbc.core.inference import predict_probabilities, run, segment
    from napari_wbc.core.io import read_image
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--fields", type=int, default=12)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    net, spec = load_model(args.model, device=device)
    paths = [pair.image for pair in list_pairs(DATASETS / "bccd", "test")][: args.fields]
    warm = read_image(paths[0]).data
    predict_probabilities(net, spec, warm, device)  # warm-up

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    net_times, e2e_times = [], []
    for path in paths:
        t0 = time.perf_counter()
        smear = read_image(path)
        t1 = time.perf_counter()
        predict_probabilities(net, spec, smear.data, device)
        sync()
        t2 = time.perf_counter()
        net_times.append(t2 - t1)
        t3 = time.perf_counter()
        result = run(segment(smear.data, net, spec, device))
        measure_cells(result.cells, result.nuclei)
        sync()
        e2e_times.append(time.perf_counter() - t3 + (t1 - t0))
    print(f"model {spec.name}, device {device}, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {len(paths)} bccd test fields 640x480")
    print(f"network alone: median {statistics.median(net_times) * 1000:.0f} ms "
          f"(min {min(net_times) * 1000:.0f}, max {max(net_times) * 1000:.0f})")
    print(f"end to end:    median {statistics.median(e2e_times) * 1000:.0f} ms "
          f"(min {min(e2e_times) * 1000:.0f}, max {max(e2e_times) * 1000:.0f})")


if __name__ == "__main__":
    main()
