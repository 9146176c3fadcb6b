"""``fidkit selftest``: reproduce torch-fidelity's published numbers on CIFAR-10, end to end.

With internet access this downloads the canonical FID Inception weights (hash-checked, like every
run) and CIFAR-10 (torchvision's download, MD5-checked), takes the first 5,000 training images as
the "generated" side and the first 5,000 test images as the reference, and computes FID, KID and
the Inception Score in the ``tf1`` convention. Each value is printed next to the one torch-fidelity
publishes for exactly this pair in its test suite (``tests/tf1/numerical_precision`` and
``tests/torch_versions_ge_1_13_0`` of torch-fidelity 0.4), with a pass/fail.

The published figures and the tolerances torch-fidelity itself allows:

=====================  ================  =========
value                  published         tolerance
=====================  ================  =========
FID                    10.3233274        1e-4 (TF1 reference test; 1e-2 across GPUs)
IS mean / std          10.75051 / 0.5778723   1e-2 / 1e-3
KID mean / std         -2.907863e-05 / 1.023118e-04   1e-7 / 1e-7
=====================  ================  =========
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

#: (metric key, published value, tolerance); torch-fidelity 0.4's tests for CIFAR-10 train[:5000]
#: (input1) vs test[:5000] (input2), TF1-compatible Inception.
PUBLISHED: tuple[tuple[str, float, float], ...] = (
    ("fid", 10.3233274, 1e-4),
    ("is_mean", 10.75051, 1e-2),
    ("is_std", 0.5778723, 1e-3),
    ("kid_mean", -2.907863e-05, 1e-7),
    ("kid_std", 1.023118e-04, 1e-7),
)
SAMPLES = 5000


@dataclass
class SelftestResult:
    """The computed values, and per published value (name, published, computed, tolerance,
    passed). ``canonical``: whether the weights were the published file (with any other file
    the comparison is meaningless and ``passed`` is False throughout)."""

    values: dict[str, float]
    rows: list[tuple[str, float, float, float, bool]] = field(default_factory=list)
    canonical: bool = True

    @property
    def passed(self) -> bool:
        return self.canonical and all(row[4] for row in self.rows)


def cifar10_first(root: str | os.PathLike, count: int, *, train: bool, dataset_class: Any = None,
                  progress: bool = True) -> Any:
    """The first ``count`` CIFAR-10 images of a split as uint8 (count, 32, 32, 3), in torchvision's
    (the files') order, downloading the archive into ``root`` if needed (MD5-checked by
    torchvision). Raises InputError when it cannot be had."""
    import numpy as np

    from fidkit.errors import InputError

    if dataset_class is None:
        from torchvision.datasets import CIFAR10 as dataset_class  # noqa: N813
    try:
        dataset = dataset_class(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - network and archive errors come in many types
        detail = " ".join(str(exc).split())[:160]
        raise InputError(f"could not download CIFAR-10 into {root} ({detail}); check the network, "
                         "or put cifar-10-python.tar.gz there (torchvision's layout)") from None
    data = np.asarray(dataset.data)
    if len(data) < count:
        raise InputError(f"CIFAR-10 in {root} has {len(data)} images in that split; need {count}")
    return np.ascontiguousarray(data[:count])


def run_selftest(root: str | os.PathLike, *, weights: str | os.PathLike | None = None,
                 samples: int = SAMPLES, device: str | None = None, dataset_class: Any = None,
                 progress: bool = True) -> SelftestResult:
    """Compute FID, KID and IS of CIFAR-10 train[:samples] against test[:samples] (``tf1``,
    pool_3) and compare each with torch-fidelity's published value (meaningful for the
    canonical weights and ``samples`` = 5000 only). ``dataset_class``: torchvision's CIFAR10 or a
    stand-in with its interface (tests). Raises WeightsError, InputError."""
    import warnings

    from fidkit.errors import FidkitWarning
    from fidkit.report import compare

    generated = cifar10_first(root, samples, train=True, dataset_class=dataset_class,
                              progress=progress)
    reference = cifar10_first(root, samples, train=False, dataset_class=dataset_class,
                              progress=progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidkitWarning)  # the table says what matters
        report = compare(generated, reference, metrics=("fid", "kid", "is"), convention="tf1",
                         dims=2048, weights=weights, device=device, progress=progress)
    kid, inception = report.values["kid"], report.values["is"]
    values = {"fid": float(report.values["fid"]), "is_mean": float(inception["mean"]),
              "is_std": float(inception["std"]), "kid_mean": float(kid["mean"]),
              "kid_std": float(kid["std"])}
    canonical = bool(report.generated.meta["weights"].get("canonical"))
    comparable = canonical and samples == SAMPLES
    rows = [(name, published, values[name], tolerance,
             comparable and abs(values[name] - published) <= tolerance)
            for name, published, tolerance in PUBLISHED]
    return SelftestResult(values=values, rows=rows, canonical=comparable)
