"""KID and Inception Score for ``fidkit compare --metrics fid,kid,is``: one network pass per side
gives the statistics (FID), the per-image features (KID) and, for A, the logits (IS)."""
from __future__ import annotations

import argparse
from typing import Any


def compute_extra(args: argparse.Namespace, metrics: list[str],
                  kwargs: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Statistics of both sides plus ``{"kid": {...}, "is": {...}}`` for the metrics asked.

    A is the generated side (the only one IS looks at); KID needs both sides as images. KID uses
    subsets of min(1000, N_A, N_B) samples, 100 subsets, seed 2020; IS 10 splits, seed 2020
    (torch-fidelity's defaults and draws). Raises what :func:`fidkit.compute_statistics` raises.
    """
    from fidkit.api import as_statistics, compute_statistics

    want_kid = "kid" in metrics
    keep_a = want_kid or args.ci is not None or args.fid_inf
    sa = compute_statistics(args.a, keep_features=keep_a,
                            keep_outputs=("logits_unbiased",) if "is" in metrics else (),
                            manifest=args.manifest, **kwargs)
    sb = as_statistics(args.b, keep_features=want_kid, **kwargs)
    extra: dict[str, Any] = {}
    if want_kid:
        from fidkit.distances.kid import DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, kid

        size = min(DEFAULT_SUBSET_SIZE, sa.n, sb.n)
        result = kid(sa.features, sb.features, subset_size=size, subsets=DEFAULT_SUBSETS)
        extra["kid"] = {**result.to_dict(), "subset_size": size, "subsets": DEFAULT_SUBSETS}
    if "is" in metrics:
        from fidkit.distances.inception_score import DEFAULT_SPLITS, inception_score

        splits = min(DEFAULT_SPLITS, sa.n)
        result = inception_score(sa.outputs["logits_unbiased"], splits=splits)
        extra["is"] = {**result.to_dict(), "splits": splits}
    return sa, sb, extra
