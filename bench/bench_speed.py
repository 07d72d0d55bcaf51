"""Median time to segment one 640x480 bccd field: network alone and end to end.

End to end = read the JPEG, run the network, split instances, measure cells; then end to
end again with the network flip-averaged (four passes), interleaved field by field so the
ratio of the two is measured under the same load.
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
    from napari_wbc.core.options import Options
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
    tta, _ = load_model(args.model, device=device, flip_average=True)
    options = Options(device=device)
    paths = [pair.image for pair in list_pairs(DATASETS / "bccd", "test")][: args.fields]
    warm = read_image(paths[0]).data
    predict_probabilities(net, spec, warm, device)  # warm-up

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def end_to_end(network, smear, t_read):
        t0 = time.perf_counter()
        result = run(segment(smear.data, network, spec, options))
        measure_cells(result.cells, result.nuclei)
        sync()
        return time.perf_counter() - t0 + t_read

    net_times, e2e_times, tta_times = [], [], []
    for path in paths:
        t0 = time.perf_counter()
        smear = read_image(path)
        t1 = time.perf_counter()
        predict_probabilities(net, spec, smear.data, device)
        sync()
        t2 = time.perf_counter()
        net_times.append(t2 - t1)
        e2e_times.append(end_to_end(net, smear, t1 - t0))
        tta_times.append(end_to_end(tta, smear, t1 - t0))
    print(
        f"model {spec.name}, device {device}, torch threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, {len(paths)} bccd test fields 640x480"
    )
    print(
        f"network alone: median {statistics.median(net_times) * 1000:.0f} ms "
        f"(min {min(net_times) * 1000:.0f}, max {max(net_times) * 1000:.0f})"
    )
    print(
        f"end to end:    median {statistics.median(e2e_times) * 1000:.0f} ms "
        f"(min {min(e2e_times) * 1000:.0f}, max {max(e2e_times) * 1000:.0f})"
    )
    print(
        f"end to end, flip-averaged: median {statistics.median(tta_times) * 1000:.0f} ms "
        f"(min {min(tta_times) * 1000:.0f}, max {max(tta_times) * 1000:.0f}); "
        f"median ratio {statistics.median(t / e for t, e in zip(tta_times, e2e_times, strict=True)):.2f}x"
    )


if __name__ == "__main__":
    main()
