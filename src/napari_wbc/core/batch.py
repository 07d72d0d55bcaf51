"""Segment many image files: the engine behind ``napari-wbc segment``.

Per input: ``<output>_cells.tif`` (uint32 cell instances), ``<output>_nuclei.tif`` (uint32,
nucleus = owning cell id) and ``<output>_cells.csv`` (measurements), where ``<output>`` is
the file's stem, or for a second file with that stem its full name (:func:`output_stems`);
and ``summary.csv``, a row per segmented input (``file``, ``output``, counts, ``warning``...),
which a later run into the same folder extends. Nothing is overwritten unless asked. Every
file is written to a temporary name and renamed, so a killed run never leaves a half-written
file.

Every input is checked before the model loads (:func:`gather_inputs`, :func:`plan_fields`:
a regular file, a readable header, a size the network can take, no output it would
overwrite), so a bad file is reported at once. Each bad input is reported once, by name,
and skipped, also when it fails in an unexpected way while being segmented; the others
still get done.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .io import MAX_MEGAPIXELS, READABLE, InputError, check_regular, read_header, read_image
from .options import Options

log = logging.getLogger(__name__)

OUTPUTS = ("_cells.tif", "_nuclei.tif", "_cells.csv")
SUMMARY = "summary.csv"
# the longest name written for an input is ".<output>_nuclei.tif.<12 hex>.tmp" (write_atomic's
# temporary file); file systems allow 255 bytes
MAX_OUTPUT_BYTES = 255 - len(".") - max(map(len, OUTPUTS)) - len(".123456789abc.tmp")


@dataclass
class Field:
    """An input that passed the checks, and the stem of its output files."""

    path: Path
    output: str


def _named(path: Path, message: str) -> str:
    """``message`` starting with the file's name (messages from deeper down may lack it)."""
    return message if message.startswith((str(path), path.name)) else f"{path}: {message}"


