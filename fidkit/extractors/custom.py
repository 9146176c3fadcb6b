"""A user's own network as a registered extractor (as torchmetrics accepts ``feature=nn.Module``).

>>> import torch, fidkit
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
...                           torch.nn.Flatten())
>>> fidkit.register_extractor("my-net", net, input_size=(64, 64))   # doctest: +SKIP
>>> fidkit.compute_statistics("real/", features="my-net")           # doctest: +SKIP

Its statistics record the name and a SHA-256 of the module's state dict
(:func:`fidkit.extractors.runner.state_dict_sha256`), so two numbers made with different
parameters are told apart by ``fidkit compare``. Nothing is cached for it: a module can change
in memory between runs.
"""
from __future__ import annotations

from typing import Any, Sequence

from fidkit.errors import UsageError
from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor

#: ImageNet channel mean and standard deviation (on the 0..1 scale), torchvision's constants.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModuleExtractor(Extractor):
    """An extractor around an in-memory ``nn.Module``: no weights file; one convention,
    ``custom`` (optional resize, x / 255, optional mean/std)."""

    def conventions(self) -> dict[str, Convention]:
        return {"custom": self.options["convention"]}

    def read_weights(self, path: Any) -> dict:
        raise UsageError(f"{self.name} is an in-memory module; it has no weights file")

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        return self.options["wrapper"]

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        raise UsageError(f"{self.name} is an in-memory module; it has no weights file layout")


def register_extractor(name: str, module: Any, *, input_size: Sequence[int] | None = None,
                       mean: Sequence[float] | None = IMAGENET_MEAN,
                       std: Sequence[float] | None = IMAGENET_STD,
                       dims: int | None = None, replace: bool = False) -> Extractor:
    """Register ``module`` (a torch ``nn.Module`` mapping float32 (N, 3, H, W) to (N, D) or
    (N, D, 1, 1)) as the extractor ``name``.

    Its one convention, ``custom``: images (0..255) are resized to ``input_size`` (H, W) with
    torch's antialiased bilinear resize (None: not resized, the module takes any size), divided
    by 255, then normalised by ``mean``/``std`` per channel (None: left in 0..1). ``dims``: the
    feature dimension (None: found by one forward of a blank image). The module is put in eval
    mode; fidkit never trains it. Raises UsageError for a name already taken (unless
    ``replace``) or a module whose output is not (N, D).
    """
    import torch
    import torch.nn.functional as F

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"register_extractor({name!r}, ...) takes a torch.nn.Module, got "
                         f"{type(module).__name__}")
    size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
    shift = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    scale = None if std is None else torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if size is not None and tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = x / 255.0
        if shift is not None:
            x = x - shift.to(x.device)
        if scale is not None:
            x = x / scale.to(x.device)
        return x

    convention = Convention(
        name="custom", reproduces="the registering code's own preprocessing",
        description=f"resize to {size or 'none'} (torch bilinear, antialias), x / 255, "
                    f"mean {tuple(mean) if mean else None}, std {tuple(std) if std else None}",
        prepare=prepare)
    wrapper = _FeatureWrapper(module.eval())
    if dims is None:
        probe = torch.zeros(1, 3, *(size or (224, 224)))
        with torch.inference_mode():
            dims = int(wrapper(prepare(probe))["features"].shape[1])
    return register(ModuleExtractor(
        name=name, description=f"user module {type(module).__name__}", weights=None,
        taps={"features": int(dims)}, default_dims=int(dims), default_convention="custom",
        convention_names=("custom",), input_contract=convention.description,
        options={"convention": convention, "wrapper": wrapper}), replace=replace)


def _make_wrapper_class():
    import torch

    class FeatureWrapper(torch.nn.Module):
        """``{"features": (N, D)}`` from a module returning (N, D) or (N, D, 1, 1)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.outputs: tuple[str, ...] = ("features",)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            y = self.inner(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            if y.ndim == 4 and y.shape[2:] == (1, 1):
                y = y.flatten(1)
            if y.ndim != 2:
                raise UsageError(f"the registered module returned shape {tuple(y.shape)}; it must "
                                 "return (N, D) features (pool and flatten inside the module)")
            return {"features": y.float()}

    return FeatureWrapper


def _FeatureWrapper(inner: Any) -> Any:  # noqa: N802 - builds the torch class lazily
    global _WRAPPER
    if _WRAPPER is None:
        _WRAPPER = _make_wrapper_class()
    return _WRAPPER(inner)


_WRAPPER = None
