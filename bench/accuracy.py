"""Dice of the shipped (or given) model on the test splits, beside the papers' figures.

Usage: python bench/accuracy.py [--model mifnet] [--weights DIR] [--out docs/eval] [--flip-average]
Prints a Markdown table; per-dataset JSON/Markdown reports go to --out. "Annotated cells
only" scores just the result's cells that overlap a reference cell: the Zheng crops
annotate only their centre cell, so a neighbouring white cell the model finds counts as
false positive pixels in the other columns (and as an extra cell in the count). "NCR
within 20%": the share of matched cells whose nucleus-to-cytoplasm ratio is within 20% of
the reference's. "Single-cell crop mode" is what `segment --single-cell` gives (only the
cell at each image's centre): the Zheng sets are such crops; bccd fields are not ("-").
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# ../shared/papers/README.md: MIF-Net cytoplasm / nucleus; WBC-Net whole cell (Dice, %)
PAPERS = {
    "zheng_d1": {"mifnet_cytoplasm": 98.93, "mifnet_nucleus": 95.84, "wbcnet_cell": 98.92},
    "zheng_d2": {"mifnet_cytoplasm": 98.38, "mifnet_nucleus": 97.53, "wbcnet_cell": 99.28},
}


def main() -> None:
    from napari_wbc.core.evaluate import evaluate_dataset

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None)
    p.add_argument("--datasets", nargs="+", default=["zheng_d1", "zheng_d2", "bccd"])
    p.add_argument("--flip-average", action="store_true", help="average the network over four flips")
    args = p.parse_args()
    print(
        "| dataset (test split) | images | Dice cell | Dice cytoplasm | Dice nucleus | mIoU cell "
        "| ME cell | count MAE | count exact | NCR within 20% | annotated cells only: Dice cell / nucleus "
        "| single-cell crop mode: Dice cell / nucleus "
        "| paper: MIF-Net cytoplasm / nucleus | paper: WBC-Net cell |"
    )
    print("|---" * 14 + "|")
    for name in args.datasets:
        r = evaluate_dataset(
            DATASETS / name,
            "test",
            args.model,
            args.weights,
            args.device,
            args.out,
            flip_average=args.flip_average,
        )
        m = r["metrics"]
        ref = PAPERS.get(name, {})
        paper_mif = f"{ref['mifnet_cytoplasm']} / {ref['mifnet_nucleus']}" if ref else "-"
        columns = (
            ("cell", "dice"),
            ("cytoplasm", "dice"),
            ("nucleus", "dice"),
            ("cell", "miou"),
            ("cell", "me"),
        )
        cells = [f"{100 * m[region][metric]:.2f}" for region, metric in columns]
        count = r["count"]
        kept = r["annotated_metrics"]
        single = r["single_cell_metrics"]
        crop = (
            f"{100 * single['cell']['dice']:.2f} / {100 * single['nucleus']['dice']:.2f}"
            if name.startswith("zheng")
            else "-"
        )
        row = [
            name,
            str(r["images"]),
            *cells,
            f"{count['mean_abs_error']:.3f}",
            f"{100 * count['exact']:.0f}%",
            f"{100 * r['ncr_agreement']['within_20pct']:.0f}%",
            f"{100 * kept['cell']['dice']:.2f} / {100 * kept['nucleus']['dice']:.2f}",
            crop,
            paper_mif,
            str(ref.get("wbcnet_cell", "-")),
        ]
        print("| " + " | ".join(row) + " |", flush=True)
    print(
        f"\nweights: {r['weights']} (sha256 {r['weights_sha256'][:16]}...), device {r['device']}, "
        f"flip-averaged {r['flip_average']}"
    )


if __name__ == "__main__":
    main()
