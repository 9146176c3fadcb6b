"""The README's Python snippets run as written on a CPU-only machine (with make-test weights), in
a folder holding ``real/`` and ``generated/`` images."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import make_images, write_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):text.index("## Speed and memory")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_api_snippets_run_as_written(tmp_path, monkeypatch):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    write_folder(tmp_path / "real", make_images(6, (48, 48), seed=1))
    write_folder(tmp_path / "generated", make_images(6, (48, 48), seed=2))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with pytest.warns(Warning):  # test weights: every output says so
        for block in blocks:
            exec(compile(block.replace("/tmp/w.pth", str(tmp_path / "w.pth")), "README", "exec"),
                 namespace)
    assert (tmp_path / "ref.pkl").is_file()
    assert namespace["report"].values["fid"] > 0
    assert namespace["metric"].compute() > 0
