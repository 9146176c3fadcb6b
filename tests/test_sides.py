"""``fidkit compare GENERATED REFERENCE``: the first argument is the generated side, the second the
reference, and the output says so.

* ``--metrics is`` scores the FIRST argument: its Inception Score equals torch-fidelity's on that
  folder (same random weights, same PNGs), and differs from what the reference would score;
* the text output labels the sides (``generated: PATH``, ``reference: PATH``) and JSON has
  ``generated`` / ``reference`` entries with each input;
* KID on 60 images warns that its subset size was lowered from 1000 (a ``fidkit: warning:`` line
  on stderr and the JSON ``warnings``).
"""
from __future__ import annotations

import json

import pytest

from conftest import make_images, write_folder
from fidkit.cli import main

N_GENERATED, N_REFERENCE = 20, 4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sides")
    generated = write_folder(root / "generated", make_images(N_GENERATED, (32, 32), seed=61))
    reference = write_folder(root / "reference", make_images(N_REFERENCE, (32, 32), seed=62))
    return generated, reference


def _options(weights, *extra: str) -> list[str]:
    return ["--weights", str(weights), "--workers", "0", "--device", "cpu", *extra]


@pytest.mark.slow
def test_inception_score_is_the_first_arguments(folders, test_weights, capsys):
    import torch_fidelity

    generated, reference = folders
    splits = 10  # what compare uses for N >= 10: two images per split here
    theirs = torch_fidelity.calculate_metrics(
        input1=str(generated), isc=True, isc_splits=splits, cuda=False, cache=False,
        verbose=False, batch_size=N_GENERATED, save_cpu_ram=True,
        feature_extractor_weights_path=str(test_weights))["inception_score_mean"]
    capsys.readouterr()
    assert main(["compare", str(generated), str(reference), "--metrics", "is", "--json",
                 *_options(test_weights)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["is"]["splits"] == splits
    # IS is computed in float64 by both; the logits agree to float32 rounding.
    assert abs(report["is"]["mean"] - theirs) <= 1e-5 * theirs
    # Scoring the reference instead would give exactly 1 (4 images, 4 splits of one image each,
    # each at KL 0 from itself): the generated side's score is well away from that.
    assert theirs - 1.0 > 1e-3
    assert report["metrics"]["is"]["describes"] == "generated"
    assert report["metrics"]["is"]["n_generated"] == N_GENERATED
    assert report["generated"]["input"] == str(generated)
    assert report["reference"]["input"] == str(reference)


@pytest.mark.parametrize("order", ["as given", "swapped"])
def test_text_output_labels_the_sides(folders, test_weights, capsys, order):
    first, second = folders if order == "as given" else folders[::-1]
    capsys.readouterr()
    assert main(["compare", str(first), str(second), *_options(test_weights, "--dims", "64")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"generated: {first}" in lines and f"reference: {second}" in lines
    assert lines[0].startswith("fid: ")


def test_kid_on_60_images_warns_the_lowered_subset_size(tmp_path, test_weights, capsys):
    n = 60
    generated = write_folder(tmp_path / "generated", make_images(n, (16, 16), seed=63))
    reference = write_folder(tmp_path / "reference", make_images(n, (16, 16), seed=64))
    capsys.readouterr()
    assert main(["compare", str(generated), str(reference), "--metrics", "kid", "--json",
                 *_options(test_weights, "--dims", "64")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    expected = f"KID subset size lowered from 1000 to {n}"
    assert report["kid"]["subset_size"] == n
    assert any(expected in w for w in report["warnings"])
    (line,) = [x for x in captured.err.splitlines() if expected in x]
    assert line.startswith("fidkit: warning: ")
