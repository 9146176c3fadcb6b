"""Streaming FID, KID and Inception Score for training loops.

One object, one Inception pass per batch, every metric asked for::

    metric = fidkit.FID(reference="ref.pkl", input_range=(-1, 1), kid=True, inception_score=True)
    for images in generated_batches:          # (N, 3, H, W) on any device
        metric.update(images)
    metric.compute()        # FID, a float
    metric.compute_all()    # {"fid": ..., "kid": MeanStd, "is": MeanStd}
    metric.reset()          # forget the generated side, keep the reference

``fidkit.KID`` and ``fidkit.InceptionScore`` are the same machine with their own ``compute()``.

Images are uint8 0..255 or float in the declared ``input_range`` ((0, 1) or (-1, 1)); a float batch
outside its range raises instead of silently skewing the score (the classic bug: tanh outputs fed as
[0, 1]). Statistics accumulate in float64 on the metric's device (memory O(d^2), flat in the number
of images; KID and IS must keep per-image features and logits, N x d float32). The network is
pinned to eval mode and runs without autograd and without TF32.

Under an initialised torch.distributed process group, ``compute()`` and ``statistics()`` are
collectives: every rank must call them; each rank's statistics are merged in rank order (and KID
features, IS logits gathered), so N ranks give the number one process gives on all the images.

Pickling and ``state_dict()`` / ``load_state_dict()`` carry the accumulated state (CPU tensors),
so a checkpointed training run resumes its metric.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from fidkit import distributed
from fidkit.errors import InputError, UsageError
from fidkit.distances.inception_score import DEFAULT_SPLITS, inception_score
from fidkit.distances.kid import DEFAULT_SEED, DEFAULT_SUBSET_SIZE, DEFAULT_SUBSETS, MeanStd, kid
from fidkit.statistics import Statistics, StatisticsAccumulator

STATE_FORMAT = "fidkit-metric-state"
STATE_VERSION = 1
_LOGITS = "logits_unbiased"


class _InceptionMetrics:
    """The shared machine behind :class:`FID`, :class:`KID` and :class:`InceptionScore`: one
    network pass per ``update`` feeds every metric switched on."""

    _defaults: dict[str, bool] = {"fid": True, "kid": False, "inception_score": False}

    def __init__(
        self,
        reference: Any = None,
        *,
        features: str | None = None,
        dims: int | None = None,
        convention: str | None = None,
        device: str | torch.device | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        weights: str | os.PathLike | None = None,
        fid: bool | None = None,
        kid: bool | None = None,
        inception_score: bool | None = None,
        kid_subset_size: int = DEFAULT_SUBSET_SIZE,
        kid_subsets: int = DEFAULT_SUBSETS,
        is_splits: int = DEFAULT_SPLITS,
        seed: int = DEFAULT_SEED,
        force: bool = False,
        network: str | None = None,
    ) -> None:
        from fidkit.extraction import Pipeline
        from fidkit.extractors import get_extractor
        from fidkit.extractors.runner import load_model, network_path, resolve_device

        self._init_kwargs = dict(
            features=features, dims=dims, convention=convention,
            device=None if device is None else str(device),
            input_range=tuple(input_range), weights=None if weights is None else str(weights),
            fid=fid, kid=kid, inception_score=inception_score, kid_subset_size=kid_subset_size,
            kid_subsets=kid_subsets, is_splits=is_splits, seed=seed, force=force, network=network,
        )
        self.pipeline = Pipeline(features=features, dims=dims, convention=convention,
                                 weights=weights, network=network).resolved()
        self.extractor = get_extractor(self.pipeline.features)
        # The same network copy compute_statistics runs, so a stream and a folder of the same
        # images give the same features (see fidkit.extractors.runner.network_path).
        network_path(network, "cpu", self.extractor)  # a bad value fails now, not at update()
        self._network_choice = network
        self._network = ""  # the copy that ran, for the provenance
        self.use_fid = self._defaults["fid"] if fid is None else bool(fid)
        self.use_kid = self._defaults["kid"] if kid is None else bool(kid)
        self.use_is = self._defaults["inception_score"] if inception_score is None else bool(inception_score)
        if not (self.use_fid or self.use_kid or self.use_is):
            raise UsageError("switch on at least one of fid, kid, inception_score")
        if self.use_is and _LOGITS not in self.extractor.extra_outputs:
            raise UsageError(f"inception_score needs the FID Inception's logits; "
                             f"features={self.extractor.name!r} has none")
        lo, hi = (float(v) for v in input_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise UsageError(f"input_range {tuple(input_range)} must be (low, high) with low < high, "
                             "e.g. (0, 1) or (-1, 1)")
        self.input_range = (lo, hi)
        self.dims = int(self.pipeline.dims)
        self._tap = self.extractor.tap_for(self.dims)
        self._conv = self.extractor.convention(self.pipeline.convention)
        self.device = resolve_device(device)
        self._model, self._weights = load_model(weights, outputs=(self._tap,), device=self.device,
                                                progress=False, features=self.extractor)
        self.kid_subset_size, self.kid_subsets = int(kid_subset_size), int(kid_subsets)
        self.is_splits, self.seed, self.force = int(is_splits), int(seed), bool(force)
        self._reference: Statistics | None = None
        self._reference_features: torch.Tensor | None = None
        self._set_reference(reference)
        self._acc = {False: StatisticsAccumulator(self.dims), True: StatisticsAccumulator(self.dims)}
        self._features: dict[bool, list[torch.Tensor]] = {False: [], True: []}
        self._logits: list[torch.Tensor] = []

    # ------------------------------------------------------------------ inputs

    def _set_reference(self, reference: Any) -> None:
        if reference is None:
            return
        if isinstance(reference, (np.ndarray, torch.Tensor)):  # KID reference features
            feats = torch.as_tensor(np.asarray(reference) if isinstance(reference, np.ndarray) else reference)
            if feats.ndim != 2 or feats.shape[1] != self.dims:
                raise UsageError(f"reference features have shape {tuple(feats.shape)}; expected "
                                 f"(N, {self.dims})")
            self._reference_features = feats.to(self.device, torch.float32)
            return
        from fidkit.api import is_stats_path, load_statistics
        from fidkit.extraction import Runtime, extract

        feats = None
        if isinstance(reference, Statistics):
            stats = reference
        elif isinstance(reference, (str, os.PathLike)) and is_stats_path(reference):
            stats = load_statistics(reference)
        else:
            result = extract(reference, self.pipeline, Runtime(device=str(self.device),
                                                               progress=False),
                             keep_features=self.use_kid)
            stats, feats = result.statistics(), result.features
        if stats.dims != self.dims:
            raise UsageError(f"the reference has {stats.dims}-dim features but the metric uses "
                             f"dims={self.dims}; make both with the same features= and dims=")
        self._reference = stats
        if feats is not None:
            self._reference_features = torch.as_tensor(feats).to(self.device, torch.float32)

    def _network_scale(self, images: Any) -> torch.Tensor:
        """float32 (N, 3, H, W) on the 0..255 scale, on the metric's device."""
        if not isinstance(images, torch.Tensor):
            raise UsageError(f"update() takes a torch tensor (N, 3, H, W), got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise UsageError(f"update() takes images of shape (N, 3, H, W) (or N, 1, H, W), got "
                             f"{tuple(images.shape)}")
        x = images.detach().to(self.device, non_blocking=True)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.dtype == torch.uint8 or x.shape[0] == 0:
            return x.float()
        if not x.is_floating_point():
            raise UsageError(f"update() takes uint8 0..255 or float images, got {x.dtype}")
        lo, hi = self.input_range
        low, high = (float(v) for v in torch.aminmax(x))
        if not (np.isfinite(low) and np.isfinite(high)):
            raise InputError("update(): the float images contain NaN or inf values (a diverged "
                             "generator?); the batch was not added")
        slack = 1e-6 * (hi - lo)  # float rounding at the edges of a tanh/sigmoid output
        if not (low >= lo - slack and high <= hi + slack):  # NaN fails both tests
            hint = ("declare input_range=(-1, 1) for tanh outputs" if low < lo and low >= -1 - slack
                    else "rescale the images or pass uint8 0..255")
            raise InputError(f"update(): float images span [{low:.4g}, {high:.4g}] but input_range is "
                             f"({lo:g}, {hi:g}); {hint}")
        x = (x.float() - lo) * (255.0 / (hi - lo))
        return x.clamp_(0.0, 255.0)

    def _outputs(self, real: bool) -> tuple[str, ...]:
        wanted = []
        if self.use_fid or self.use_kid:
            wanted.append(self._tap)
        if self.use_is and not real:
            wanted.append(_LOGITS)
        return tuple(wanted)

    # ------------------------------------------------------------------ streaming

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        """Add a batch: uint8 0..255 or float in ``input_range``, shape (N, 3, H, W) (or N, 1, H, W,
        repeated to RGB), on any device. ``real=True`` adds to the reference side (when no
        reference was given); the Inception Score only ever looks at the generated side.

        Raises:
            UsageError: wrong type, shape or dtype, or real images when a fixed reference was given.
            InputError: a float batch outside the declared ``input_range`` (or holding NaN).
        """
        real = bool(real)
        if real and (self._reference is not None or self._reference_features is not None):
            raise UsageError("update(real=True) but a reference was given at construction; drop "
                             "one of the two")
        wanted = self._outputs(real)
        if not wanted:
            return
        from fidkit.extractors.runner import fp32_numerics, select_network

        x = self._network_scale(images)
        if x.shape[0] == 0:
            return
        with torch.no_grad(), fp32_numerics():
            # The network object is shared per process: set what this call needs every time.
            self._model.outputs = wanted
            runnable, path = select_network(self._model, self._network_choice, x.device)
            self._network = path
            out = runnable(self._conv.prepare(x).contiguous())
        if self._tap in out:
            feats = out[self._tap]
            self._acc[real].update(feats)
            if self.use_kid:
                self._features[real].append(feats.float())
        if _LOGITS in out:
            self._logits.append(out[_LOGITS].float())

    def reset(self, real: bool = False) -> None:
        """Forget the generated images; with ``real=True`` also those added by
        ``update(real=True)``. A reference given at construction is always kept."""
        self._acc[False] = StatisticsAccumulator(self.dims)
        self._features[False] = []
        self._logits = []
        if real:
            self._acc[True] = StatisticsAccumulator(self.dims)
            self._features[True] = []

    # ------------------------------------------------------------------ results

    def statistics(self, real: bool = False) -> Statistics:
        """The :class:`Statistics` of one side so far (all ranks merged), with the same ``meta``
        keys as :func:`fidkit.compute_statistics` (source kind ``"tensor-stream"``), so that
        ``statistics(real=True).save("ref.pkl")`` writes a reference ``fidkit compare`` accepts
        against folder statistics made with the same convention, weights and dims.
        A collective under torch.distributed.

        Raises:
            UsageError: fewer than 2 images on that side.
        """
        if real and self._reference is not None:
            return self._reference
        from fidkit.statistics.provenance import build_meta

        acc = distributed.merge_accumulator(self._acc[bool(real)], self.dims)
        if acc.n < 2:
            side = "reference" if real else "generated"
            raise UsageError(f"the {side} side holds {acc.n} image(s); update() with at least 2 first")
        source = {"kind": "tensor-stream", "images": acc.n, "input_range": list(self.input_range),
                  "ranks": distributed.world_size()}
        from fidkit.extractors.runner import network_meta

        extra = network_meta(self._network)
        meta = build_meta(extractor=self.extractor, dims=self.dims, convention=self._conv.name,
                          weights=self._weights.describe(), n=acc.n, source=source, extra=extra)
        return acc.statistics(meta)

    def _fid(self, said: list[str]) -> float:
        from fidkit.api import check_comparable
        from fidkit.distances.frechet import cached_factor, covariance_factor, frechet_from_moments

        fake = self.statistics(real=False)
        ref = self.statistics(real=True)
        lines = check_comparable(fake, ref, force=self.force, names=("generated", "reference"))
        # The reference is factored once and cached across calls; the generated side changes.
        factor_ref = cached_factor(ref) if ref is self._reference else covariance_factor(ref.sigma)
        result = frechet_from_moments(fake.mu, fake.sigma, ref.mu, ref.sigma, n_a=fake.n,
                                      n_b=ref.n, factor_a=covariance_factor(fake.sigma),
                                      factor_b=factor_ref,
                                      names=("the generated side", "the reference side"))
        said += lines + list(result.warnings) + _provenance_lines(fake, ref)
        return result.value

    def _gathered(self, parts: list[torch.Tensor], width: int) -> torch.Tensor:
        local = torch.cat(parts) if parts else None
        return distributed.gather_rows(local, width, torch.float32)

    def _kid(self, said: list[str]) -> MeanStd:
        fake = self._gathered(self._features[False], self.dims)
        ref = self._reference_features
        if ref is None:
            if self._reference is not None:
                raise UsageError("KID needs the reference's features, not only its statistics: give "
                                 "reference=<folder or feature array> or update(real=True)")
            ref = self._gathered(self._features[True], self.dims)
        from fidkit.distances.kid import lowered_subset_warning

        lowered = lowered_subset_warning(self.kid_subset_size, len(fake), len(ref))
        said += ([lowered] if lowered else []) + self._weights_lines()
        return kid(fake, ref, subset_size=self.kid_subset_size, subsets=self.kid_subsets,
                   seed=self.seed)

    def _inception_score(self, said: list[str]) -> MeanStd:
        from fidkit.defaults import LOGITS_DIM

        logits = self._gathered(self._logits, LOGITS_DIM)
        said += self._weights_lines()
        return inception_score(logits, splits=self.is_splits, seed=self.seed)

    def compute_all(self) -> dict[str, Any]:
        """Every metric switched on: ``{"fid": float, "kid": MeanStd, "is": MeanStd}`` (only the
        keys asked for). A collective under torch.distributed. Warns (FidkitWarning) as
        ``fidkit compare`` does, each line once."""
        out: dict[str, Any] = {}
        said: list[str] = []
        if self.use_fid:
            out["fid"] = self._fid(said)
        if self.use_kid:
            out["kid"] = self._kid(said)
        if self.use_is:
            out["is"] = self._inception_score(said)
        _warn(said)
        return out

    def _weights_lines(self) -> list[str]:
        """What every number made with this metric's weights must say (non-canonical, licence):
        :func:`fidkit.report.provenance_warnings` of the metric's provenance."""
        from fidkit.report import provenance_warnings
        from fidkit.statistics.provenance import build_meta

        meta = build_meta(extractor=self.extractor, dims=self.dims, convention=self._conv.name,
                          weights=self._weights.describe(), n=0, source={})
        return provenance_warnings(meta)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The accumulated state as plain values and CPU tensors (this rank's part only)."""
        def acc_state(acc: StatisticsAccumulator) -> tuple[int, Any, Any]:
            n, mean, m2 = acc.state()
            return (n, None if mean is None else torch.as_tensor(mean).cpu(),
                    None if m2 is None else torch.as_tensor(m2).cpu())

        def rows(parts: list[torch.Tensor]) -> torch.Tensor | None:
            return torch.cat(parts).cpu() if parts else None

        ref = self._reference
        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "dims": self.dims, "convention": self._conv.name, "weights_sha256": self._weights.sha256,
            "generated": acc_state(self._acc[False]), "real": acc_state(self._acc[True]),
            "generated_features": rows(self._features[False]), "real_features": rows(self._features[True]),
            "generated_logits": rows(self._logits),
            "reference": None if ref is None else {"mu": ref.mu, "sigma": ref.sigma, "n": ref.n,
                                                   "meta": ref.meta},
            "reference_features": None if self._reference_features is None
            else self._reference_features.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (onto this metric's device).

        Raises:
            UsageError: the state is not a fidkit metric state, or was made with other dims,
                convention or weights.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UsageError("not a fidkit metric state (expected the output of state_dict())")
        mine = (self.dims, self._conv.name, self._weights.sha256)
        theirs = (state.get("dims"), state.get("convention"), state.get("weights_sha256"))
        if mine != theirs:
            raise UsageError(f"the saved metric state was made with dims/convention/weights {theirs[0]}, "
                             f"{theirs[1]}, {str(theirs[2])[:8]}; this metric uses {mine[0]}, {mine[1]}, "
                             f"{mine[2][:8]}")

        def acc_from(saved: tuple[int, Any, Any]) -> StatisticsAccumulator:
            n, mean, m2 = saved
            if not n:
                return StatisticsAccumulator(self.dims)
            return StatisticsAccumulator.from_state(n, mean.to(self.device), m2.to(self.device))

        def parts(saved: Any) -> list[torch.Tensor]:
            return [] if saved is None else [saved.to(self.device)]

        self._acc = {False: acc_from(state["generated"]), True: acc_from(state["real"])}
        self._features = {False: parts(state["generated_features"]), True: parts(state["real_features"])}
        self._logits = parts(state["generated_logits"])
        ref = state.get("reference")
        self._reference = None if ref is None else Statistics(ref["mu"], ref["sigma"], ref["n"], ref["meta"])
        saved_feats = state.get("reference_features")
        self._reference_features = None if saved_feats is None else saved_feats.to(self.device)

    def __getstate__(self) -> dict[str, Any]:
        return {"init": self._init_kwargs, "state": self.state_dict()}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self.__init__(**saved["init"])  # type: ignore[misc]
        self.load_state_dict(saved["state"])

    @property
    def model(self) -> torch.nn.Module:
        """The FID Inception network (pinned to eval mode)."""
        return self._model


class FID(_InceptionMetrics):
    """Streaming Frechet Inception Distance against ``reference``.

    ``reference``: a :class:`Statistics`, a stats file path, an image folder (computed once with
    the same dims, convention and weights), or None (then ``update(real=True)`` fills it).
    ``dims``: 64, 192, 768 or 2048 (pool_3). ``convention``: see :mod:`fidkit.preprocess`.
    ``input_range``: the range of float inputs, (0, 1) or (-1, 1); uint8 inputs are 0..255.
    ``kid=True`` / ``inception_score=True`` compute those from the same pass (see
    :meth:`compute_all`). ``force``: compare with a reference made differently (otherwise
    :class:`~fidkit.errors.ProvenanceMismatchError`).

    .. math:: \\mathrm{FID} = \\lVert \\mu_g - \\mu_r \\rVert^2
        + \\operatorname{tr}(\\Sigma_g + \\Sigma_r - 2 (\\Sigma_g \\Sigma_r)^{1/2})

    >>> metric = fidkit.FID(reference="ref.pkl", input_range=(-1, 1))   # doctest: +SKIP
    >>> metric.update(generator(z))                                     # doctest: +SKIP
    >>> metric.compute()                                                # doctest: +SKIP
    """

    def compute(self) -> float:
        """FID (squared feature units) between everything seen and the reference.

        Raises:
            UsageError: fewer than 2 images on a side. ProvenanceMismatchError: see ``force``.
        """
        said: list[str] = []
        value = self._fid(said)
        _warn(said)
        return value


class KID(_InceptionMetrics):
    """Streaming Kernel Inception Distance (see :mod:`fidkit.distances.kid`): keeps the per-image features
    (N x dims float32) of both sides. ``reference``: an (N, dims) feature array, a
    :class:`Statistics` that has ``features``, an image folder, or None (``update(real=True)``).
    Subsets of ``kid_subset_size`` (1000, or fewer when a side has fewer), ``kid_subsets`` (100),
    ``seed`` (2020): torch-fidelity's defaults and subset draws."""

    _defaults = {"fid": False, "kid": True, "inception_score": False}

    def compute(self) -> MeanStd:
        """KID mean and std over subsets (squared feature units)."""
        said: list[str] = []
        value = self._kid(said)
        _warn(said)
        return value


class InceptionScore(_InceptionMetrics):
    """Streaming Inception Score of the generated images (see :mod:`fidkit.distances.inception_score`):
    keeps the 1008 unbiased logits per image; ``is_splits`` (10) and ``seed`` (2020) as
    torch-fidelity. Takes no reference."""

    _defaults = {"fid": False, "kid": False, "inception_score": True}

    def __init__(self, **options: Any) -> None:
        super().__init__(None, **options)

    def compute(self) -> MeanStd:
        """Inception Score mean and std over the splits."""
        said: list[str] = []
        value = self._inception_score(said)
        _warn(said)
        return value


def _provenance_lines(*stats: Statistics) -> list[str]:
    from fidkit.report import provenance_warnings

    return [line for s in stats for line in provenance_warnings(s.meta)]


def _warn(lines: list[str]) -> None:
    import warnings

    from fidkit.errors import FidkitWarning

    for line in dict.fromkeys(lines):
        warnings.warn(FidkitWarning(line), stacklevel=3)
