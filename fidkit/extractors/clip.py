"""Registry entries of OpenAI CLIP's image encoders: ``clip-vit-b-32`` (512 features),
``clip-vit-l-14`` and ``clip-vit-l-14-336px`` (768 features).

Features are the image embedding (``ln_post`` of the class token, times ``proj``), un-normalised,
as clean-fid's CLIP-FID and torch-fidelity's ``clip-*`` extractors use them; the extra output
``embedding_normalized`` is the same vector divided by its L2 norm, as CMMD's reference uses it.
Conventions: :mod:`fidkit.preprocess.clip` (default ``clean-fid``: OpenAI's own preprocessing,
which is also clean-fid's CLIP-FID; ``torch-fidelity``; ``cmmd``). The network is
:mod:`fidkit.extractors.networks.clip`.

Weights: OpenAI's published checkpoints, the URLs of ``clip.clip._MODELS`` in github.com/openai/CLIP
(also used by torch-fidelity, clean-fid through ``clip``, open_clip and scenic). Each URL contains
the file's SHA-256, which the ``clip`` package checks after download. The byte sizes are not
published by OpenAI; the ones below are the sizes recorded by several independent projects that
download these files (e.g. a download log ``353976522/353976522`` and manifests pairing size and
SHA-256); a wrong size would only make the download check fail, never accept a wrong file.

Reading the weights: the official files are TorchScript archives (``torch.jit.save`` of the traced
model). ``torch.load(weights_only=True)`` refuses TorchScript archives and ``torch.jit.load`` would
compile and may run code from the file, so :meth:`CLIPExtractor.read_weights` uses
:func:`~fidkit.extractors.networks.torchscript_archive.read_torchscript_tensors`, which unpickles
only the module tree's ``data.pkl`` with an allow-list that rebuilds tensors and nothing else.
A plain state-dict file with the same keys (``torch.save(model.state_dict())``, e.g. open_clip's
copy of the OpenAI weights) is read with ``torch.load(weights_only=True)``.

Test weights: :meth:`CLIPExtractor.make_test_weights` writes a TorchScript archive like the official
one (``torch.jit.script`` of a CLIP with the official ``visual.*`` and text-tower key names, the
official dtypes: float16 convolution / linear / attention / projection weights, float32 layer norms
and embeddings, and the ``input_resolution``/``context_length``/``vocab_size`` buffers), so
torch-fidelity (``torch.jit.load``) and the ``clip`` package read the same file as fidkit. The
image tower has the official shapes; the text tower, which no image feature touches, is one block
of width 64 with a 64-token vocabulary (the official files have 12 blocks and 49408 tokens), which
keeps the ViT-B/32 test file at 176 MB instead of 354 MB.
"""
from __future__ import annotations

from typing import Any

from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor, WeightsFile

_CDN = "https://openaipublic.azureedge.net/clip/models"
# github.com/openai/CLIP's LICENSE (MIT), the repository that publishes the weights; its model
# card scopes the intended use to research.
_LICENCE = "MIT"

# TODO(verify): sizes in bytes are from third-party download records, not published by OpenAI
# (the SHA-256 in each URL is OpenAI's).
WEIGHTS_VIT_B_32 = WeightsFile(
    filename="clip-ViT-B-32-40d36571.pt",
    sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    size=353_976_522,
    urls=(f"{_CDN}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",),
    licence=_LICENCE,
)
WEIGHTS_VIT_L_14 = WeightsFile(
    filename="clip-ViT-L-14-b8cca3fd.pt",
    sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    size=932_768_134,
    urls=(f"{_CDN}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",),
    licence=_LICENCE,
)
WEIGHTS_VIT_L_14_336 = WeightsFile(
    filename="clip-ViT-L-14-336px-3035c92b.pt",
    sha256="3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
    size=934_088_680,
    urls=(f"{_CDN}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",),
    licence=_LICENCE,
)

#: Test archives' text tower (see the module docstring): width, blocks, vocabulary, context.
_TEST_TEXT = {"text_width": 64, "text_layers": 1, "vocab_size": 64, "context_length": 77}


