"""Fuzz the readers and ``napari-wbc segment`` with bad and unusual files (``fuzz_files.py``).

Every file must give a result or an :class:`~napari_wbc.core.io.InputError` that names it:
no traceback, no hang, no allocation past a memory limit, and the good files of a mixed
batch all done.

* Readers: the napari reader hook (``get_reader``, then the reader it returns, then the
  layer data it gives read as napari would: corners of every level and the coarsest level
  whole), ``core.io.read_image`` and ``core.slide.open_slide`` (regions of every level). They
  run in a child process under an address-space limit (``RLIMIT_AS``), each call under
  ``SIGALRM``; a child that hangs past its alarm or dies is replaced and the run goes on, so
  every file gets an outcome. One test per category lists what went wrong, where in src.
* CLI: one ``napari-wbc segment`` over the whole folder (and a name too long for the file
  system), under the same limit and a timeout.

``python tests/test_fuzz.py probe SPEC.json`` is the child's entry point.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_files import CATEGORIES, make_bad_files

MEMORY_LIMIT = 6 * 2**30  # bytes of address space for a reader or CLI process
PROBE_TIMEOUT = 6.0  # s for one reader call on one file
START_TIMEOUT = 60.0  # s for the probe child to import the readers
CLI_TIMEOUT = 150.0  # s for one `napari-wbc segment` over all files
WHOLE_LEVEL_BYTES = 256 * 2**20  # napari reads a layer's coarsest level whole (thumbnail)
CORNER = 64  # px: the corner regions read from every level
MARK = "@@fuzz "  # prefix of the child's protocol lines on stdout
PROBES = ("reader_hook", "read_image", "open_slide")
ALLOWED = {"ok", "declined", "input-error", "error-shown"}  # outcomes of a bad file that are fine
SRC_MARK = f"{os.sep}napari_wbc{os.sep}"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _child_env(home: Path) -> dict:
    env = dict(os.environ)
    env.update(
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        NAPARI_WBC_HOME=str(home / "napari-wbc"),
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
    )
    return env


# ---------------------------------------------------------------- the probe child


class _Hang(BaseException):
    """Raised by SIGALRM in the child: a reader call ran past PROBE_TIMEOUT."""


class _BadResult(Exception):
    """A reader returned something that is not what it promises."""


class _TooBig(Exception):
    """A layer level napari reads whole would not fit in memory."""


def _frame(entry: traceback.FrameSummary) -> str:
    path = entry.filename
    if SRC_MARK in path:
        path = "src" + path[path.rindex(f"{os.sep}napari_wbc{os.sep}") :]
    return f"{path}:{entry.lineno} in {entry.name}: {(entry.line or '').strip()}"


def _where(frames: list[traceback.FrameSummary]) -> tuple[str, str]:
    """(the deepest frame in napari_wbc, the deepest frame of all) of a traceback."""
    ours = [f for f in frames if SRC_MARK in f.filename]
    return (_frame(ours[-1]) if ours else "", _frame(frames[-1]) if frames else "")


def _classify(err: BaseException, name: str) -> dict:
    chain, e = [], err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    from napari_wbc.core.io import InputError

    memory = next((e for e in chain if isinstance(e, MemoryError)), None)
    if memory is not None:
        outcome, culprit = "memory", memory
    elif isinstance(err, _Hang):
        outcome, culprit = "hang", err
    elif isinstance(err, _TooBig):
        outcome, culprit = "memory", err
    elif isinstance(err, _BadResult):
        outcome, culprit = "bad-result", err
    elif isinstance(err, InputError):
        outcome, culprit = ("input-error" if name in str(err) else "unnamed-error"), err
    else:
        outcome, culprit = "exception", err
    where, origin = _where(traceback.extract_tb(culprit.__traceback__))
    raised = type(err).__name__
    return {
        "outcome": outcome,
        "type": raised if culprit is err else f"{raised} from {type(culprit).__name__}",
        "detail": str(culprit)[:300],
        "where": where,
        "origin": origin,
    }


def _probe_child(spec_path: str) -> None:
    import logging

    import dask
    import numpy as np
    from napari.utils.notifications import notification_manager

    from napari_wbc import _reader
    from napari_wbc.core.io import read_image
    from napari_wbc.core.slide import open_slide

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    dask.config.set(scheduler="synchronous")  # errors and alarms in this thread
    spec = json.loads(Path(spec_path).read_text())
    shown: list[tuple[str, str]] = []
    notification_manager.notification_ready.connect(
        lambda n: shown.append((str(n.severity).lower(), str(n.message)))
    )

    # the protocol gets its own copy of stdout; whatever a library prints goes to stderr
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(**message) -> None:
        protocol.write(MARK + json.dumps(message) + "\n")
        protocol.flush()

    def read_as_napari(data) -> str:
        levels = list(data) if isinstance(data, list | tuple) else [data]
        for level in levels:
            for index in ((slice(0, CORNER),) * 2, (slice(-CORNER, None),) * 2):
                part = level[index]
                block = np.asarray(part)
                if block.shape != tuple(part.shape):
                    raise _BadResult(f"level {level.shape}: read {block.shape} for {part.shape}")
        coarsest = levels[-1]
        if coarsest.nbytes > WHOLE_LEVEL_BYTES:
            raise _TooBig(f"coarsest level {coarsest.shape} {coarsest.dtype} ({coarsest.nbytes} bytes)")
        np.asarray(coarsest)
        return " ".join(f"{tuple(level.shape)}" for level in levels)

    def reader_hook(path: str) -> tuple[str, str]:
        reader = _reader.get_reader(path)
        if reader is None:
            return "declined", ""
        shown.clear()
        layers = reader(path)
        errors = [message for severity, message in shown if "error" in severity]
        for message in errors:
            if "MemoryError" in message or "Unable to allocate" in message:
                return "memory", message
            if Path(path).name not in message:
                return "unnamed-error", message
        read = [f"{t[2]} {read_as_napari(t[0])}" for t in layers if t[0] is not None]
        if errors:
            return "error-shown", errors[0]
        if not read:
            raise _BadResult("the reader gave no layer and showed no error")
        return "ok", "; ".join(read)

    def read_image_probe(path: str) -> tuple[str, str]:
        data = read_image(path).data
        if data.dtype != np.uint8 or data.ndim != 3 or data.shape[-1] != 3 or min(data.shape[:2]) < 16:
            raise _BadResult(f"read_image gave {data.dtype} {data.shape}")
        return "ok", f"{data.shape}"

    def open_slide_probe(path: str) -> tuple[str, str]:
        slide = open_slide(path)
        try:
            for k, level in enumerate(slide.levels):
                h, w = level.shape
                for y0, x0 in ((0, 0), (max(0, h - CORNER), max(0, w - CORNER))):
                    y1, x1 = min(h, y0 + CORNER), min(w, x0 + CORNER)
                    block = slide.read(y0, x0, y1, x1, k)
                    if block.shape != (y1 - y0, x1 - x0, 3) or block.dtype != np.uint8:
                        raise _BadResult(f"level {k} {level.shape}: read {block.dtype} {block.shape}")
            return "ok", " ".join(f"{level.shape}" for level in slide.levels)
        finally:
            slide.close()

    probes = {"reader_hook": reader_hook, "read_image": read_image_probe, "open_slide": open_slide_probe}

    def on_alarm(signum, frame):
        raise _Hang(f"no answer in {PROBE_TIMEOUT:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    emit(ready=True)
    for i, path in spec["files"]:
        for probe in PROBES:
            emit(start=i, probe=probe)
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, PROBE_TIMEOUT)
            try:
                outcome, detail = probes[probe](path)
                result = {"outcome": outcome, "detail": detail[:300], "type": "", "where": "", "origin": ""}
            except BaseException as err:  # every outcome is recorded, the parent judges
                signal.setitimer(signal.ITIMER_REAL, 0)
                result = _classify(err, Path(path).name)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result["seconds"] = round(time.perf_counter() - t0, 3)
            emit(result=i, probe=probe, **result)
    emit(finished=True)


# ---------------------------------------------------------------- the parent side


def run_reader_probes(files: list[tuple[Path, str]], work: Path) -> dict[int, dict[str, dict]]:
    """``{file index: {probe: result}}`` for every file, from probe children (see module doc)."""
    work.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, dict]] = {}
    todo = list(range(len(files)))
    run = 0
    while todo:
        run += 1
        spec = work / f"spec{run}.json"
        spec.write_text(json.dumps({"files": [(i, str(files[i][0])) for i in todo]}))
        errlog = work / f"stderr{run}.txt"
        with open(errlog, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "probe", str(spec)],
                stdout=subprocess.PIPE,
                stderr=err,
                stdin=subprocess.DEVNULL,
                text=True,
                env=_child_env(work / "home"),
                preexec_fn=_limit_memory,
                start_new_session=True,
            )
            lines: queue.Queue = queue.Queue()

            def pump(stream=proc.stdout, lines=lines):
                for line in stream:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            current, progressed = None, False
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    line = "timeout"
                if line == "timeout" or line is None:
                    if line == "timeout":
                        os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                    if current is None:
                        if not progressed and todo:
                            raise RuntimeError(
                                f"the probe child gave nothing (exit {code}):\n{errlog.read_text()[-3000:]}"
                            )
                        break
                    i, probe = current
                    outcome = "hang" if line == "timeout" else "crash"
                    tail = errlog.read_text()[-600:].strip().replace("\n", " | ")
                    detail = (
                        f"no answer in {PROBE_TIMEOUT + 10:g} s: killed"
                        if line == "timeout"
                        else f"exit {code}"
                    )
                    results.setdefault(i, {})[probe] = {
                        "outcome": outcome,
                        "type": "",
                        "detail": f"{detail}: {tail}",
                        "where": "",
                        "origin": "",
                    }
                    for rest in PROBES[PROBES.index(probe) + 1 :]:
                        results[i][rest] = {"outcome": "not-run", "detail": f"after {outcome}"}
                    break
                if not line.startswith(MARK):
                    continue
                message = json.loads(line[len(MARK) :])
                if "start" in message:
                    current = (message["start"], message["probe"])
                    deadline = time.monotonic() + PROBE_TIMEOUT + 10
                elif "result" in message:
                    i, probe = message.pop("result"), message.pop("probe")
                    results.setdefault(i, {})[probe] = message
                    current, progressed = None, True
                    deadline = time.monotonic() + 30
        todo = [i for i in todo if len(results.get(i, {})) < len(PROBES)]
    return results


def format_report(files, results) -> str:
    lines = []
    for i, (path, category) in enumerate(files):
        for probe in PROBES:
            r = results[i][probe]
            where = f" at {r['where']}" if r.get("where") else ""
            kind = f" {r['type']}" if r.get("type") else ""
            detail = r.get("detail", "").replace("\n", " ")[:160]
            lines.append(
                f"{category:15} {path.name[:40]:40} {probe:11} {r['outcome']}{kind}{where}: {detail}"
            )
    return "\n".join(lines)


def _failed(category: str, result: dict) -> bool:
    if result["outcome"] == "not-run":  # after a hang or crash of the same file, reported as such
        return False
    if category == "good":
        return result["outcome"] != "ok"
    return result["outcome"] not in ALLOWED


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    t0 = time.perf_counter()
    files = make_bad_files(tmp_path_factory.mktemp("fuzz") / "files")
    assert time.perf_counter() - t0 < 10
    return files


@pytest.fixture(scope="module")
def reader_results(fuzz, tmp_path_factory):
    results = run_reader_probes(fuzz, tmp_path_factory.mktemp("probes"))
    report = format_report(fuzz, results)
    print(report)  # shown with the first failure; the whole table per file and reader
    return results


@dataclass
class CliRun:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    out: Path
    inputs: list[tuple[Path, str]]


@pytest.fixture(scope="module")
def cli_run(fuzz, tmp_path_factory) -> CliRun:
    work = tmp_path_factory.mktemp("cli")
    folder = fuzz[0][0].parent
    missing = [
        str(p) for p, _ in fuzz if p.parent == folder and len(p.name) > os.pathconf(folder, "PC_NAME_MAX")
    ]
    out = work / "out"
    cmd = [sys.executable, "-m", "napari_wbc.cli", "segment", str(folder), *missing]
    cmd += ["--out", str(out), "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_child_env(work / "home"),
        preexec_fn=_limit_memory,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        timed_out = True
    run = CliRun(proc.returncode, stdout, stderr, timed_out, time.perf_counter() - t0, out, fuzz)
    print(f"napari-wbc segment: exit {run.returncode} after {run.seconds:.0f} s\n--- stderr\n{stderr}")
    return run


# ---------------------------------------------------------------- reader tests


@pytest.mark.parametrize("category", CATEGORIES)
def test_readers_give_a_result_or_a_named_error(category, fuzz, reader_results):
    """No traceback, hang or memory blow-up from any reader on any file of ``category``."""
    failures = [
        f"{path.name[:60]} {probe}: {r['outcome']} {r.get('type', '')} at {r.get('where') or '?'} "
        f"(from {r.get('origin') or '?'}): {r.get('detail', '')[:200]}"
        for i, (path, cat) in enumerate(fuzz)
        if cat == category
        for probe, r in reader_results[i].items()
        if _failed(cat, r)
    ]
    assert not failures, f"{len(failures)} reader failures on {category} files:\n" + "\n".join(failures)


# ---------------------------------------------------------------- CLI tests


def _error_lines(run: CliRun) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error:")]


def _summary(run: CliRun) -> dict[str, str]:
    """``{input file name: output stem}`` from ``summary.csv`` (the ``output`` column where the
    CLI writes one: inputs that share a stem, or whose name is too long, get another stem)."""
    import pandas as pd

    path = run.out / "summary.csv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    outputs = table["output"] if "output" in table else [Path(f).stem for f in table["file"]]
    return {Path(f).name: stem for f, stem in zip(table["file"], outputs, strict=True)}


def _outputs(run: CliRun, path: Path) -> list[Path]:
    """The files ``napari-wbc segment`` writes for ``path``: a field's by its summary row, a
    slide's by its name (the file name before its first dot)."""
    stem = _summary(run).get(path.name, path.name.split(".")[0])
    return [run.out / f"{stem}_cells.tif", run.out / f"{stem}_nuclei.tif", run.out / f"{stem}_cells.csv"]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name longer than the file system allows
        return False


