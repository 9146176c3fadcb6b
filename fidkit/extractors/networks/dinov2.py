"""The DINOv2 vision transformers (Oquab et al. 2023), as the official code builds them for the
released backbones (``facebookresearch/dinov2``, ``dinov2/models/vision_transformer.py`` with the
``dinov2/hub/backbones.py`` settings) that dgm-eval, EDM2 and torch-fidelity load with
``torch.hub.load("facebookresearch/dinov2", "dinov2_vit{s,b,l,g}14")``.

Settings of the released backbones: patch 14, trained at 518x518 (a 37x37 grid of position
embeddings), LayerScale on both residual branches, LayerNorm eps 1e-6, biases everywhere, no
register tokens, exact (erf) GELU; ViT-g uses the SwiGLU feed-forward instead of the GELU MLP.
The state-dict keys are the official ones, unchanged (``cls_token``, ``pos_embed``,
``mask_token``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2 | mlp.w12,mlp.w3,ls2.gamma}.*``, ``norm.*``), so the published ``.pth`` files
load as they are.

The feature is the class token after the final LayerNorm (the official ``x_norm_clstoken``, what
the official ``forward`` returns through its identity head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fidkit.errors import InputError

#: The tap name of the final-norm class token.
CLS_TAP = "cls"


@dataclass(frozen=True)
class DinoV2Architecture:
    """The shape of one DINOv2 backbone. ``ffn`` is ``"mlp"`` (GELU MLP, ratio 4) or
    ``"swiglu"`` (the official ``SwiGLUFFNFused``: packed ``w12`` then ``w3``)."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"
    patch_size: int = 14
    train_size: int = 518  # the position embeddings cover train_size // patch_size squared
    mlp_ratio: float = 4.0
    #: The official "historical kludge" (facebookresearch/dino#8): the bicubic resampling of the
    #: position embeddings is asked for with scale factor (new + 0.1) / old, not an output size.
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    @property
    def grid(self) -> int:
        return self.train_size // self.patch_size

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the feed-forward: 4 x dim for the MLP; for SwiGLU the official
        ``(int(4 dim * 2 / 3) + 7) // 8 * 8`` (4096 for ViT-g's 1536)."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden


#: The four released backbones (``dinov2/models/vision_transformer.py``: vit_small, vit_base,
#: vit_large, vit_giant2; ``hub/backbones.py``: ViT-g with ``ffn_layer="swiglufused"``).
ARCHITECTURES: dict[str, DinoV2Architecture] = {
    "vit_s": DinoV2Architecture(embed_dim=384, depth=12, num_heads=6),
    "vit_b": DinoV2Architecture(embed_dim=768, depth=12, num_heads=12),
    "vit_l": DinoV2Architecture(embed_dim=1024, depth=24, num_heads=16),
    "vit_g": DinoV2Architecture(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}


def state_dict_shapes(arch: DinoV2Architecture) -> dict[str, tuple[int, ...]]:
    """Every key of the official state dict of ``arch`` and its shape, in the official order."""
    d, h, g, p = arch.embed_dim, arch.ffn_hidden, arch.grid, arch.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + g * g, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
    }
    if arch.ffn == "swiglu":
        ffn = {"mlp.w12.weight": (2 * h, d), "mlp.w12.bias": (2 * h,),
               "mlp.w3.weight": (d, h), "mlp.w3.bias": (d,)}
    else:
        ffn = {"mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,),
               "mlp.fc2.weight": (d, h), "mlp.fc2.bias": (d,)}
    for i in range(arch.depth):
        block = {"norm1.weight": (d,), "norm1.bias": (d,),
                 "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
                 "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
                 "ls1.gamma": (d,),
                 "norm2.weight": (d,), "norm2.bias": (d,),
                 **ffn,
                 "ls2.gamma": (d,)}
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int, *,
                          offset: float = 0.1, antialias: bool = False) -> torch.Tensor:
    """The position embeddings for a ``grid_h`` x ``grid_w`` patch grid, the official way.

    pos_embed: (1, 1 + M*M, D), class position first, then an M x M grid (row-major). Returns
    (1, 1 + grid_h*grid_w, D) in pos_embed's dtype; unchanged when the grid is M x M.

    The official code resamples the M x M grid bicubically (A = -0.75, half-pixel centres, border
    clamped, no antialias) and, for the released backbones, passes a scale factor
    ``(grid + 0.1) / M`` rather than the output size. torch then maps output pixel i to input
    coordinate ``(i + 0.5) * M / (grid + 0.1) - 0.5`` instead of ``(i + 0.5) * M / grid - 0.5``: a
    different, slightly narrower sampling than resampling to a size (which transformers and timm
    do; at 224 px their embeddings differ from the official ones by ~2e-3 relative).
    """
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
    if grid_h == m and grid_w == m:
        return pos_embed
    dim = pos_embed.shape[-1]
    dtype = pos_embed.dtype
    pos = pos_embed.float()
    # The official order of operations, kept so that the bits match: an (M, M, D) view permuted
    # to channels-first (not made contiguous), resampled, permuted back.
    grid = pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = (float(grid_h + offset) / m, float(grid_w + offset) / m)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=antialias)
    if tuple(grid.shape[-2:]) != (grid_h, grid_w):  # pragma: no cover - torch's rounding changed
        raise RuntimeError(f"position-embedding resampling gave {tuple(grid.shape[-2:])}, "
                           f"not {(grid_h, grid_w)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((pos[:, :1], grid), dim=1).to(dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch convolution: (N, 3, H, W) -> (N, H/p * W/p, D), row-major."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one packed qkv projection (q, k, v blocks in that order)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # each N x heads x T x head_dim
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(x.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (ViT-S/B/L)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """The official ``SwiGLUFFNFused`` (ViT-g): ``w12`` packs the gate (first half, through SiLU)
    and the value (second half); ``w3`` projects back."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (``gamma``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then + ls2(ffn(norm2(x)))."""

    def __init__(self, arch: DinoV2Architecture) -> None:
        super().__init__()
        dim = arch.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, arch.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, arch.ffn_hidden) if arch.ffn == "swiglu" else Mlp(dim, arch.ffn_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    """A DINOv2 backbone; ``forward`` maps the network input (float32 (N, 3, H, W), ImageNet-
    normalised, H and W multiples of 14) to ``{"cls": (N, D) float32}``, the final-norm class
    token. Any multiple-of-14 size works (the position embeddings are resampled the official way);
    the released models were trained at 518 and are used at 224 by the FD-DINOv2 tools."""

    def __init__(self, arch: DinoV2Architecture, outputs: tuple[str, ...] = (CLS_TAP,)) -> None:
        super().__init__()
        self.arch = arch
        self.outputs = tuple(outputs)
        d = arch.embed_dim
        # Registration order gives the official state-dict order (own parameters, then children).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + arch.grid * arch.grid, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # training only; kept so keys match
        self.patch_embed = PatchEmbed(arch.patch_size, d)
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with the class token in front and position embeddings added:
        (N, 3, H, W) -> (N, 1 + H/14 * W/14, D)."""
        n, _, h, w = x.shape
        p = self.arch.patch_size
        if h % p or w % p:
            raise InputError(f"DINOv2 input is {h}x{w}; height and width must be multiples of {p} "
                             "(use one of the extractor's conventions to resize)")
        x = self.patch_embed(x)  # N x (H/14 * W/14) x D
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        pos = interpolate_pos_embed(self.pos_embed, h // p, w // p,
                                    offset=self.arch.interpolate_offset,
                                    antialias=self.arch.interpolate_antialias)
        return x + pos

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.tokens(x)  # N x T x D
        for block in self.blocks:
            x = block(x)
        cls = self.norm(x[:, 0])  # LayerNorm is per token: norm(x)[:, 0] == norm(x[:, 0])
        return {name: cls.float() for name in self.outputs}


def remap_official_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official keys from a chunked (FSDP) checkpoint: ``blocks.C.I.*`` -> ``blocks.I.*``.

    The training code can wrap the blocks in chunks padded with identities so that I stays the
    global block index; the released backbones are saved flat, and pass through unchanged."""
    import re

    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.(.+)$")
    if not any(chunked.match(k) for k in state):
        return state
    return {(f"blocks.{m.group(1)}.{m.group(2)}" if (m := chunked.match(k)) else k): v
            for k, v in state.items()}
