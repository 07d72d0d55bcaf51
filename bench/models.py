"""The five networks side by side: size, cost, CPU speed, and test-split accuracy.

For every registered model: trainable parameters next to the paper's, multiply-accumulates
and FLOPs of one forward pass at 512x512 (torch's FlopCounterMode; papers that say
"GFLOPs" usually count multiply-accumulates), the median CPU time for one 640x480 bccd
field end to end (network, instances, measurements), and the test-split figures from the
evaluation reports in --eval (written by `napari-wbc evaluate --out` or bench/accuracy.py).
Models without trained weights are timed with untrained ones and say so.

Weights: runs/<name> (what bench/train_models.sh trains) if there, else the installed ones.

Usage: python bench/models.py [--eval docs/eval] [--runs runs] [--fields 6] [--threads 2] [--models ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# ../shared/papers/README.md, Dice (%) of the region each paper scores; AP on the paper's own data
PAPERS = {
    "mifnet": "cytoplasm 98.93 / 98.38, nucleus 95.84 / 97.53",
    "wbcnet": "cell 98.92 / 99.28",
    "leukocytemask": "cell 98.20 / 98.24",
    "wcsegnet": "nucleus 96.53 / 96.62",
    "yolact_cis": "AP 87.41, AP50 97.82 (ALL-IDB1 + BCCD)",
}


def cost_at_512(net, kind: str) -> float:
    """FLOPs of one forward pass on a 1x3x512x512 input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, 512, 512)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.detect(x) if kind == "instance" else net(x)
    return counter.get_total_flops()


def cpu_time(net, spec, fields: int) -> float:
    from napari_wbc.core.dataset import list_pairs
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.io import read_image
    from napari_wbc.core.measure import measure_cells

    paths = [p.image for p in list_pairs(DATASETS / "bccd", "test")][:fields]
    run(segment(read_image(paths[0]).data, net, spec))  # warm-up
    times = []
    for path in paths:
        t0 = time.perf_counter()
        result = run(segment(read_image(path).data, net, spec))
        measure_cells(result.cells, result.nuclei, types=result.types)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def accuracy(eval_dir: Path, name: str) -> dict:
    out = {}
    for dataset in ("zheng_d1", "zheng_d2", "bccd"):
        path = eval_dir / f"{dataset}_test_{name}.json"
        if path.exists():
            out[dataset] = json.loads(path.read_text())
    return out


def main() -> None:
    import torch

    from napari_wbc.models import ModelSpec, available_weights, create_model, list_models, load_model
    from napari_wbc.models.registry import model_module

    p = argparse.ArgumentParser()
    p.add_argument("--eval", default="docs/eval")
    p.add_argument("--runs", default="runs", help="folder of trained runs, one subfolder per model")
    p.add_argument("--fields", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--models", nargs="+", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = available_weights()
    print(f"# {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        "| model | params (ours) | params (paper) | GMAC / GFLOP at 512² | CPU s per 640x480 field "
        "| Dice cell / cyto / nucleus: zheng_d1 | zheng_d2 | bccd | AP / AP50 / AP75 bccd "
        "| type accuracy | paper (zheng_d1 / zheng_d2) |"
    )
    print("|---" * 11 + "|")
    for name in args.models or list_models():
        module = model_module(name)
        kind = getattr(module, "KIND", "semantic")
        run_dir = Path(args.runs) / name
        if (run_dir / "model.safetensors").exists():
            net, spec = load_model(weights=run_dir)
            trained = ""
        elif name in weights:
            net, spec = load_model(name)
            trained = ""
        else:
            classes = tuple(getattr(module, "CLASSES", ModelSpec.classes))
            cfg = {"num_classes": len(classes)} if hasattr(module, "CLASSES") else {}
            spec = ModelSpec(name, cfg, classes=classes)
            net = create_model(name, **cfg).eval()
            trained = " (untrained)"
        params = sum(t.numel() for t in net.parameters() if t.requires_grad)
        paper = getattr(module, "PAPER_PARAMETERS", None)
        flops = cost_at_512(net, kind)
        seconds = cpu_time(net, spec, args.fields)
        acc = accuracy(Path(args.eval), name)

        def dice(d, acc=acc):
            m = acc.get(d, {}).get("metrics")
            if not m:
                return "-"
            return " / ".join(f"{100 * m[r]['dice']:.1f}" for r in ("cell", "cytoplasm", "nucleus"))

        ap = acc.get("bccd", {}).get("instances")
        types = [f"{d} {100 * acc[d]['types']['accuracy']:.0f}%" for d in acc if "types" in acc[d]]
        cells = [
            f"{name}{trained}",
            f"{params / 1e6:.2f} M",
            f"{paper / 1e6:.2f} M" if paper else "-",
            f"{flops / 2e9:.1f} / {flops / 1e9:.1f}",
            f"{seconds:.2f}",
            dice("zheng_d1"),
            dice("zheng_d2"),
            dice("bccd"),
            f"{ap['AP']:.1f} / {ap['AP50']:.1f} / {ap['AP75']:.1f}" if ap else "-",
            ", ".join(types) or "-",
            PAPERS.get(name, "-"),
        ]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
