"""Copy trained weights into the package as float16 safetensors (half the size).

Usage: python scripts/ship_weights.py RUN_DIR [--name mifnet]
Writes src/napari_wbc/models/weights/<name>/{config.json, model.safetensors} and prints
the sha256 for the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_wbc.models import SHIPPED, load_model, read_spec, save_model, sha256


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--name", default=None)
    args = p.parse_args()
    net, spec = load_model(weights=args.run)
    name = args.name or spec.name
    history = json.loads((Path(args.run) / "history.json").read_text())
    steps = history.get("steps") or len(history["loss"])
    spec.extra["trained"] = {
        "best": history.get("best"),
        "steps": steps,
        "data": [Path(d).name for d in history["data"]],
    }
    folder = save_model(net, spec, SHIPPED / name, half=True)
    assert read_spec(folder).name == spec.name
    print(f"{folder}: sha256 {sha256(folder / 'model.safetensors')}")


if __name__ == "__main__":
    main()
