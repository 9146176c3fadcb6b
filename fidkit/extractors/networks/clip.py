"""OpenAI CLIP's image encoder (the ViT variants), with the parameter names of OpenAI's files.

The released checkpoints (``ViT-B-32.pt``, ``ViT-L-14.pt``, ``ViT-L-14-336px.pt``) hold the whole
CLIP model; the image tower is everything under ``visual.``. :class:`CLIPImageEncoder` keeps that
prefix, so ``visual.*`` entries load without renaming:

    image (N, 3, R, R), normalised with CLIP's mean/std
      conv1 (patch x patch, stride patch, no bias)      -> (N, width, R/patch, R/patch)
      flatten, prepend class_embedding, + positional_embedding, ln_pre  -> (N, 1 + grid², width)
      transformer.resblocks[i]: x + attn(ln_1(x)); x + mlp(ln_2(x)), QuickGELU in the MLP
      ln_post on the class token, then @ proj          -> (N, embed_dim)   "embedding"

``embedding`` is what clean-fid's CLIP-FID and torch-fidelity's ``clip-*`` extractors take as
features: the projection output, NOT normalised. CMMD's reference (google-research ``cmmd``, via
scenic's ``CLIP.encode_image(normalize=True)``) divides it by its L2 norm; that is the second
output, ``embedding_normalized`` (same dimension, so an extra output rather than a tap).

The official files store the convolution, linear, attention and ``proj`` weights in float16 and
the layer norms and embeddings in float32 (OpenAI's ``convert_weights``); every tool that uses
them for features (the ``clip`` package on the CPU, torch-fidelity, open_clip in fp32) computes in
float32 from those values, and so does this network: :meth:`CLIPImageEncoder.load_weights` casts.

The attention is ``torch.nn.MultiheadAttention`` called exactly as OpenAI's code calls it (sequence
first, ``need_weights=False``), so the arithmetic is the reference's. The module is scriptable
(``torch.jit.script``), which :func:`fidkit.extractors.clip` uses to write test archives.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from fidkit.errors import UsageError, WeightsError
from fidkit.extractors.networks.torch_files import key_mismatch

#: Names of every output the network can give.
OUTPUTS: tuple[str, ...] = ("embedding", "embedding_normalized")


@dataclass(frozen=True)
class VisionConfig:
    """Shape of a CLIP ViT image tower: input side ``resolution`` (pixels), ``patch`` side
    (pixels), transformer ``width``, ``layers`` and ``heads`` (width // 64 in every OpenAI model),
    and the projected embedding size ``embed_dim``."""

    resolution: int
    patch: int
    width: int
    layers: int
    heads: int
    embed_dim: int

    @property
    def grid(self) -> int:
        return self.resolution // self.patch


#: The three OpenAI ViT image towers fidkit registers (from OpenAI's model.py / the files' shapes).
VIT_B_32 = VisionConfig(resolution=224, patch=32, width=768, layers=12, heads=12, embed_dim=512)
VIT_L_14 = VisionConfig(resolution=224, patch=14, width=1024, layers=24, heads=16, embed_dim=768)
VIT_L_14_336 = VisionConfig(resolution=336, patch=14, width=1024, layers=24, heads=16, embed_dim=768)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (not nn.GELU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.
    Sequence-first layout (L, N, D), as OpenAI's code runs it."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks in ``resblocks`` (the file's key names)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """CLIP's ViT image tower: (N, 3, R, R) normalised image -> (N, embed_dim) embedding."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        c = config
        self.conv1 = nn.Conv2d(3, c.width, kernel_size=c.patch, stride=c.patch, bias=False)
        scale = c.width ** -0.5  # OpenAI's initialisation scale; weights files overwrite it
        self.class_embedding = nn.Parameter(scale * torch.randn(c.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(c.grid ** 2 + 1, c.width))
        self.ln_pre = nn.LayerNorm(c.width)
        self.transformer = Transformer(c.width, c.layers, c.heads)
        self.ln_post = nn.LayerNorm(c.width)
        self.proj = nn.Parameter(scale * torch.randn(c.width, c.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # N x width x grid x grid
        x = x.flatten(2).permute(0, 2, 1)  # N x grid² x width
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1],
                                                             dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1)  # N x (1 + grid²) x width
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2))  # (1 + grid²) x N x width
        x = self.ln_post(x[0])  # the class token: N x width
        return x @ self.proj  # N x embed_dim


