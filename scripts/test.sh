#!/usr/bin/env bash
# CI in stages, after scripts/setup-env.sh: lint, fast (no Qt), gui, slow (accuracy on real
# data), io-py312 (the torch-free I/O core on Python 3.12), wheel (scripts/check-wheel.sh).
# Stops at the first stage that fails, with its exit code; ends with one line of the test
# counts summed over the pytest stages. `bash scripts/test.sh fast gui` runs only those stages;
# PYTEST_ADDOPTS passes options to every pytest run (e.g. PYTEST_ADDOPTS="-k segment").
set -uo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
reports=$(mktemp -d "${TMPDIR:-/tmp}/napari-wbc-tests.XXXXXX")
trap 'rm -rf "$reports"' EXIT

counts() {  # "N passed, N failed, N skipped" from the JUnit reports of the pytest stages
    "$py" - "$reports" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for report in Path(sys.argv[1]).glob("*.xml"):
    for suite in ET.parse(report).getroot().iter("testsuite"):
        for key in n:
            n[key] += int(suite.get(key, 0))
failed = n["failures"] + n["errors"]
print(f"{n['tests'] - failed - n['skipped']} passed, {failed} failed, {n['skipped']} skipped")
EOF
}

run_stage() {  # a header, the stage; at its failure, the counts so far and its exit code
    echo
    echo "=== stage $1: $2 ==="
    "stage_$1"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "=== stage $1 failed (exit code $rc) ==="
        counts
        exit "$rc"
    fi
}

pytest_run() {  # pytest_run REPORT ARGS...
    local report=$1
    shift
    "$py" -m pytest -q --junitxml="$reports/$report.xml" "$@"
}

# the pytest stages run on every core: one pytest-xdist worker per core (each GUI worker with
# its own Xvfb display), a test file's tests in one worker (its module fixtures made once),
# one torch thread per worker
workers=$("$py" -c "import os; print(len(os.sched_getaffinity(0)))")
parallel=(-n "$workers" --dist loadfile)

stage_lint() {
    .venv/bin/ruff check . && .venv/bin/ruff format --check .
}

stage_fast() {
    # the GUI-free tests must collect where napari is not installed (a GPU training machine)
    "$py" - > "$reports/collect.log" 2>&1 <<'EOF' || { cat "$reports/collect.log"; return 1; }
import sys

import pytest


class NoNapari:
    def find_spec(self, name, path=None, target=None):
        if name == "napari" or name.startswith("napari."):
            raise ImportError(f"No module named {name!r}")


sys.meta_path.insert(0, NoNapari())
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:napari", "-p", "no:cacheprovider", "-m", "not gui"]))
EOF
    echo "the tests without napari collect"
    OMP_NUM_THREADS=1 pytest_run fast -m "not gui and not slow" "${parallel[@]}"
}

stage_gui() {
    OMP_NUM_THREADS=1 pytest_run gui -m gui "${parallel[@]}"
}

stage_slow() {
    OMP_NUM_THREADS=1 pytest_run slow -m slow "${parallel[@]}"
}

stage_io-py312() {
    if [ ! -f scripts/test-io-py312.sh ]; then
        echo "no scripts/test-io-py312.sh: nothing to run"
        return 0
    fi
    bash scripts/test-io-py312.sh --junitxml="$reports/io-py312.xml"
}

stage_wheel() {
    bash scripts/check-wheel.sh
}

declare -A about=(
    [lint]="ruff check and ruff format --check"
    [fast]="tests without Qt: pytest -m 'not gui and not slow'"
    [gui]="napari widget tests: pytest -m gui"
    [slow]="accuracy on real data: pytest -m slow"
    [io-py312]="the torch-free I/O tests on Python 3.12: scripts/test-io-py312.sh"
    [wheel]="the wheel in a fresh venv: scripts/check-wheel.sh"
)
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint fast gui slow io-py312 wheel)
for stage in "${stages[@]}"; do
    if [ -z "${about[$stage]+x}" ]; then
        echo "unknown stage $stage; the stages: lint fast gui slow io-py312 wheel" >&2
        exit 2
    fi
done
for stage in "${stages[@]}"; do
    run_stage "$stage" "${about[$stage]}"
done
echo
echo "=== all stages passed: ${stages[*]} ==="
counts