class CLIPExtractor(Extractor):
    """OpenAI CLIP's ViT image encoder (:class:`~fidkit.extractors.networks.clip.CLIPImageEncoder`).
    ``options`` holds the image tower's shape (``resolution``, ``patch``, ``width``, ``layers``,
    ``heads``, ``embed_dim``)."""

    def _config(self) -> Any:
        from fidkit.extractors.networks.clip import VisionConfig

        o = self.options
        return VisionConfig(resolution=o["resolution"], patch=o["patch"], width=o["width"],
                            layers=o["layers"], heads=o["heads"], embed_dim=o["embed_dim"])

    def conventions(self) -> dict[str, Convention]:
        from fidkit.preprocess.clip import conventions

        return conventions(int(self.options["resolution"]))

    def read_weights(self, path: Any) -> dict:
        """The tensors of an official CLIP TorchScript archive, or of a plain state-dict file with
        the same keys; no code from the file runs. Raises WeightsError naming the file."""
        import pickle
        from pathlib import Path

        import torch

        from fidkit.errors import WeightsError
        from fidkit.extractors.networks.torchscript_archive import (
            ArchiveError, is_torchscript_archive, read_torchscript_tensors)

        p = Path(path)
        fix = f"use OpenAI's {self.weights.urls[0].rsplit('/', 1)[-1] if self.weights else 'CLIP'} file"
        if not p.is_file():
            raise WeightsError(f"weights file {p} does not exist; {fix}")
        if is_torchscript_archive(p):
            try:
                state = read_torchscript_tensors(p)
            except ArchiveError as exc:
                raise WeightsError(f"{p} is not a readable CLIP TorchScript archive ({exc}); "
                                   f"{fix}") from None
        else:
            try:
                state = torch.load(p, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
                    AttributeError, KeyError, TypeError) as exc:
                msg = " ".join(str(exc).split())[:160]
                raise WeightsError(f"{p} is neither a CLIP TorchScript archive nor a loadable "
                                   f"PyTorch state dict ({msg}); {fix}") from None
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
            if not isinstance(state, dict) or not all(
                    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
                raise WeightsError(f"{p} does not hold a state dict of named tensors; {fix}")
        if not any(k.startswith("visual.") for k in state):
            raise WeightsError(f"{p} holds no 'visual.*' tensors, so it is not an OpenAI CLIP "
                               f"checkpoint; {fix}")
        return state

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.clip import CLIPImageEncoder

        model = CLIPImageEncoder(self._config(), outputs=tuple(outputs))
        model.load_weights(state, source="the weights file")
        return model

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        """Write a deterministic random CLIP TorchScript archive with the official layout (see the
        module docstring). Scales are chosen so that embeddings differ clearly between images."""
        from fidkit.extractors.networks.clip import write_test_archive

        write_test_archive(path, self._config(), seed=seed, **_TEST_TEXT)


def _entry(name: str, description: str, weights: WeightsFile, *, resolution: int, patch: int,
           width: int, layers: int, embed_dim: int) -> CLIPExtractor:
    return CLIPExtractor(
        name=name,
        description=description,
        weights=weights,
        taps={"embedding": embed_dim},
        default_dims=embed_dim,
        default_convention="clean-fid",
        convention_names=("clean-fid", "torch-fidelity", "cmmd"),
        input_contract=(f"RGB {resolution}x{resolution}, (x/255 - CLIP mean) / CLIP std "
                        "(mean 0.481,0.458,0.408; std 0.269,0.261,0.276)"),
        reference="Radford et al. 2021 (CLIP), github.com/openai/CLIP; CLIP-FID: Kynkäänniemi "
                  "et al. 2023; CMMD: Jayasumana et al. 2024",
        extra_outputs={"embedding_normalized": embed_dim},
        options={"resolution": resolution, "patch": patch, "width": width, "layers": layers,
                 "heads": width // 64, "embed_dim": embed_dim},
    )


CLIP_VIT_B_32 = register(_entry(
    "clip-vit-b-32", "OpenAI CLIP ViT-B/32 image embedding (clean-fid CLIP-FID, torch-fidelity)",
    WEIGHTS_VIT_B_32, resolution=224, patch=32, width=768, layers=12, embed_dim=512))
CLIP_VIT_L_14 = register(_entry(
    "clip-vit-l-14", "OpenAI CLIP ViT-L/14 image embedding",
    WEIGHTS_VIT_L_14, resolution=224, patch=14, width=1024, layers=24, embed_dim=768))
CLIP_VIT_L_14_336 = register(_entry(
    "clip-vit-l-14-336px", "OpenAI CLIP ViT-L/14@336px image embedding (CMMD's network)",
    WEIGHTS_VIT_L_14_336, resolution=336, patch=14, width=1024, layers=24, embed_dim=768))