class CLIPImageEncoder(nn.Module):
    """The image tower under ``visual`` (the files' prefix); forward returns
    ``{name: (N, embed_dim) float32}`` for each name in ``outputs`` (see :data:`OUTPUTS`).

    Input: float32 (N, 3, R, R), R = ``config.resolution``, normalised per channel with CLIP's
    mean (0.48145466, 0.4578275, 0.40821073) and std (0.26862954, 0.26130258, 0.27577711) on the
    0..1 scale (the conventions of :mod:`fidkit.extractors.clip` do this). Other sizes are refused:
    the positional embedding is fixed to the training grid."""

    def __init__(self, config: VisionConfig, outputs: tuple[str, ...] = ("embedding",)) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config)
        self.outputs = check_outputs(outputs)
        self.eval()

    def train(self, mode: bool = True) -> "CLIPImageEncoder":
        # A feature extractor has no training mode (no dropout or batch norm), but keep eval
        # pinned so that nobody gets surprised by a module flag.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.config.resolution
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2] != size or x.shape[-1] != size:
            raise UsageError(f"the CLIP image encoder takes (N, 3, {size}, {size}) input, got "
                             f"{tuple(x.shape)}; prepare images with one of its conventions")
        embedding = self.visual(x)
        result: dict[str, torch.Tensor] = {}
        for name in self.outputs:
            if name == "embedding":
                result[name] = embedding
            elif name == "embedding_normalized":  # CMMD's reference: x / ||x||_2, float32
                result[name] = embedding / embedding.norm(dim=-1, keepdim=True)
            else:
                check_outputs((name,))  # raises UsageError naming the choices
        return result

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load the ``visual.*`` entries of an OpenAI CLIP state dict (other entries, the text
        tower, are ignored), casting float16 entries to float32. Raises WeightsError naming
        ``source`` when an entry is missing, has another shape, or the file is another model."""
        own = self.state_dict()
        fix = "use the OpenAI CLIP file of this model (see 'fidkit features list')"
        visual = {k: v for k, v in state.items() if isinstance(k, str) and k.startswith("visual.")}
        if not visual:
            raise WeightsError(f"{source} holds no 'visual.*' entries, so it is not an OpenAI CLIP "
                               f"checkpoint; {fix}")
        if "visual.proj" not in visual:
            raise WeightsError(f"{source} is a CLIP ResNet (no visual.proj), not a ViT; {fix}")
        what = key_mismatch(set(own) - set(visual), set(visual) - set(own))
        if what:
            raise WeightsError(f"{source} is not the CLIP {describe(self.config)} image tower: "
                               f"{what}; {fix}")
        for key, tensor in visual.items():
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(own[key].shape):
                shape = tuple(getattr(tensor, "shape", ()))
                raise WeightsError(f"{source}: {key} has shape {shape}, expected "
                                   f"{tuple(own[key].shape)}; it is not the CLIP "
                                   f"{describe(self.config)} image tower; {fix}")
            if not tensor.is_floating_point():
                raise WeightsError(f"{source}: {key} is {tensor.dtype}, not floating point; {fix}")
        with torch.no_grad():
            for key, tensor in visual.items():
                own[key].copy_(tensor.to(torch.float32))


def check_outputs(outputs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The output names, validated against :data:`OUTPUTS` (UsageError otherwise)."""
    result = tuple(str(o) for o in outputs)
    for name in result:
        if name not in OUTPUTS:
            raise UsageError(f"unknown CLIP output {name!r}; choose from {', '.join(OUTPUTS)}")
    if not result:
        raise UsageError("ask the CLIP image encoder for at least one output")
    return result


def describe(config: VisionConfig) -> str:
    """OpenAI's name of the model, e.g. ``ViT-L/14@336px``."""
    name = f"ViT-{'B' if config.width == 768 else 'L' if config.width == 1024 else config.width}/{config.patch}"
    return name + (f"@{config.resolution}px" if config.resolution != 224 else "")