def _stderr_tail(run: CliRun) -> str:
    return run.stderr[-4000:]


def test_cli_finishes_without_a_traceback(cli_run):
    assert not cli_run.timed_out, (
        f"napari-wbc segment hung: killed after {CLI_TIMEOUT:g} s; stderr:\n{_stderr_tail(cli_run)}"
    )
    assert "Traceback" not in cli_run.stderr, _stderr_tail(cli_run)
    assert cli_run.returncode == 1, f"exit {cli_run.returncode}, expected 1 (some inputs failed)"


def test_cli_stays_within_memory(cli_run):
    assert not cli_run.timed_out, "hung (see test_cli_finishes_without_a_traceback)"
    lines = [
        line for line in cli_run.stderr.splitlines() if "MemoryError" in line or "Unable to allocate" in line
    ]
    assert not lines, "\n".join(lines)


def test_cli_does_every_good_image(cli_run):
    good = [p for p, c in cli_run.inputs if c == "good"]
    assert {p.name for p in good} <= set(_summary(cli_run)), (
        f"not in summary.csv; stderr:\n{_stderr_tail(cli_run)}"
    )
    missing = [str(f) for p in good for f in _outputs(cli_run, p) if not _is_file(f)]
    assert not missing, f"missing outputs: {missing}; stderr:\n{_stderr_tail(cli_run)}"


def test_cli_error_lines_name_their_files(cli_run):
    names = [p.name for p, _ in cli_run.inputs]
    unnamed = [line for line in _error_lines(cli_run) if not any(name in line for name in names)]
    assert not unnamed, "error lines that name no input:\n" + "\n".join(unnamed)


def test_cli_accounts_for_every_input(cli_run):
    """Every input file gets its outputs or an error line that names it."""
    assert not cli_run.timed_out, "hung (see test_cli_finishes_without_a_traceback)"
    errors = _error_lines(cli_run)
    lost = [
        f"{category}: {path.name[:80]}"
        for path, category in cli_run.inputs
        if not all(_is_file(f) for f in _outputs(cli_run, path)) and not any(path.name in e for e in errors)
    ]
    assert not lost, f"{len(lost)} inputs with neither outputs nor an error line:\n" + "\n".join(lost)


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    _probe_child(sys.argv[2])
