"""``fidkit features list``: every registered extractor with its dims, weights, licence, cached
state and conventions, without importing torch."""
from __future__ import annotations

import json
import subprocess
import sys

from fidkit.extractors import iter_extractors


def test_lists_every_extractor_without_torch(tmp_path):
    code = ("import json, sys; from fidkit.cli import main; rc = main(['features', 'list', '--json']);"
            "print('TORCH' if 'torch' in sys.modules else 'NOTORCH', file=sys.stderr); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"FIDKIT_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and "NOTORCH" in run.stderr
    rows = {row["name"]: row for row in json.loads(run.stdout)}
    for extractor in iter_extractors():
        if extractor.weights is None:  # a module another test registered in this process
            continue
        row = rows[extractor.name]
        assert row["dims"] == list(extractor.dims) and row["licence"] == extractor.licence
        assert row["default_convention"] in row["conventions"] and row["cached"] == "absent"
    assert rows["swav-resnet50"]["licence"].startswith("CC-BY-NC")
    assert rows["inception"]["weights"]["sha256"].startswith("6726825d")


def test_a_present_file_of_unpublished_size_counts_as_cached(tmp_path, monkeypatch):
    from fidkit.cli.features import cached_state
    from fidkit.extractors import get_extractor

    monkeypatch.setenv("FIDKIT_CACHE", str(tmp_path))
    extractor = get_extractor("dinov2-vit-s-14")
    assert cached_state(extractor) == "absent"
    (tmp_path / extractor.weights.filename).write_bytes(b"x")
    assert cached_state(extractor) == ("cached" if not extractor.weights.size else "size differs")
