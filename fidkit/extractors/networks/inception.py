"""The FID Inception v3: the TF 2015-12-05 graph as pytorch-fid and torch-fidelity port it.

The layer names follow torchvision's ``Inception3`` so that the canonical weights file
(``pt_inception-2015-12-05-6726825d.pth``) loads as it is. Where the TF graph differs from
torchvision's network the difference is patched and commented in place:

* average pools inside the blocks do not count padding (TF's ``AVG`` pooling);
* the last block (``Mixed_7c``) pools its side branch with a max pool, a bug in the TF graph that
  every FID number ever published includes;
* the classifier has 1008 outputs, and ``logits_unbiased`` is the classifier without its bias
  (torch-fidelity's Inception Score convention).

The network takes input that is already resized to 299x299 and normalised to about [-1, 1]
(see :mod:`fidkit.preprocess`); it never resizes on its own.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fidkit.defaults import LOGITS_DIM, TAP_DIMS
from fidkit.errors import UsageError, WeightsError
from fidkit.extractors.networks.torch_files import key_mismatch

#: Names of every output the network can give.
OUTPUTS: tuple[str, ...] = ("64", "192", "768", "2048", "logits", "logits_unbiased")


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TF's epsilon 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU in place: one activation buffer per layer instead of two (bit-identical; neither
        # the convolution's nor batch norm's backward needs the tensor it overwrites). On the CPU
        # this was 8 % of the forward and half of the page faults (benchmarks/RESULTS.md).
        return torch.relu_(self.bn(self.conv(x)))


class Concat(nn.Module):
    """Channel concatenation of a block's branches. A module (no parameters) rather than a call,
    so that a faster copy of the network can swap it (:mod:`inception_blocked` does)."""

    def forward(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), 1)


class GlobalAvgPool(nn.Module):
    """Spatial mean: (N, C, H, W) -> (N, C). A module so that a faster copy can swap it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.concat = Concat()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg_pool_3x3(x))
        return self.concat([a, b, c, d])


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.concat = Concat()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return self.concat([a, b, c])


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.concat = Concat()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(_avg_pool_3x3(x))
        return self.concat([a, b, c, d])


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.concat = Concat()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        c = F.max_pool2d(x, kernel_size=3, stride=2)
        return self.concat([a, b, c])


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool_branch: bool) -> None:
        super().__init__()
        self.concat = Concat()
        self.max_pool_branch = max_pool_branch
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = self.concat([self.branch3x3_2a(b), self.branch3x3_2b(b)])
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = self.concat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)])
        if self.max_pool_branch:
            # The TF graph's Mixed_7c pools with max, not average (kept for FID compatibility).
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3(x)
        d = self.branch_pool(pooled)
        return self.concat([a, b, c, d])




class FIDInceptionV3(nn.Module):
    """FID Inception v3 returning any of the taps ``64``, ``192``, ``768``, ``2048``, ``logits``,
    ``logits_unbiased``.

    ``forward(x)`` takes float32 ``(N, 3, 299, 299)`` input normalised by a convention of
    :mod:`fidkit.preprocess` and returns a dict of ``(N, D)`` tensors: the 64/192/768/2048 taps are
    the spatial means of the block outputs (2048 is pool_3), the logits have 1008 entries.
    The module is pinned to eval mode: ``train()`` is a no-op, so the batch-norm statistics are
    the file's whatever the caller does to its own modules.
    """

    def __init__(self, outputs: Iterable[str] = ("2048",)) -> None:
        super().__init__()
        self.outputs = _check_outputs(outputs)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool_branch=False)
        self.Mixed_7c = InceptionE(2048, max_pool_branch=True)
        self.global_pool = GlobalAvgPool()
        self.fc = nn.Linear(2048, LOGITS_DIM)
        super().train(False)

    def train(self, mode: bool = True) -> "FIDInceptionV3":
        # Batch-norm running statistics are part of the metric's definition.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        want = self.outputs
        out: dict[str, torch.Tensor] = {}
        # N x 3 x 299 x 299
        x = self.Conv2d_1a_3x3(x)  # N x 32 x 149 x 149
        x = self.Conv2d_2a_3x3(x)  # N x 32 x 147 x 147
        x = self.Conv2d_2b_3x3(x)  # N x 64 x 147 x 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # N x 64 x 73 x 73
        if "64" in want:
            out["64"] = self.global_pool(x)
        if not _needs_beyond(want, "64"):
            return out
        x = self.Conv2d_3b_1x1(x)  # N x 80 x 73 x 73
        x = self.Conv2d_4a_3x3(x)  # N x 192 x 71 x 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # N x 192 x 35 x 35
        if "192" in want:
            out["192"] = self.global_pool(x)
        if not _needs_beyond(want, "192"):
            return out
        x = self.Mixed_5b(x)  # N x 256 x 35 x 35
        x = self.Mixed_5c(x)  # N x 288 x 35 x 35
        x = self.Mixed_5d(x)  # N x 288 x 35 x 35
        x = self.Mixed_6a(x)  # N x 768 x 17 x 17
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)  # N x 768 x 17 x 17
        if "768" in want:
            out["768"] = self.global_pool(x)
        if not _needs_beyond(want, "768"):
            return out
        x = self.Mixed_7a(x)  # N x 1280 x 8 x 8
        x = self.Mixed_7b(x)  # N x 2048 x 8 x 8
        x = self.Mixed_7c(x)  # N x 2048 x 8 x 8
        pool3 = self.global_pool(x)  # N x 2048
        if "2048" in want:
            out["2048"] = pool3
        if "logits_unbiased" in want:
            out["logits_unbiased"] = pool3 @ self.fc.weight.T  # N x 1008
        if "logits" in want:
            out["logits"] = self.fc(pool3)  # N x 1008
        return out

    def load_weights(self, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load a state dict with the canonical key names; raise :class:`WeightsError` if the
        file is of another architecture."""
        own = {k: v for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}
        # The canonical file predates BatchNorm's num_batches_tracked; torch fills it in.
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        what = key_mismatch(set(own) - set(state_dict), set(state_dict) - set(own))
        if what:
            raise WeightsError(
                f"{source} is not an FID Inception v3 state dict: {what}; use the "
                "canonical pt_inception-2015-12-05-6726825d.pth file"
            )
        for key, tensor in state_dict.items():
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(own[key].shape):
                shape = tuple(getattr(tensor, "shape", ()))
                raise WeightsError(
                    f"{source}: {key} has shape {shape}, expected {tuple(own[key].shape)}; "
                    "the file is not an FID Inception v3 state dict"
                )
        self.load_state_dict(state_dict, strict=False)


_ORDER = {"64": 0, "192": 1, "768": 2, "2048": 3, "logits": 3, "logits_unbiased": 3}


def _needs_beyond(want: Sequence[str], tap: str) -> bool:
    return any(_ORDER[w] > _ORDER[tap] for w in want)


def _check_outputs(outputs: Iterable[str]) -> tuple[str, ...]:
    result = tuple(str(o) for o in outputs)
    for name in result:
        if name not in OUTPUTS:
            raise UsageError(f"unknown Inception output {name!r}; choose from {', '.join(OUTPUTS)}")
    if not result:
        raise UsageError("ask the Inception network for at least one output")
    return result


def tap_name(dims: int) -> str:
    """The output name for a feature dimension (64, 192, 768 or 2048)."""
    if dims not in TAP_DIMS:
        raise UsageError(f"dims={dims} (--dims {dims}) is not an FID Inception tap; choose from "
                         f"{', '.join(map(str, TAP_DIMS))}")
    return str(dims)
