"""``fidkit --help``, every verb's ``--help`` and argument errors return without importing torch
(or numpy's heavy friends), and quickly. Checked in fresh interpreters: ``sys.modules`` after
the command, and wall-clock time of ``python -m fidkit --help``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

VERBS = ("stats", "compare", "info", "convert", "weights", "dicom", "conv")

_PROBE = """
import json, sys
from fidkit.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "scipy", "pydicom", "PIL") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True,
                         text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["stats"], ["compare", "a"],
                                  ["stats", "x", "-o", "y.pkl", "--dims", "7"],
                                  ["nonsense-verb"]] + [[v, "--help"] for v in VERBS],
                         ids=lambda a: " ".join(a))
def test_no_torch_for_help_and_argument_errors(argv):
    result = _probe(argv)
    assert result["code"] in (0, 2), result
    assert result["heavy"] == [], f"fidkit {' '.join(argv)} imported {result['heavy']}"


def test_import_fidkit_is_light():
    code = "import sys, fidkit; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_help_works_without_torch():
    # Its speed is measured by benchmarks/startup.py (tests never assert on timings); what makes
    # it fast, not importing torch, is checked above.
    out = subprocess.run([sys.executable, "-m", "fidkit", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "stats" in out.stdout and out.stderr == ""
