"""Registry entries of the DINOv2 backbones (``dinov2-vit-{s,b,l,g}-14``): the final-norm class
token (384 / 768 / 1024 / 1536 features), the features of FD-DINOv2 (Stein et al. 2023,
dgm-eval; EDM2; torch-fidelity 0.4), with the conventions of :mod:`fidkit.preprocess.dinov2`.

The network is :mod:`fidkit.extractors.networks.dinov2`, which loads the official
``dinov2_vit*14_pretrain.pth`` files (``facebookresearch/dinov2``) as they are.
"""
from __future__ import annotations

from typing import Any

from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor, WeightsFile

_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
#: Weights licence: the DINOv2 README says "DINOv2 code and model weights are released under the
#: Apache License 2.0" (MODEL_CARD.md: "License: Apache License 2.0"; CC-BY-NC before Aug 2023).
_LICENCE = "Apache-2.0"
#: The convention names of :mod:`fidkit.preprocess.dinov2` (repeated here so that listing the
#: registry does not import torch; tests/test_extractor_dinov2.py checks the two agree).
_CONVENTION_NAMES = ("dgm-eval", "edm2", "torch-fidelity")
_TAP = "cls"

# TODO(verify): Meta publishes no SHA-256 (nor size) for these files: not in the dinov2 README,
# hub code (torch.hub.load_state_dict_from_url without check_hash) or model card, nor in
# dgm-eval, EDM2, torch-fidelity or timm. An empty sha256 matches no file, so every file is used
# as non-canonical (recorded as such) until the real hashes are filled in from a download.
_UNPUBLISHED_SHA256 = ""
# TODO(verify): sizes in bytes. Only ViT-L/14's is known, and only second-hand: 1217586395, the
# Content-Length a HEAD request to the official URL returned (reported in a third-party
# project's notes); it is consistent with the 304,368,640 float32 parameters (1,217,474,560
# bytes) plus zip/pickle overhead. 0 = unknown.
_SIZES = {"vits14": 0, "vitb14": 0, "vitl14": 1217586395, "vitg14": 0}


def _weights(compact: str) -> WeightsFile:
    name = f"dinov2_{compact}_pretrain.pth"
    return WeightsFile(filename=name, sha256=_UNPUBLISHED_SHA256, size=_SIZES[compact],
                       urls=(f"{_BASE_URL}/dinov2_{compact}/{name}",), licence=_LICENCE)


