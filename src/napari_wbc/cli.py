"""The ``napari-wbc`` command: segment, evaluate, compare, train, dataset check, demo.

Errors a user can cause print one line and exit non-zero; nothing here imports napari
except ``demo``, which opens the viewer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .core.dataset import TYPING
from .core.io import GB_PER_MEGAPIXEL, MAX_MEGAPIXELS, PIXEL_SIZE_RANGE, InputError
from .core.options import PRECISIONS
from .models import MissingWeightsError, list_models
from .models.registry import list_classifiers

log = logging.getLogger("napari_wbc")


def _bar(total: int, desc: str, unit: str = "it", **kwargs):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True, **kwargs)


def _check_segment_args(args) -> None:
    """Refuse options no run can use, before any file is read."""
    lo, hi = PIXEL_SIZE_RANGE
    if args.pixel_size is not None and not lo <= args.pixel_size <= hi:
        raise InputError(
            f"--pixel-size {args.pixel_size:g} is outside {lo:g}-{hi:g} um/px, what a light microscope "
            "gives a smear; give the width of one image pixel in micrometres"
        )
    if not args.max_megapixels > 0:
        raise InputError(f"--max-megapixels must be a positive number, not {args.max_megapixels:g}")


def cmd_segment(args) -> int:
    from .core.batch import gather_inputs, segment_files
    from .core.io import READABLE
    from .core.options import Options
    from .core.slide import SLIDE_SUFFIXES, is_slide

    _check_segment_args(args)
    # cheap checks first, before torch and the model load: each unusable input is said once
    files, skipped = gather_inputs(args.inputs, READABLE + SLIDE_SUFFIXES, out=args.out)
    for _, message in skipped:
        print(f"error: {message}", file=sys.stderr)
    slides = [p for p in files if is_slide(p)]
    fields = [p for p in files if p not in slides]
    slides, refused = _runnable_slides(slides, fields, Path(args.out), args.overwrite)
    for message in refused:
        print(f"error: {message}", file=sys.stderr)
    failures = len(skipped) + len(refused)
    if slides and args.single_cell:
        print(
            "note: --single-cell applies to single-cell crops, not to whole slides: "
            f"{len(slides)} slide(s) keep all their cells",
            file=sys.stderr,
        )
    if fields:
        # position counts fields done, with fractions for the steps within one
        bar_format = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]{postfix}"
        with _bar(0, "segment", bar_format=bar_format) as bar:

            def progress(position: float, total: int, message: str) -> None:
                bar.total, bar.n = total, position
                bar.set_postfix_str(message, refresh=False)
                bar.refresh()

            options = Options(
                device=args.device,
                precision=args.precision,
                pixel_size=args.pixel_size,
                single_cell=args.single_cell,
                max_megapixels=args.max_megapixels,
            )
            failures += segment_files(
                fields,
                args.out,
                options,
                model=args.model,
                weights=args.weights,
                flip_average=args.flip_average,
                typing=args.typing,
                classifier_weights=args.classifier_weights,
                overwrite=args.overwrite,
                on_error=lambda path, msg: bar.write(f"error: {msg}", file=sys.stderr),
                on_warning=lambda path, msg: bar.write(f"warning: {msg}", file=sys.stderr),
                progress=progress,
            )
    if args.scheduler or args.workers is not None:
        failures += _segment_slides_on_cluster(slides, args) if slides else 0
    else:
        for path in slides:
            try:
                _segment_slide(path, args)
            except MissingWeightsError:
                raise  # no slide can be done: the run stops (exit 2)
            except InputError as err:
                failures += 1
                message = str(err)
                named = message.startswith((str(path), path.name))
                print(f"error: {message if named else f'{path}: {message}'}", file=sys.stderr)
            except Exception as err:  # unforeseen: said once, the other slides still get done
                failures += 1
                log.info("%s failed", path, exc_info=err)
                print(
                    f"error: {path}: failed ({type(err).__name__}: {err}); skipped (-v shows where)",
                    file=sys.stderr,
                )
    total = len(files) + len(skipped)
    failed = f"; {failures} failed (said above)" if failures else ""
    print(f"wrote results for {total - failures} of {total} inputs to {args.out}{failed}")
    return 1 if failures else 0


def _runnable_slides(slides: list[Path], fields: list[Path], out: Path, overwrite: bool):
    """``(slides to segment, a message for each refused one)``: a slide is refused when its
    outputs would take the names of another input's, or (unless ``overwrite``) replace a
    finished result of an earlier run. An unfinished run in ``out`` is resumed."""
    from .core.slide import slide_name
    from .core.slide_output import result_paths

    taken = {p.stem.casefold(): p for p in fields}  # a field x.jpg writes x_cells.tif
    runnable, refused = [], []
    for path in slides:
        name = slide_name(path)
        other = taken.setdefault(name.casefold(), path)
        summary = result_paths(out, name)["summary"]
        if other != path:
            refused.append(
                f"{path}: its outputs ({name}_cells.tif ...) would have the names of {other.name}'s; "
                "skipped (rename one of them, or segment them into different --out folders)"
            )
        elif summary.exists() and not overwrite:
            refused.append(
                f"{path}: {summary} already exists (a finished run); skipped (give --overwrite to "
                "segment it again, or another --out)"
            )
        else:
            runnable.append(path)
    return runnable, refused


def _segment_slide(path: Path, args) -> None:
    """A whole slide, in tiles: resumes a stopped run in the same output folder."""
    from .core.celltypes import load_classifier
    from .core.device import pick_device
    from .core.options import Options
    from .core.wholeslide import segment_slide
    from .models import load_model

    options = Options(
        pixel_size=args.pixel_size, device=pick_device(args.device), precision=args.precision, tile=args.tile
    )
    net, spec = load_model(args.model, args.weights, options.device, args.flip_average)
    classifier = load_classifier(args.typing, options.device, args.classifier_weights)
    gen = segment_slide(path, args.out, net, spec, options, classifier=classifier)
    with _bar(0, f"slide {path.name}", "tile") as bar:
        while True:
            try:
                done, total, _ = next(gen)
            except StopIteration:
                return
            bar.total, bar.n = total, done
            bar.refresh()


def _segment_slides_on_cluster(slides: list[Path], args) -> int:
    """Slides on a dask cluster (``--scheduler`` or ``--workers``); returns how many failed."""
    from .core.distributed import connect, segment_slides
    from .core.options import Options

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers needs at least 1")
    quiet = not getattr(args, "verbose", False)
    with connect(args.scheduler, args.workers, quiet) as client, _bar(0, "slides (dask)", "task") as bar:
        gen = segment_slides(
            slides,
            args.out,
            client,
            Options(device=args.device, precision=args.precision, tile=args.tile, pixel_size=args.pixel_size),
            model=args.model,
            weights=args.weights,
            flip_average=args.flip_average,
            typing=args.typing,
        )
        while True:
            try:
                done, total, message = next(gen)
            except StopIteration as stop:
                outcomes = stop.value
                break
            bar.total, bar.n = total, done
            bar.refresh()
            if message.startswith("error: "):
                bar.write(message, file=sys.stderr)
    return sum(o.error is not None for o in outcomes)


def cmd_evaluate(args) -> int:
    from .core.evaluate import evaluate_dataset, format_markdown

    with _bar(0, f"evaluate {Path(args.dataset).name}", "image") as bar:

        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        result = evaluate_dataset(
            args.dataset,
            split=args.split,
            model=args.model,
            weights=args.weights,
            device=args.device,
            out=args.out,
            progress=progress,
            flip_average=args.flip_average,
            typing=args.typing,
            classifier_weights=args.classifier_weights,
        )
    print(format_markdown(result))
    return 0


def cmd_compare(args) -> int:
    from .core.compare import compare_folders

    with _bar(0, "compare", "image") as bar:

        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()

        failures = compare_folders(
            args.pred,
            args.ref,
            args.out,
            images=args.images,
            min_iou=args.min_iou,
            progress=progress,
            on_error=lambda stem, msg: bar.write(f"error: {msg}", file=sys.stderr),
        )
    print(f"wrote the review to {args.out}" + (f"; {failures} images failed" if failures else ""))
    return 1 if failures else 0


def cmd_train(args) -> int:
    from .core.augment import parse_overrides
    from .core.device import pick_device
    from .core.train import TrainConfig, train

    try:
        augment = parse_overrides(args.augment or [])
    except ValueError as err:
        raise InputError(str(err)) from None
    device = pick_device(args.device)
    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        val_every=args.val_every,
        patience=args.patience,
        bf16=args.bf16,
        seed=args.seed,
        balance=not args.no_balance,
        augment=augment,
        workers=args.workers,
    )
    with _bar(0, f"train {args.model} on {device}", "step") as bar:

        def progress(step, total, info):
            bar.total = total
            bar.n = step
            bar.set_postfix({k: round(v, 4) for k, v in info.items() if isinstance(v, float)}, refresh=False)
            bar.refresh()

        deadline = None if args.time_limit is None else time.monotonic() + 60 * args.time_limit
        history = train(
            args.data,
            args.out,
            config,
            device=device,
            resume=args.resume,
            init_weights=args.init,
            progress=progress,
            cancelled=None if deadline is None else lambda: time.monotonic() > deadline,
        )
    best = history.get("best") or {}
    print(
        f"trained {history['steps']} steps; best validation: "
        + ", ".join(f"{k} {v:.4f}" for k, v in best.items() if isinstance(v, float))
    )
    print(f"weights: {Path(args.out).resolve()}")
    return 0


def cmd_dataset(args) -> int:
    """``dataset check DIR [--repair]``: one line per problem of a training folder; non-zero
    while any remains."""
    from .core.dataset import check_training_folder, repair_training_folder

    try:
        if args.repair:
            for line in repair_training_folder(args.dir):
                print(line)
        problems = check_training_folder(args.dir)
    except (FileNotFoundError, TimeoutError) as err:
        raise InputError(str(err)) from None
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.dir}: no problems")
    return 1 if problems else 0


def cmd_report(args) -> int:
    """``report OUT_DIR [--reviewer NAME] [--images DIR...]``: ``<stem>_report.csv`` and
    ``<stem>_report.html`` for every field and slide in a segment output folder."""
    from .core.report import output_stems, report_output

    folder = Path(args.out_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder; give the --out folder of `napari-wbc segment`")
    stems = output_stems(folder)
    if not stems:
        raise InputError(
            f"{folder}: no segment outputs here (<name>_cells.csv, <name>_cells.tif, <name>_nuclei.tif)"
        )
    failures = 0
    for stem in stems:
        try:
            done = report_output(folder, stem, args.reviewer, args.images)
        except InputError as err:
            failures += 1
            print(f"error: {stem}: {err}", file=sys.stderr)
            continue
        for note in done["notes"]:
            print(f"warning: {stem}: {note}", file=sys.stderr)
        if done["refused"]:
            failures += 1
            print(f"error: {stem}: sign-off refused: {'; '.join(done['refused'])}", file=sys.stderr)
        record = done["record"]
        state = (
            f"signed off by {record['reviewer']} at {record['time']}"
            if record
            else "NOT SIGNED OFF: " + "; ".join(done["problems"])
        )
        print(f"{done['paths']['html']} ({state})")
    return 1 if failures else 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(headless=args.headless, out=args.out, say=print)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-wbc", description="White blood cell segmentation for napari.")
    p.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default=None, help="model name (default: the shipped default model)")
        sp.add_argument("--weights", default=None, help="a weights folder written by `napari-wbc train`")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        sp.add_argument(
            "--flip-average",
            action="store_true",
            help="average the network over the four flips of each image (4x the time, "
            "slightly more accurate)",
        )
        sp.add_argument(
            "--typing",
            choices=TYPING,
            default="classifier",
            help="how cells get their type: the cell-type classifier (default; it also "
            "leaves objects that are no white cell out of the count), the segmentation "
            "model's own types (wcsegnet), or none",
        )
        sp.add_argument(
            "--classifier-weights",
            default=None,
            metavar="DIR",
            help="a cell-type classifier folder written by `napari-wbc train --model celltype` "
            "(default: the shipped one)",
        )

    s = sub.add_parser(
        "segment", help="segment smear images and whole slides; write cells, nuclei and measurements"
    )
    s.add_argument("inputs", nargs="+", help="image or slide files, or folders")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        help=f"um per pixel ({PIXEL_SIZE_RANGE[0]:g}-{PIXEL_SIZE_RANGE[1]:g}), when the files do not say "
        "or say it wrong",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs an earlier run left in --out (default: an input whose outputs exist "
        "is skipped, with a message)",
    )
    s.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_MEGAPIXELS,
        metavar="MP",
        help="the most pixels (millions) the network sees at once, at its working scale; bigger "
        f"fields are skipped with a message (default {MAX_MEGAPIXELS:g}; the network needs about "
        f"{GB_PER_MEGAPIXEL:g} GB of memory per megapixel on CPU)",
    )
    s.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side (px) for whole slides (SVS, pyramidal or huge TIFF); any size gives the "
        "same cells (default: 1024 px at the network's scale)",
    )
    s.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the network's arithmetic: bf16 (bfloat16) is about twice as fast on GPUs and on CPUs "
        "with AVX512-BF16, with class maps a few pixels in 10,000 apart from fp32; auto (default): "
        "bf16 on a CUDA GPU, fp32 elsewhere",
    )
    s.add_argument(
        "--single-cell",
        action="store_true",
        help="the images are single-cell crops (CellaVision-style gallery images): keep only "
        "the cell at each image's centre, not the neighbours cut by its edge",
    )
    cluster = s.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="spread the tiles of whole slides over the dask.distributed cluster at this "
        "address (tcp://host:8786, or a scheduler JSON file); --out must be a folder "
        "every worker sees (docs/cluster.md)",
    )
    cluster.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="spread the tiles of whole slides over N local worker processes",
    )
    model_args(s)
    s.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="the six metrics of the papers on a dataset split")
    e.add_argument("--dataset", required=True, help="a dataset folder (images/, labels/, split.csv)")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--out", default=None, help="folder for the JSON and Markdown reports")
    model_args(e)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="review predictions against references: TP/FP/FN images, metrics")
    c.add_argument("--pred", required=True, help="predictions: a `segment` output folder or 0/1/2 masks")
    c.add_argument("--ref", required=True, help="references: a dataset folder, 0/1/2 masks or instance TIFFs")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--images", default=None, help="images for overlays (default: the dataset's images/)")
    c.add_argument("--min-iou", type=float, default=0.5, help="IoU for a cell to count as matched")
    c.set_defaults(func=cmd_compare)

    t = sub.add_parser("train", help="train a model on dataset folders (CPU or GPU)")
    t.add_argument(
        "--model",
        default="mifnet",
        choices=list_models() + list_classifiers(),
        help="the architecture to train (celltype: the cell-type classifier)",
    )
    t.add_argument("--data", nargs="+", required=True, help="dataset folders")
    t.add_argument("--out", required=True, help="folder for weights, checkpoint and history")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    t.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="MINUTES",
        help="stop after this many minutes (preparing the data included), keeping the best "
        "weights so far as at the last step (the classifier still chooses its unidentified threshold)",
    )
    paper = " (default: the model's paper)"
    t.add_argument("--batch-size", type=int, default=None, help="images per step" + paper)
    t.add_argument(
        "--patch",
        type=int,
        default=None,
        help="training patch side, px (celltype: the crop side it sees, 64)" + paper,
    )
    t.add_argument("--lr", type=float, default=None, help="peak learning rate" + paper)
    t.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay" + paper)
    t.add_argument("--optimizer", choices=["adam", "sgd"], default=None, help="optimizer" + paper)
    t.add_argument("--val-every", type=int, default=200)
    t.add_argument("--patience", type=int, default=20, help="validations without improvement before stopping")
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AVX512-BF16 CPUs, GPUs)")
    t.add_argument(
        "--augment",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="augmentation settings on top of the paper's, e.g. rotation=40 stain_p=0.5 "
        "scale=0.8,1.2 (see core/augment.py AugmentConfig)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that draw and augment batches while the network trains, for every model "
        "(0: the training process draws them between steps; batches depend on --seed only)",
    )
    t.add_argument(
        "--no-balance",
        action="store_true",
        help="draw every training image equally often (default: every data folder equally often)",
    )
    t.add_argument("--init", default=None, help="weights folder to fine-tune from")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--device", default="auto")
    t.set_defaults(func=cmd_train)

    ds = sub.add_parser("dataset", help="check a training folder (and repair what interrupted saves left)")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    dc = ds_sub.add_parser("check", help="list its problems, one per line; exit 1 while any remains")
    dc.add_argument("dir", help="a training folder (images/, labels/, split.csv, manifest.jsonl)")
    dc.add_argument(
        "--repair",
        action="store_true",
        help="first remove what interrupted saves left: temporary files, files of no complete "
        "pair, split rows of no pair (complete pairs are never touched)",
    )
    dc.set_defaults(func=cmd_dataset)

    r = sub.add_parser(
        "report", help="the differential report (CSV and HTML with the cells' thumbnails) of segment outputs"
    )
    r.add_argument("out_dir", metavar="OUT_DIR", help="a `napari-wbc segment` output folder")
    r.add_argument(
        "--reviewer",
        default=None,
        metavar="NAME",
        help="sign the reviews off as NAME (refused, with the reasons, while a cell is not reviewed, "
        "unidentified or without a type)",
    )
    r.add_argument(
        "--images",
        nargs="+",
        default=None,
        metavar="DIR",
        help="folders to find the images in when they are no longer where they were segmented "
        "(slides: always; their outputs do not record the file's path)",
    )
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="open napari on the sample smear and segment it")
    d.add_argument("--headless", action="store_true", help="no window: segment the samples to --out")
    d.add_argument("--out", default="demo-output", help="output folder for --headless")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (InputError, MissingWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
