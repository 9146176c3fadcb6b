"""What a feature extractor is: the contract every network of :mod:`fidkit.extractors` fulfils.

An extractor maps images to per-image feature vectors. It is described by an :class:`Extractor`
object that holds everything recorded in provenance and shown by ``fidkit features list`` (name,
weights file, licence, taps and their dimensions, named preprocessing conventions) and that knows
how to read its official weights file, build the network from it, and write deterministic random
weights in the same file layout for tests.

This module does not import torch; implementations import it inside their methods, so that the
registry can be listed (``fidkit features list``, ``--help``) without paying for torch.

Adding a network is one local change: a module in this package defining an :class:`Extractor`
subclass, and one :func:`fidkit.extractors.register` call for each of its entries.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch


#: ImageNet channel statistics on the 0..1 scale (torchvision's), which the ImageNet-trained
#: extractors normalise with (torch-fidelity's VGG16 multiplies them by 255).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsFile:
    """A published weights file: where to fetch it and how to recognise the real bytes.

    ``filename`` is the name it gets in the cache folder; ``urls`` are tried in order (mirrors
    after the first); ``size`` in bytes and ``sha256`` are checked after every download and on
    every cache hit; ``licence`` is the licence of the weights (not of fidkit)."""

    filename: str
    sha256: str
    size: int
    urls: tuple[str, ...]
    licence: str = "unknown"


@dataclass(frozen=True)
class Convention:
    """A named resize + normalise rule: how a decoded image becomes the network's input.

    ``prepare`` maps float32 (N, 3, H, W) on the 0..255 scale (on any device) to the network's
    float32 input (N, 3, h, w). ``batched_on_device``: whether ``prepare`` is torch arithmetic that
    can run on a CUDA card for a whole batch of equal-size images (False where it calls PIL per
    image). ``reproduces`` names the tool (and version) whose numbers it gives."""

    name: str
    reproduces: str
    description: str
    prepare: Callable[["torch.Tensor"], "torch.Tensor"]
    batched_on_device: bool = True

    def prepare_image(self, image: Any) -> "torch.Tensor":
        """One uint8 (H, W, 3) image -> float32 (3, h, w) network input (CPU)."""
        import numpy as np
        import torch

        image = np.asarray(image)
        if not image.flags.writeable or not image.flags.c_contiguous:
            image = np.array(image, copy=True)  # torch wants writable, contiguous memory
        x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
        return self.prepare(x)[0]


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file found and hashed: ``canonical`` when its SHA-256 is the published one, or,
    where no hash is published (``hash_published`` False), when fidkit fetched it from the
    official URL itself (its hash then recorded on first download and checked after)."""

    path: Any  # pathlib.Path, or None for a user's in-memory module
    sha256: str
    canonical: bool
    hash_published: bool = True

    def describe(self) -> dict[str, Any]:
        name = getattr(self.path, "name", None) or "in-memory module"
        out = {"sha256": self.sha256, "canonical": self.canonical, "file": name}
        if not self.hash_published:
            out["hash_published"] = False
        return out


@dataclass(frozen=True)
class Extractor:
    """One registered feature extractor (a network + its weights + its conventions).

    Subclasses implement :meth:`conventions`, :meth:`read_weights`, :meth:`build` and
    :meth:`make_test_weights`; everything else is data.

    ``taps`` maps each output name the network can return as features to its dimension; the
    user picks one by dimension (``dims``), so the dimensions of an extractor's taps are distinct.
    ``extra_outputs`` are other outputs the network can return from the same pass (e.g. the
    Inception logits for the Inception Score), name -> dimension.
    ``input_contract`` says in words what the network takes (size, range, normalisation).
    ``options`` holds the architecture's parameters (depth, width, patch size, ...).
    """

    name: str
    description: str
    weights: WeightsFile | None
    taps: Mapping[str, int]
    default_dims: int
    default_convention: str
    convention_names: tuple[str, ...]
    input_contract: str
    reference: str = ""  # the paper / official code the features come from
    extra_outputs: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def licence(self) -> str:
        return self.weights.licence if self.weights is not None else "user-supplied"

    @property
    def dims(self) -> tuple[int, ...]:
        return tuple(sorted(self.taps.values()))

    def tap_for(self, dims: int | None) -> str:
        """The output name of the tap with ``dims`` features (None: the default tap).
        Raises UsageError for a dimension this extractor has no tap of."""
        from fidkit.errors import UsageError

        want = self.default_dims if dims is None else int(dims)
        for tap, size in self.taps.items():
            if size == want:
                return tap
        raise UsageError(f"{self.name} has no {want}-dim features; its taps give "
                         f"{', '.join(map(str, self.dims))} (dims=/--dims)")

    # -- implemented by each network ------------------------------------------------------------

    def conventions(self) -> dict[str, Convention]:
        """Every named preprocessing convention of this extractor, name -> Convention."""
        raise NotImplementedError

    def read_weights(self, path: Any) -> dict[str, "torch.Tensor"]:
        """The state dict in the official file at ``path``, loaded without running code from it
        (``torch.load(weights_only=True)`` or a restricted reader). Raises WeightsError naming
        the file and the fix when it is not this network's file."""
        raise NotImplementedError

    def build(self, state: dict[str, "torch.Tensor"], outputs: tuple[str, ...]) -> "torch.nn.Module":
        """The network in eval mode (CPU, float32) with ``state`` loaded; its forward takes the
        convention's output and returns ``{name: (N, D) float32}`` for each name in ``outputs``
        (tap names and extra outputs). Raises WeightsError when ``state`` does not fit."""
        raise NotImplementedError

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        """Write deterministic random weights in the official file layout to ``path``
        (atomically). Features made with them are not comparable to anything published."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------

    def convention(self, name: str | None) -> Convention:
        """The convention ``name`` (None: the default). Raises UsageError for an unknown name."""
        from fidkit.errors import UsageError

        table = self.conventions()
        key = self.default_convention if name is None else name
        if key not in table:
            raise UsageError(f"unknown convention {key!r} for {self.name}; choose from "
                             f"{', '.join(table)} (convention=/--convention)")
        return table[key]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``fidkit features list --json`` and provenance."""
        w = self.weights
        return {
            "name": self.name,
            "description": self.description,
            "dims": list(self.dims),
            "default_dims": self.default_dims,
            "conventions": list(self.convention_names),
            "default_convention": self.default_convention,
            "input": self.input_contract,
            "licence": self.licence,
            "reference": self.reference,
            "weights": None if w is None else {"file": w.filename, "sha256": w.sha256,
                                               "size": w.size, "urls": list(w.urls)},
        }
