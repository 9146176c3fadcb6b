"""Batch-norm calibration for test weights: random weights whose features have a real spread.

With random convolutions and batch norm at its initial running statistics (mean 0, variance 1),
activations grow or vanish layer by layer and the pooled features of different inputs come out
nearly equal, so a parity test on them would prove little. One pass over a small synthetic batch
with every batch norm in training mode sets each layer's running statistics to its activations'
own, which keeps every layer near unit scale and the features spread across inputs.
"""
from __future__ import annotations

import torch
from torch import nn


def calibrate_batch_norm(model: nn.Module, x: torch.Tensor) -> None:
    """Set the running mean and variance of every batch norm of ``model`` to those of its inputs
    when ``model(x)`` runs (one pass, cumulative average), then put them back in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: the statistics of this one batch
        bn.training = True  # bypasses the network's eval pin for this pass only
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.training = False
        bn.momentum = 0.1
        bn.num_batches_tracked.zero_()
