"""Streaming statistics: shards merged == one pass == np.cov of the stacked features."""
from __future__ import annotations

import numpy as np
import pytest

from fidkit.errors import InputError, UsageError
from fidkit.statistics import Statistics, StatisticsAccumulator


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _features(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    # A large common offset is the trap for naive sum-of-squares accumulation.
    return rng.standard_normal((n, d)) * rng.uniform(0.1, 2.0, d) + 1e3


def test_single_pass_and_merged_shards_equal_np_cov():
    rng = np.random.default_rng(0)
    x = _features(rng, 1000, 24)
    one = StatisticsAccumulator()
    for start in range(0, 1000, 37):  # uneven batches
        one.update(x[start:start + 37])
    shards = []
    for part in np.array_split(x, [3, 250, 251, 700]):
        acc = StatisticsAccumulator(24)
        acc.update(part)
        shards.append(acc)
    merged = shards[0]
    for acc in shards[1:]:
        merged.merge(acc)
    ref_mu, ref_sigma = x.mean(0), np.cov(x, rowvar=False)
    for acc in (one, merged):
        s = acc.statistics()
        assert acc.n == 1000 and s.n == 1000
        assert _rel(s.mu, ref_mu) <= 1e-12
        assert _rel(s.sigma, ref_sigma) <= 1e-12
        assert np.array_equal(s.sigma, s.sigma.T)


def test_statistics_merge_equals_stats_of_union():
    rng = np.random.default_rng(1)
    x, y = _features(rng, 300, 10), _features(rng, 77, 10) * 1.5
    sx = Statistics(x.mean(0), np.cov(x, rowvar=False), 300, {"source": "x"})
    sy = Statistics(y.mean(0), np.cov(y, rowvar=False), 77)
    u = np.vstack([x, y])
    both = sx.merge(sy)
    assert both.n == 377 and both.meta["n"] == 377 and both.meta["source"] == "x"
    assert _rel(both.sigma, np.cov(u, rowvar=False)) <= 1e-12
    assert _rel(both.mu, u.mean(0)) <= 1e-12


def test_torch_features_stay_on_their_device_and_match_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = _features(rng, 200, 8).astype(np.float32)
    acc = StatisticsAccumulator()
    for part in np.array_split(x, 4):
        acc.update(torch.from_numpy(part))
    assert isinstance(acc.mean, torch.Tensor) and acc.mean.dtype == torch.float64
    numpy_side = StatisticsAccumulator()
    numpy_side.update(x[:50])
    acc.merge(numpy_side)  # a numpy shard folds into a torch accumulator
    s = acc.statistics()
    u = np.vstack([x.astype(np.float64), x[:50].astype(np.float64)])
    assert _rel(s.sigma, np.cov(u, rowvar=False)) <= 1e-12


def test_state_round_trip_merges_like_the_original():
    rng = np.random.default_rng(3)
    x = _features(rng, 120, 6)
    a, b = StatisticsAccumulator(), StatisticsAccumulator()
    a.update(x[:70])
    b.update(x[70:])
    rebuilt = StatisticsAccumulator.from_state(*b.state())
    a.merge(rebuilt)
    assert _rel(a.statistics().sigma, np.cov(x, rowvar=False)) <= 1e-12
    assert StatisticsAccumulator.from_state(0, None, None).n == 0


def test_bad_batches_are_refused():
    acc = StatisticsAccumulator(4)
    with pytest.raises(UsageError, match="expected 4"):
        acc.update(np.zeros((3, 5)))
    with pytest.raises(UsageError, match=r"\(N, d\)"):
        acc.update(np.zeros(4))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        acc.update(bad)
    acc.update(np.ones((1, 4)))
    with pytest.raises(UsageError, match="at least 2"):
        acc.statistics()


def test_deferred_check_of_card_batches_drops_only_the_bad_one(monkeypatch):
    """The CUDA path (NaN check read one batch later, so the host never waits for the card) run
    on CPU tensors: a bad batch is reported at the next update, left out, and the rest is exact."""
    import pickle

    import torch

    import fidkit.statistics as statistics

    monkeypatch.setattr(statistics, "_on_cuda", lambda x: isinstance(x, torch.Tensor))
    rng = np.random.default_rng(4)
    good1, good2, good3 = (rng.normal(size=(k, 5)) for k in (4, 3, 6))
    bad = rng.normal(size=(2, 5))
    bad[1, 3] = np.nan
    acc = StatisticsAccumulator()
    acc.update(torch.from_numpy(good1))
    acc.update(torch.from_numpy(bad))  # not read yet
    with pytest.raises(InputError, match="after 4 good ones"):
        acc.update(torch.from_numpy(good2))
    acc.update(torch.from_numpy(good3))
    assert acc.n == 13  # reading n folds in the waiting batch
    kept = np.concatenate([good1, good2, good3])
    stats = acc.statistics()
    assert np.allclose(stats.mu, kept.mean(0), rtol=1e-13, atol=1e-14)
    assert np.allclose(stats.sigma, np.cov(kept, rowvar=False), rtol=1e-12, atol=1e-14)
    acc.update(torch.from_numpy(bad))
    with pytest.raises(InputError):
        pickle.dumps(acc)  # pickling reads the check too: no NaN state is ever saved
    restored = pickle.loads(pickle.dumps(acc))
    assert restored.n == 13 and restored._pending is None