def gather_inputs(inputs, suffixes=READABLE, out=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to segment and ``(path, message)`` for every input that is skipped.

    Files as given, and the files with ``suffixes`` in any folder given (sorted), each once,
    but not the ``*_cells.tif`` / ``*_nuclei.tif`` an earlier run wrote when that folder is the
    output folder ``out`` too.
    Only non-empty regular files are kept: a folder named like an image (a shell's ``*.png``
    matches one too), a named pipe or a device is skipped with a message, never opened.
    """
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[tuple[int, int]] = set()  # (device, inode): a file given twice is done once
    said: set[str] = set()  # ... and a skipped one said once

    def skip(path: Path, message: str) -> None:
        if os.path.abspath(path) not in said:
            said.add(os.path.abspath(path))
            skipped.append((path, message))

    def take(path: Path) -> None:
        try:
            st = check_regular(path)
        except InputError as err:
            skip(path, str(err))
            return
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append(path)

    for item in map(Path, inputs):
        try:
            is_folder = stat.S_ISDIR(os.stat(item).st_mode)
        except OSError:
            is_folder = False  # take() says what is wrong with it
        if not is_folder:
            take(item)
        elif item.suffix.lower() in suffixes:
            message = "a folder named like an image file; skipped (give the images in it by name)"
            skip(item, f"{item}: {message}")
        else:
            try:
                entries = sorted(item.iterdir())
            except OSError as err:
                skip(item, f"{item}: cannot list this folder ({err.strerror or err})")
                continue
            outputs_here = out is not None and os.path.isdir(out) and os.path.samefile(item, out)
            for path in entries:
                ours = outputs_here and path.name.endswith(("_cells.tif", "_nuclei.tif"))
                if path.suffix.lower() in suffixes and not ours:
                    take(path)
    return files, skipped


def _fit(name: str) -> str:
    """``name``, or when the output files would get names too long for the file system, its
    start and a short hash of the whole (the same name gives the same output)."""
    if len(name.encode()) <= MAX_OUTPUT_BYTES:
        return name
    tag = "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    while len((name + tag).encode()) > MAX_OUTPUT_BYTES:
        name = name[:-1]
    return name + tag


def _candidates(path: Path):
    """Output stems for ``path``, the best first: ``x``, ``x.png``, ``x.png-2``, ``x.png-3``..."""
    yield _fit(path.stem)
    yield _fit(path.name)
    for n in itertools.count(2):
        yield _fit(f"{path.name}-{n}")


def output_stems(paths: list[Path], earlier: pd.DataFrame | None = None) -> list[str]:
    """The stem of each input's output files: the file's stem (``x.jpg`` -> ``x``) unless an
    input before it took that; then its full name (``x.png``), then that and ``-2``, ``-3``...
    Inputs are taken in order, after those an ``earlier`` summary of the output folder lists:
    they keep the stem they got then, so a file's outputs keep their names from run to run.
    Names are compared ignoring case, as some file systems do; too long ones are shortened
    (:func:`_fit`)."""
    kept: dict[str, str] = {}  # absolute path -> its stem in the earlier summary
    if earlier is not None:
        kept = {
            os.path.abspath(str(f)): str(o) for f, o in zip(earlier["file"], earlier["output"], strict=True)
        }
    taken = {stem.casefold() for stem in kept.values()}
    stems = []
    for path in paths:
        stem = kept.get(os.path.abspath(path))
        if stem is None:
            stem = next(c for c in _candidates(path) if c.casefold() not in taken)
            taken.add(stem.casefold())
        stems.append(stem)
    return stems


def _read_summary(path: Path) -> pd.DataFrame | None:
    """An earlier run's summary in ``path`` (None: there is none), with its ``output`` column;
    an InputError when the file is no summary of this program."""
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path, dtype={"file": str, "output": str})  # "001" stays "001"
    except Exception as err:
        raise InputError(f"{path} exists and cannot be read as a table ({err})") from None
    if "output" not in table:
        if "file" not in table or "white_cells" not in table:
            raise InputError(f"{path} exists and is no napari-wbc summary")
        table["output"] = [Path(str(f)).stem for f in table["file"]]  # written by an older version
    return table


def plan_fields(
    paths: list[Path], out: Path, max_megapixels: float | None = MAX_MEGAPIXELS, overwrite: bool = False
) -> tuple[list[Field], list[tuple[Path, str]]]:
    """The fields to segment, and ``(path, message)`` for every one that cannot be.

    Only headers are read: a field must be readable, no bigger than ``max_megapixels``, and,
    unless ``overwrite``, have none of its output files in ``out`` yet. An earlier summary in
    ``out`` that is no summary of this program is a problem of the whole run (InputError)
    unless ``overwrite``.
    """
    try:
        earlier = _read_summary(out / SUMMARY)
    except InputError as err:
        if not overwrite:
            raise InputError(f"{err}; give another --out, or --overwrite to replace it") from None
        earlier = None
    fields, problems = [], []
    for path, stem in zip(paths, output_stems(paths, earlier), strict=True):
        try:
            read_header(path, max_megapixels)
            existing = [
                out / f"{stem}{suffix}" for suffix in OUTPUTS if os.path.lexists(out / f"{stem}{suffix}")
            ]
            if existing and not overwrite:
                raise InputError(
                    f"{path}: {existing[0]} already exists; skipped (give --overwrite to replace it, "
                    "or another --out)"
                )
        except InputError as err:
            problems.append((path, _named(path, str(err))))
        else:
            fields.append(Field(path, stem))
    return fields, problems


TMP = ".tmp"  # temporary files are hidden and random: ``.<final name>.<12 hex>.tmp``


def exclusive_temp(path: Path) -> Path:
    """A new empty file beside ``path`` with a random hidden name, created exclusively and
    without following links (O_EXCL, O_NOFOLLOW): a file or symlink planted at the name makes
    this pick another name, never write through it. Concurrent writers never share one."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TMP}")
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into an :func:`exclusive_temp` file, then rename it to ``path``: readers
    see the old file or the new one, never half of it."""
    tmp = exclusive_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def labels_tiff_writer(labels: np.ndarray, pixel_size: float | None = None) -> Callable[[Path], None]:
    """A writer of ``labels`` as a zlib uint32 TIFF with its pixel size, for :func:`write_atomic`."""
    import tifffile

    kwargs = {}
    if pixel_size:
        kwargs = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"}
    return lambda p: tifffile.imwrite(p, labels.astype(np.uint32), compression="zlib", **kwargs)


def write_labels_tiff(path: Path, labels: np.ndarray, pixel_size: float | None = None) -> None:
    write_atomic(path, labels_tiff_writer(labels, pixel_size))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    write_atomic(path, lambda p: table.to_csv(p, index=False))


def _write_summary(out: Path, rows: list[dict]) -> None:
    """``summary.csv``: this run's rows, and an earlier run's rows for the other outputs in
    ``out`` (those of outputs written again are replaced)."""
    table = pd.DataFrame(rows)
    try:
        old = _read_summary(out / SUMMARY)
    except InputError:  # not ours: the run was told to overwrite it
        old = None
    if old is not None:
        table = pd.concat([old[~old["output"].isin(table["output"])], table], ignore_index=True)
    write_csv(out / SUMMARY, table)


def segment_files(
    inputs,
    out,
    options: Options | None = None,
    *,
    model=None,
    weights=None,
    flip_average=False,
    typing="classifier",
    classifier_weights=None,
    overwrite: bool = False,
    on_done=None,
    on_error=None,
    on_warning=None,
    progress=None,
) -> int:
    """Segment every input (files or folders) into ``out``; return the number that failed.

    Every input is checked first (:func:`gather_inputs`, :func:`plan_fields`), then the
    model loads and the fields are segmented one by one. ``on_error(path, message)`` hears
    once of every input that failed, ``on_warning(path, message)`` of results to doubt (a
    grayscale field), ``on_done(name)`` of every input done; ``progress(position, total,
    message)`` follows the run, ``position`` counting fields done (fractions within one).
    ``options`` (:class:`.options.Options`) as for :func:`.inference.segment`; its device
    may be "auto" (a GPU if there is one), its ``pixel_size`` overrides the files' own, and
    its ``max_megapixels`` (default ``MAX_MEGAPIXELS``) also refuses bigger files before
    they are read (:func:`.io.check_size`). None: those defaults. ``overwrite``: replace
    earlier outputs, else such inputs fail. ``flip_average``: see
    :func:`napari_wbc.models.load_model`; ``typing``: see :func:`.celltypes.load_classifier`.
    """
    options = Options(device="auto", max_megapixels=MAX_MEGAPIXELS) if options is None else options
    max_megapixels = options.max_megapixels
    out = Path(out)
    failures = 0

    def fail(path: Path, message: str) -> None:
        nonlocal failures
        failures += 1
        log.debug("%s", message)
        if on_error:
            on_error(path, message)

    def report(position: float, total: int, message: str) -> None:
        if progress:
            progress(position, total, message)

    report(0, 0, "checking the inputs")
    files, skipped = gather_inputs(inputs, out=out)
    fields, problems = plan_fields(files, out, max_megapixels, overwrite)
    for path, message in skipped + problems:
        fail(path, message)
    if not fields:
        return failures
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {out} ({err.strerror or err})") from None

    from ..models import MissingWeightsError, load_model, weights_sha256
    from .celltypes import CLASSIFIER, load_classifier, typing_name
    from .device import pick_device
    from .inference import run, segment
    from .measure import count_summary, measure_cells

    report(0, len(fields), "loading the model")
    options = replace(options, device=pick_device(options.device))
    net, spec = load_model(model, weights, options.device, flip_average)
    classifier = load_classifier(typing, options.device, classifier_weights)
    # which weights made the results (a report names them)
    made_by = {
        "weights_sha256": weights_sha256(spec.name, weights),
        "classifier_sha256": weights_sha256(CLASSIFIER, classifier_weights) if classifier else None,
    }

    def segment_one(i: int, field: Field) -> dict:
        def step(done, total, message):
            report(i + done / max(total, 1), len(fields), f"{field.path.name}: {message}")

        smear = read_image(field.path, max_megapixels)
        px = options.pixel_size or smear.pixel_size
        result = run(
            segment(smear.data, net, spec, replace(options, pixel_size=px), classifier=classifier), step
        )
        types = None if typing == "none" else result.types
        table = measure_cells(result.cells, result.nuclei, px, types=types, type_probs=result.type_probs)
        write_labels_tiff(out / f"{field.output}_cells.tif", result.cells, px)
        write_labels_tiff(out / f"{field.output}_nuclei.tif", result.nuclei, px)
        write_csv(out / f"{field.output}_cells.csv", table)
        for warning in smear.warnings:
            if on_warning:
                on_warning(field.path, f"{field.path}: {warning}")
        return {
            "file": os.path.abspath(field.path),
            "output": field.output,
            **count_summary(table),
            "pixel_size_um": px,
            "model": spec.name,
            "typing": typing_name(typing, classifier, spec),
            **made_by,
            "warning": "; ".join(smear.warnings),
            "notes": "; ".join(smear.notes),
        }

    rows = []
    try:
        for i, field in enumerate(fields):
            try:
                rows.append(segment_one(i, field))
            except InputError as err:
                fail(field.path, _named(field.path, str(err)))
            except MemoryError:
                fail(
                    field.path,
                    f"{field.path}: ran out of memory; skipped (crop it, or use a machine with more memory)",
                )
            except MissingWeightsError:  # broken weights fail every file: stop the run, exit code 2
                raise
            except Exception as err:  # a bug or a broken file we did not foresee: the batch goes on
                log.info("%s failed", field.path, exc_info=err)
                fail(
                    field.path,
                    f"{field.path}: failed ({type(err).__name__}: {err}); skipped (-v shows where)",
                )
            else:
                if on_done:
                    on_done(field.path.name)
            report(i + 1, len(fields), "")
    finally:  # also when interrupted: the summary covers what was written
        if rows:
            try:
                _write_summary(out, rows)
            except OSError as err:  # a full disk, a folder named summary.csv...
                fail(out / SUMMARY, f"{out / SUMMARY}: cannot write it ({err.strerror or err})")
    return failures
