"""Frechet distance: fidkit against its peers, same cases, same process, known truth, idle and
with competing CPU-bound processes that this script starts itself.

    python benchmarks/frechet.py                          # d = 2048, idle then 1 competitor
    python benchmarks/frechet.py --dims 64 768 --runs 7 --json out.json
    python benchmarks/frechet.py --dims 256 --runs 2 --seeds 1 --phases idle  # a quick check
    python benchmarks/frechet.py --ab                     # also fidkit on all threads / THP off
    python benchmarks/frechet.py --cases well "ill s=1" --only pytorch-fid torch-fidelity torchmetrics

Cases (mu differs by a fixed random vector unless said otherwise):

* ``well``: commuting covariances (one random eigenbasis), eigenvalues log-uniform in [0.1, 10],
  the second set = the first times U(0.5, 2). Truth: sum (sqrt a - sqrt b)^2 + |mu1 - mu2|^2.
* ``ill``: the same with eigenvalues log-spaced over [1e-10, 1e2] (condition number 1e12).
* ``rank``: the same with half the eigenvalues exactly 0 (rank d / 2).
* ``close``: ``well`` with the second set = the first times U(0.9, 1.1) and nearly equal means:
  a small FID next to large traces, the hardest case for the Gram route's error check.
* ``n=1000`` and ``n=d/2``: covariances of n Gaussian samples (rank n - 1 when n <= d). Truth
  from the features without forming a covariance: |X1c X2c^T|_* / (n - 1) for the cross term.
* ``well/ill/close s=K``: the commuting cases again from seed K (``--seeds``).

Phases (``--phases``): ``idle`` runs on the machine as it is; ``loaded`` first starts ``--load``
processes that each spin one core (``python -c "while True: pass"``), runs every case again and
stops them. The load average at the start of each phase is printed: "idle" is only idle on a
quiet machine.

Each implementation is timed on the same arrays; runs are interleaved (run r calls every
implementation once) so that load from other processes hits all of them alike. Reported: the
median wall time and the relative error |value - truth| / truth. ``fidkit+ref`` reuses the
reference's (second argument's) cached factor, as ``fidkit.distances.frechet.frechet`` does for a reused
reference ``Statistics``. With ``--ab``: ``fidkit/all-thr`` forces every BLAS thread
(``FIDKIT_BLAS_THREADS``, no fitting to idle cores) and ``fidkit/thp-off`` switches numpy's
transparent-huge-page advice off around the call (the setting fidkit used to make). At d >= 2048
pytorch-fid and clean-fid (the same scipy ``sqrtm``) are timed once per case (see ``ONCE``).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fidkit.distances.frechet import covariance_factor, frechet_from_moments  # noqa: E402


# --------------------------------------------------------------------------- cases


def _closed(d: int, kind: str, rng: np.random.Generator) -> dict[str, Any]:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    if kind in ("well", "close"):
        a = np.exp(rng.uniform(np.log(0.1), np.log(10.0), d))
    elif kind == "ill":
        a = np.logspace(-10, 2, d)
    else:
        a = np.r_[np.exp(rng.uniform(np.log(0.1), np.log(10.0), d // 2)), np.zeros(d - d // 2)]
    b = a * (rng.uniform(0.9, 1.1, d) if kind == "close" else rng.uniform(0.5, 2.0, d))
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1 = rng.standard_normal(d)
    mu2 = mu1 + 0.01 * rng.standard_normal(d) if kind == "close" else rng.standard_normal(d)
    truth = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum() + ((mu1 - mu2) ** 2).sum())
    return {"mu1": mu1, "s1": (s1 + s1.T) / 2, "mu2": mu2, "s2": (s2 + s2.T) / 2, "truth": truth}


def _sampled(d: int, n: int, rng: np.random.Generator) -> dict[str, Any]:
    x = rng.standard_normal((n, d)) * np.exp(rng.uniform(np.log(0.1), np.log(3.0), d))
    y = rng.standard_normal((n, d)) * np.exp(rng.uniform(np.log(0.1), np.log(3.0), d)) + 0.1
    mu1, mu2 = x.mean(0), y.mean(0)
    xc, yc = x - mu1, y - mu2
    cross = float(np.linalg.svd(xc @ yc.T, compute_uv=False).sum()) / (n - 1)
    truth = float(((mu1 - mu2) ** 2).sum() + (xc**2).sum() / (n - 1) + (yc**2).sum() / (n - 1)
                  - 2 * cross)
    s1, s2 = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1)
    return {"mu1": mu1, "s1": (s1 + s1.T) / 2, "mu2": mu2, "s2": (s2 + s2.T) / 2, "truth": truth}


def make_cases(d: int, seed: int = 0, seeds: tuple[int, ...] = ()) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed + d)
    cases = {
        "well": _closed(d, "well", rng),
        "ill": _closed(d, "ill", rng),
        "rank": _closed(d, "rank", rng),
        "close": _closed(d, "close", rng),
        "n=1000": _sampled(d, 1000, rng),
        f"n={d // 2}": _sampled(d, d // 2, rng),
    }
    for extra in seeds:
        other = np.random.default_rng(1000 * extra + d)
        for kind in ("well", "ill", "close"):
            cases[f"{kind} s={extra}"] = _closed(d, kind, other)
    return cases


# --------------------------------------------------------------------------- implementations


def implementations(ab: bool = False) -> dict[str, Callable[[dict[str, Any]], Callable[[], float]]]:
    """name -> (case -> zero-argument call returning the FID); set-up outside the timed call."""
    impls: dict[str, Callable[[dict[str, Any]], Callable[[], float]]] = {}

    def fidkit_cold(c):
        return lambda: frechet_from_moments(c["mu1"], c["s1"], c["mu2"], c["s2"]).value

    def fidkit_ref(c):
        fb = covariance_factor(c["s2"])
        return lambda: frechet_from_moments(c["mu1"], c["s1"], c["mu2"], c["s2"], factor_b=fb).value

    impls["fidkit"] = fidkit_cold
    impls["fidkit+ref"] = fidkit_ref
    if ab:
        def all_threads(c):
            def call():
                os.environ["FIDKIT_BLAS_THREADS"] = str(os.cpu_count() or 1)
                try:
                    return frechet_from_moments(c["mu1"], c["s1"], c["mu2"], c["s2"]).value
                finally:
                    del os.environ["FIDKIT_BLAS_THREADS"]
            return call

        def thp_off(c):
            from numpy._core.multiarray import _set_madvise_hugepage

            def call():
                before = _set_madvise_hugepage(False)
                try:
                    return frechet_from_moments(c["mu1"], c["s1"], c["mu2"], c["s2"]).value
                finally:
                    _set_madvise_hugepage(before)
            return call

        impls["fidkit/all-thr"] = all_threads
        impls["fidkit/thp-off"] = thp_off
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance

        impls["pytorch-fid"] = lambda c: lambda: float(
            calculate_frechet_distance(c["mu1"], c["s1"], c["mu2"], c["s2"]))
    except ImportError:
        pass
    try:
        from cleanfid.fid import frechet_distance as cleanfid_fd

        impls["clean-fid"] = lambda c: lambda: float(cleanfid_fd(c["mu1"], c["s1"], c["mu2"], c["s2"]))
    except ImportError:
        pass
    try:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        def tfid(c):
            a, b = {"mu": c["mu1"], "sigma": c["s1"]}, {"mu": c["mu2"], "sigma": c["s2"]}
            return lambda: float(fid_statistics_to_metric(a, b, False)["frechet_inception_distance"])

        impls["torch-fidelity"] = tfid
    except ImportError:
        pass
    try:
        import torch
        from torchmetrics.image.fid import _compute_fid

        def tm(c):
            t = [torch.from_numpy(np.ascontiguousarray(c[k])) for k in ("mu1", "s1", "mu2", "s2")]
            return lambda: float(_compute_fid(*t))

        impls["torchmetrics"] = tm
    except ImportError:
        pass
    return impls


def _call(fn: Callable[[], float]) -> tuple[float, float, str]:
    """(seconds, value, note): stdout prints, warnings and exceptions become the note."""
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a peer failing is a finding, not a crash
            return time.perf_counter() - start, float("nan"), f"{type(exc).__name__}: {exc}"[:120]
        seconds = time.perf_counter() - start
    notes = [m.strip() for m in out.getvalue().splitlines() if m.strip()]
    notes += [f"{w.category.__name__}: {w.message}" for w in caught]
    return seconds, value, "; ".join(dict.fromkeys(n[:120] for n in notes))


# --------------------------------------------------------------------------- main

#: clean-fid's frechet_distance runs the same scipy ``sqrtm(sigma1.dot(sigma2), disp=False)`` as
#: pytorch-fid's; at large d (~15 s a call on 2 cores) it is called once, to keep the default run
#: near 10 minutes. Its row says runs=1.
ONCE = ("pytorch-fid", "clean-fid")
ONCE_ABOVE = 2048


def run(dims: list[int], runs: int, seed: int = 0, once: tuple[str, ...] = ONCE,
        seeds: tuple[int, ...] = (), phase: str = "idle", ab: bool = False,
        only: tuple[str, ...] = (), cases: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = []
    impls = implementations(ab)
    if only:
        impls = {k: v for k, v in impls.items() if k.startswith("fidkit") or k in only}
    for d in dims:
        for case_name, case in make_cases(d, seed, seeds).items():
            if cases and case_name not in cases:
                continue
            calls = {name: make(case) for name, make in impls.items()}
            times: dict[str, list[float]] = {name: [] for name in calls}
            values: dict[str, float] = {}
            notes: dict[str, str] = {}
            if d < 1024:  # first calls pay for lazy imports and allocations: not what we measure
                for fn in calls.values():
                    _call(fn)
            for r in range(runs):
                for name, fn in calls.items():
                    if r and d >= ONCE_ABOVE and name in once:
                        continue
                    seconds, value, note = _call(fn)
                    times[name].append(seconds)
                    values[name] = value
                    if note:
                        notes[name] = note
            for name in calls:
                err = abs(values[name] - case["truth"]) / abs(case["truth"])
                rows.append({"phase": phase, "d": d, "case": case_name, "impl": name,
                             "runs": len(times[name]), "median_s": statistics.median(times[name]),
                             "min_s": min(times[name]), "value": values[name],
                             "truth": case["truth"], "rel_error": err, "note": notes.get(name, "")})
            _print_case(rows[-len(calls):])
    return rows


@contextlib.contextmanager
def competitors(count: int):
    """``count`` processes spinning one core each, for the duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # let them reach the run queue
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _print_case(rows: list[dict[str, Any]]) -> None:
    base = {r["impl"]: r for r in rows}
    head = rows[0]
    print(f"\n[{head['phase']}] d={head['d']} case={head['case']} truth={head['truth']:.12g}", flush=True)
    for r in rows:
        ratio = r["median_s"] / base["fidkit"]["median_s"]
        print(f"  {r['impl']:15s} {r['median_s']:9.4f} s  x{ratio:7.2f}  rel.err {r['rel_error']:.1e}"
              + (f"  [{r['note']}]" if r["note"] else ""), flush=True)