def config_from_state(state: dict[str, torch.Tensor]) -> VisionConfig:
    """The image tower's shape read off an OpenAI CLIP state dict (as OpenAI's build_model does).
    Raises WeightsError when the ``visual.*`` entries it needs are absent."""
    try:
        conv = state["visual.conv1.weight"]
        pos = state["visual.positional_embedding"]
        proj = state["visual.proj"]
    except KeyError as exc:
        raise WeightsError(f"not an OpenAI CLIP ViT checkpoint: no {exc.args[0]} entry") from None
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((int(pos.shape[0]) - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in state
                  if k.startswith("visual.transformer.resblocks.") and k.endswith(".attn.in_proj_weight")})
    return VisionConfig(resolution=patch * grid, patch=patch, width=width, layers=layers,
                        heads=max(1, width // 64), embed_dim=int(proj.shape[1]))


# -- test archives ---------------------------------------------------------------------------------


class _CLIPArchiveModel(nn.Module):
    """A whole CLIP with OpenAI's attribute names, to be scripted into a test archive: the image
    tower, a text tower (``transformer``, ``token_embedding``, ``positional_embedding``,
    ``ln_final``, ``text_projection``), ``logit_scale`` and the three scalar buffers the official
    files carry. Its forward is ``encode_image``; nobody runs it, the archive is read for tensors."""

    def __init__(self, config: VisionConfig, text_width: int, text_layers: int, vocab_size: int,
                 context_length: int) -> None:
        super().__init__()
        self.visual = VisionTransformer(config)
        self.transformer = Transformer(text_width, text_layers, max(1, text_width // 64))
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.zeros(text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))
        self.register_buffer("input_resolution", torch.tensor(config.resolution))
        self.register_buffer("context_length", torch.tensor(context_length))
        self.register_buffer("vocab_size", torch.tensor(vocab_size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image.to(self.visual.conv1.weight.dtype))


def _randomise(model: _CLIPArchiveModel, config: VisionConfig, seed: int) -> None:
    """Deterministic random values whose scales make the embedding vary clearly between images:
    patch embeddings of unit variance (conv1 std 1/sqrt(fan-in)), small positional embeddings,
    sharp attention (below), residual branches scaled by 1/sqrt(2 layers) so that no block
    drowns the others, layer-norm gains 1 +- 0.1."""
    g = torch.Generator().manual_seed(seed)
    branch = (2 * config.layers) ** -0.5
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p.shape[-1] if p.dim() >= 2 else max(1, p.numel())
            if name.endswith("conv1.weight"):
                fan_in = p[0].numel()
            if ".ln_" in name or name.startswith("ln_") or "ln_final" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif name.endswith(("out_proj.weight", "c_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * fan_in ** -0.5 * branch)
            elif name.endswith(("class_embedding",)):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith("positional_embedding"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "logit_scale":
                p.fill_(4.6052)  # log(100), the trained value's order
            else:
                p.copy_(torch.randn(p.shape, generator=g) * fan_in ** -0.5)
            if name.endswith("attn.in_proj_weight"):
                # Queries and keys twice as large: attention logits spread ~4, so the class token
                # attends selectively and its embedding follows the image (~40 % spread across
                # images relative to the mean, against ~20 % with the plain 1/sqrt(width) scale).
                p[: 2 * p.shape[1]].mul_(2.0)


def _official_dtypes(model: nn.Module) -> None:
    """OpenAI's ``convert_weights``: convolution, linear and attention weights and biases and the
    ``proj`` / ``text_projection`` matrices to float16; layer norms, embeddings, logit scale stay
    float32. (The official file sizes match this split to within the archive's overhead.)"""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.data = module.weight.data.half()
            if module.bias is not None:
                module.bias.data = module.bias.data.half()
        if isinstance(module, nn.MultiheadAttention):
            module.in_proj_weight.data = module.in_proj_weight.data.half()
            module.in_proj_bias.data = module.in_proj_bias.data.half()
        for attr in ("proj", "text_projection"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.half()


def write_test_archive(path, config: VisionConfig, seed: int = 0, *, text_width: int = 64,
                       text_layers: int = 1, vocab_size: int = 64, context_length: int = 77) -> None:
    """Write (atomically) a TorchScript archive of a random CLIP with the official layout: the
    image tower of ``config`` and a text tower of the given (small) shape. Deterministic in
    ``seed`` (same tensors; the archive bytes also record the scripting torch version)."""
    import warnings

    from fidkit.fileio import atomic_writer

    with torch.device("cpu"):
        model = _CLIPArchiveModel(config, text_width, text_layers, vocab_size, context_length)
    _randomise(model, config, seed)
    _official_dtypes(model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        scripted = torch.jit.script(model)
        with atomic_writer(path) as handle:
            torch.jit.save(scripted, handle)