class DinoV2Extractor(Extractor):
    """One DINOv2 backbone (:class:`~fidkit.extractors.networks.dinov2.DinoV2ViT`);
    ``options["architecture"]`` names its shape in
    :data:`~fidkit.extractors.networks.dinov2.ARCHITECTURES`."""

    def _architecture(self):
        from fidkit.extractors.networks.dinov2 import ARCHITECTURES

        return ARCHITECTURES[self.options["architecture"]]

    def _file_hint(self) -> str:
        return self.weights.filename if self.weights is not None else "the official weights file"

    def conventions(self) -> dict[str, Convention]:
        from fidkit.preprocess.dinov2 import CONVENTIONS

        return dict(CONVENTIONS)

    def read_weights(self, path: Any) -> dict:
        """The state dict of an official ``dinov2_vit*14_pretrain.pth`` (or a file in its layout;
        a chunked training checkpoint's ``blocks.C.I.*`` keys are accepted), loaded with
        ``torch.load(weights_only=True)``. Raises WeightsError naming the file and the fix."""
        import pickle

        import torch

        from fidkit.errors import WeightsError
        from fidkit.extractors.networks.dinov2 import remap_official_keys

        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
                AttributeError) as exc:
            msg = " ".join(str(exc).split())[:160]
            raise WeightsError(f"{path} is not a loadable PyTorch weights file ({msg}); use "
                               f"{self._file_hint()} for {self.name}") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{path} does not hold a plain state dict of tensors; use "
                               f"{self._file_hint()} for {self.name}")
        state = remap_official_keys(dict(state))
        self._check_layout(state, path)
        return state

    def _check_layout(self, state: dict, path: Any) -> None:
        from fidkit.errors import WeightsError
        from fidkit.extractors.networks.dinov2 import state_dict_shapes

        arch = self._architecture()
        want = state_dict_shapes(arch)
        fix = f"use {self._file_hint()} for {self.name}"
        if "register_tokens" in state:
            raise WeightsError(f"{path} is a DINOv2 with-registers checkpoint (*_reg4_pretrain.pth), "
                               f"which {self.name} is not; {fix}")
        cls = state.get("cls_token")
        if cls is not None and cls.shape[-1] != arch.embed_dim:
            raise WeightsError(f"{path} holds a {cls.shape[-1]}-wide DINOv2, not {self.name}'s "
                               f"{arch.embed_dim}; pick the matching dinov2-vit-*-14 extractor or {fix}")
        missing = [k for k in want if k not in state]
        extra = [k for k in state if k not in want]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
            if extra:
                parts.append(f"{len(extra)} unexpected keys, e.g. {extra[0]}")
            raise WeightsError(f"{path} is not {self.name}'s weights file ({'; '.join(parts)}); {fix}")
        for key, shape in want.items():
            if tuple(state[key].shape) != shape:
                raise WeightsError(f"{path}: {key} has shape {tuple(state[key].shape)}, {self.name} "
                                   f"needs {shape}; {fix}")

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        import torch

        from fidkit.errors import UsageError, WeightsError
        from fidkit.extractors.networks.dinov2 import DinoV2ViT

        unknown = [o for o in outputs if o not in self.taps]
        if unknown or not outputs:
            raise UsageError(f"{self.name} gives only {', '.join(self.taps)}, not "
                             f"{', '.join(unknown) or 'nothing'}")
        state = {k: v.to(torch.float32) for k, v in state.items()}
        # Built on the meta device and given the loaded tensors: no time spent on a random
        # initialisation that is thrown away (ViT-g has 1.1 billion parameters).
        with torch.device("meta"):
            model = DinoV2ViT(self._architecture(), outputs=tuple(outputs))
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())[:200]
            raise WeightsError(f"the weights do not fit {self.name} ({msg}); "
                               f"use {self._file_hint()}") from None
        return model.eval().requires_grad_(False)

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        """Deterministic random weights in the official layout (every key, shape and order of
        the released file), scaled so that attention is selective, the residual branches matter
        and the class token differs clearly between images. Not comparable to anything published."""
        import torch

        from fidkit.extractors.networks.dinov2 import state_dict_shapes
        from fidkit.fileio import atomic_writer

        arch = self._architecture()
        g = torch.Generator().manual_seed(int(seed))

        def normal(shape, std, mean=0.0):
            return torch.randn(shape, generator=g) * std + mean

        state = {}
        for key, shape in state_dict_shapes(arch).items():
            leaf = key.rsplit(".", 1)[-1] if "." in key else key
            fan_in = shape[1] if len(shape) == 2 else 0
            if key == "mask_token":
                value = torch.zeros(shape)
            elif key in ("cls_token", "pos_embed"):
                value = normal(shape, 0.5)  # position matters as much as content: tests see it
            elif key == "patch_embed.proj.weight":
                value = normal(shape, (3 * arch.patch_size ** 2) ** -0.5)
            elif leaf == "gamma":
                value = torch.rand(shape, generator=g) * 0.4 + 0.1
            elif ".norm" in key or key.startswith("norm."):
                value = normal(shape, 0.1, 1.0 if leaf == "weight" else 0.0)
            elif leaf == "weight":
                value = normal(shape, fan_in ** -0.5)
            else:  # linear and convolution biases
                value = normal(shape, 0.05)
            state[key] = value.contiguous()
        with atomic_writer(path) as handle:
            torch.save(state, handle)


def _entry(size: str, label: str, architecture: str, dims: int, shape: dict) -> DinoV2Extractor:
    compact = f"vit{size}14"
    return register(DinoV2Extractor(
        name=f"dinov2-vit-{size}-14",
        description=f"DINOv2 {label}/14 (LVD-142M), final-norm class token",
        weights=_weights(compact),
        taps={_TAP: dims},
        default_dims=dims,
        default_convention="dgm-eval",
        convention_names=_CONVENTION_NAMES,
        input_contract="RGB 224x224 (any multiple of 14 works), x / 255 then ImageNet mean/std",
        reference="Oquab et al. 2023 (DINOv2), facebookresearch/dinov2 hub backbone "
                  f"dinov2_{compact}; FD-DINOv2: Stein et al. 2023 (dgm-eval)",
        options={"architecture": architecture, "patch_size": 14, **shape},
    ))


DINOV2_VIT_S = _entry("s", "ViT-S", "vit_s", 384, {"embed_dim": 384, "depth": 12, "num_heads": 6, "ffn": "mlp"})
DINOV2_VIT_B = _entry("b", "ViT-B", "vit_b", 768, {"embed_dim": 768, "depth": 12, "num_heads": 12, "ffn": "mlp"})
DINOV2_VIT_L = _entry("l", "ViT-L", "vit_l", 1024, {"embed_dim": 1024, "depth": 24, "num_heads": 16, "ffn": "mlp"})
DINOV2_VIT_G = _entry("g", "ViT-g", "vit_g", 1536, {"embed_dim": 1536, "depth": 40, "num_heads": 24,
                                                     "ffn": "swiglu"})