def summary(rows: list[dict[str, Any]]) -> str:
    """Markdown tables per phase: median seconds and relative error, then speed ratios, then the
    issue-20 targets checked at d >= 2048 (idle: faster than every peer, >= 10x pytorch-fid;
    loaded: >= 5x pytorch-fid, >= 1.5x torch-fidelity)."""
    lines: list[str] = []
    for phase in dict.fromkeys(r["phase"] for r in rows):
        part = [r for r in rows if r["phase"] == phase]
        impls = list(dict.fromkeys(r["impl"] for r in part))
        peers = [i for i in impls if not i.startswith("fidkit")]
        keys = list(dict.fromkeys((r["d"], r["case"]) for r in part))
        lines += [f"### {phase}", "", "| d | case | " + " | ".join(impls) + " |",
                  "|---|---|" + "---|" * len(impls)]
        for d, case in keys:
            cells = {r["impl"]: r for r in part if r["d"] == d and r["case"] == case}
            lines.append(f"| {d} | {case} | " + " | ".join(
                f"{cells[i]['median_s']:.3g} s, {cells[i]['rel_error']:.0e}"
                + (f" (runs={cells[i]['runs']})" if cells[i]["runs"] != cells["fidkit"]["runs"] else "")
                if i in cells else "-"
                for i in impls) + " |")
        lines += ["", "Speed ratios (peer median / fidkit median; in brackets against fidkit+ref):", "",
                  "| d | case | " + " | ".join(peers) + " |", "|---|---|" + "---|" * len(peers)]
        misses = []
        for d, case in keys:
            cells = {r["impl"]: r for r in part if r["d"] == d and r["case"] == case}
            fk, fr = cells["fidkit"]["median_s"], cells["fidkit+ref"]["median_s"]
            lines.append(f"| {d} | {case} | " + " | ".join(
                f"{cells[i]['median_s'] / fk:.1f}x ({cells[i]['median_s'] / fr:.1f}x)"
                if i in cells else "-" for i in peers) + " |")
            want = ({"pytorch-fid": 10.0, **{i: 1.0 for i in peers if i != "pytorch-fid"}}
                    if phase == "idle" else {"pytorch-fid": 5.0, "torch-fidelity": 1.5})
            for peer, factor in want.items():
                if d >= 2048 and peer in cells and cells[peer]["median_s"] / fk < factor:
                    misses.append(f"{case} (d={d}): {cells[peer]['median_s'] / fk:.2f}x {peer}, "
                                  f"target {factor:g}x")
        lines += ["", "Targets: " + ("all met" if not misses else "missed: " + "; ".join(misses)), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2048])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2],
                        help="extra seeds for the commuting cases (well, ill, close); default 1 2")
    parser.add_argument("--phases", nargs="+", choices=("idle", "loaded"), default=["idle", "loaded"])
    parser.add_argument("--load", type=int, default=1, help="competing processes in the loaded phase")
    parser.add_argument("--ab", action="store_true",
                        help="also time fidkit on all BLAS threads and with numpy's THP advice off")
    parser.add_argument("--only", nargs="*", default=[], metavar="PEER",
                        help="time only these peers (fidkit always); default: every peer installed")
    parser.add_argument("--cases", nargs="*", default=[], metavar="CASE",
                        help="run only these cases (names as printed, e.g. 'well' 'ill s=1')")
    parser.add_argument("--json", help="also write the rows here (atomically)")
    parser.add_argument("--once", nargs="*", default=list(ONCE), metavar="IMPL",
                        help=f"implementations called once (not --runs times) at d >= {ONCE_ABOVE}; "
                        "default: pytorch-fid clean-fid")
    args = parser.parse_args(argv)
    import scipy

    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"cpus {os.cpu_count()}")
    started = time.time()
    rows: list[dict[str, Any]] = []
    for phase in args.phases:
        load = args.load if phase == "loaded" else 0
        with competitors(load) if load else contextlib.nullcontext():
            print(f"\n== phase {phase}: {load} competing process(es), load average "
                  f"{os.getloadavg()[0]:.2f}", flush=True)
            rows += run(args.dims, args.runs, args.seed, tuple(args.once), tuple(args.seeds), phase,
                        args.ab, tuple(args.only), tuple(args.cases))
    print()
    print(summary(rows))
    print(f"\ntotal {time.time() - started:.0f} s")
    if args.json:
        from fidkit.fileio import atomic_write_bytes

        atomic_write_bytes(args.json, json.dumps(rows, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
