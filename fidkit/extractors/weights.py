"""Weights files of every extractor: find, download (hash-checked, atomic, cached), load.

Resolution order: an explicit path (``--weights`` / ``weights=``), then, for the FID Inception
only, ``$FIDKIT_WEIGHTS``; then the cache (``$FIDKIT_CACHE``, else torch hub's checkpoint folder,
which pytorch-fid also uses), then a download from the extractor's
:class:`~fidkit.extractors.base.WeightsFile` ``.urls`` in order. ``FIDKIT_OFFLINE=1`` forbids the
download. A cached file whose SHA-256 is wrong is moved aside and fetched again.

Weights that are not the canonical file (for example those ``fidkit weights make-test`` writes for
tests) are accepted when given explicitly, and every result computed with them says so.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fidkit.defaults import CACHE_ENV, FID_WEIGHTS, WEIGHTS_ENV
from fidkit.errors import WeightsError
from fidkit.extractors.base import ResolvedWeights, WeightsFile
from fidkit.fileio import atomic_writer

OFFLINE_ENV = "FIDKIT_OFFLINE"
_CHUNK = 1 << 20
#: Largest download accepted for a file whose published size is not known (``size`` 0; the
#: SHA-256 is still checked): the biggest published extractor file is ~4.5 GB (DINOv2 ViT-g).
_UNKNOWN_SIZE_CAP = 8 << 30


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$FIDKIT_CACHE``, else ``$TORCH_HOME/hub/checkpoints``
    (``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch`` when TORCH_HOME is unset)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
        _HASH_MEMO[key] = digest.hexdigest()
    return _HASH_MEMO[key]


def _explain_manual(spec: WeightsFile, target: Path) -> str:
    env = f" / set {WEIGHTS_ENV}" if spec == FID_WEIGHTS else ""
    sha = f"SHA-256 {spec.sha256}" if spec.sha256 else "SHA-256 not published"
    size = f", {spec.size} bytes" if spec.size else ""
    return (
        f"download {spec.urls[0]} ({sha}{size}) and save it as "
        f"{target}, or pass weights=PATH (--weights PATH){env}"
    )


def _pinned(target: Path) -> Path:
    """Where the SHA-256 of a file without a published hash is kept after its first download."""
    return target.with_name(target.name + ".sha256")


def _label(spec: WeightsFile) -> str:
    return "FID Inception weights" if spec == FID_WEIGHTS else f"weights {spec.filename}"


def resolve_weights(
    path: str | os.PathLike | None = None,
    *,
    spec: WeightsFile = FID_WEIGHTS,
    offline: bool | None = None,
    progress: bool = True,
) -> ResolvedWeights:
    """Return a verified weights file, downloading the canonical one if needed.

    Raises :class:`WeightsError` when the file is missing, unreadable, or cannot be fetched.
    """
    from_env = os.environ.get(WEIGHTS_ENV) if spec == FID_WEIGHTS else None
    explicit = path if path is not None else from_env or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise WeightsError(f"weights file {p} does not exist; {_explain_manual(spec, p)}")
        try:
            sha = file_sha256(p)
        except OSError as exc:
            raise WeightsError(f"cannot read weights file {p}: {exc.strerror}") from None
        return ResolvedWeights(p, sha, bool(spec.sha256) and sha == spec.sha256,
                               hash_published=bool(spec.sha256))

    target = cache_dir() / spec.filename
    if target.is_file():
        try:
            sha = file_sha256(target)
        except OSError as exc:
            raise WeightsError(f"cannot read cached weights {target}: {exc.strerror}") from None
        pin = None if spec.sha256 else _read_pin(target)
        expected = spec.sha256 or pin or sha  # no published hash: trust on first use
        # The hash decides; a recorded size (often second-hand) only guards a file of
        # unpublished hash that has no pin yet.
        size_ok = bool(spec.sha256 or pin) or not spec.size or os.path.getsize(target) == spec.size
        if sha == expected and size_ok:
            if not spec.sha256:
                _write_pin(target, sha)
            return ResolvedWeights(target, sha, True, hash_published=bool(spec.sha256))
        # Corrupted or partial: keep it for inspection, never use it.
        aside = target.with_name(target.name + ".corrupt")
        os.replace(target, aside)
        print(f"fidkit: cached weights {target} had SHA-256 {sha[:12]}..., not {expected[:12]}...; "
              f"moved to {aside.name} and fetching again", file=sys.stderr)

    if offline is None:
        offline = os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    if offline:
        raise WeightsError(f"no {_label(spec)} in the cache and {OFFLINE_ENV} is set: "
                           f"{_explain_manual(spec, target)}")
    errors = []
    for url in spec.urls:
        try:
            sha = download(url, target, spec=spec, progress=progress)
            if not spec.sha256:
                _write_pin(target, sha)
                print(f"fidkit: note: no SHA-256 is published for {spec.filename}; recorded "
                      f"{sha} from this download (checked on every later use)", file=sys.stderr)
            return ResolvedWeights(target, sha, True, hash_published=bool(spec.sha256))
        except WeightsError as exc:
            errors.append(str(exc))
    raise WeightsError(f"could not download the {_label(spec)} ({'; '.join(errors)}); "
                       f"{_explain_manual(spec, target)}")


def _read_pin(target: Path) -> str | None:
    try:
        text = _pinned(target).read_text().strip()
    except OSError:
        return None
    return text if len(text) == 64 else None


def _write_pin(target: Path, sha: str) -> None:
    from fidkit.fileio import atomic_write_bytes

    if _read_pin(target) != sha:
        try:
            atomic_write_bytes(_pinned(target), (sha + "\n").encode())
        except OSError:
            pass  # a read-only cache still works; the pin is a convenience


def download(url: str, target: Path, *, spec: WeightsFile = FID_WEIGHTS, progress: bool = True,
             timeout: float = 60.0) -> str:
    """Fetch ``url`` to ``target`` via a temporary file; verify it before the rename; returns the
    SHA-256. Nothing is left under ``target`` unless the file is verified.

    The SHA-256 decides where it is published. A transfer shorter than the server's
    Content-Length is a truncated one. The recorded size (``spec.size``; for several files a
    third-party record, not the publisher's) sizes the progress bar and stops a server that sends
    far more (5 % and 1 MiB beyond it; 8 GiB when no size is recorded); it does not by itself
    refuse a file whose published hash matches."""
    import http.client

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the cache folder {target.parent}: {exc.strerror}") from None
    digest = hashlib.sha256()
    received = 0
    limit = spec.size + max(spec.size // 20, _CHUNK) if spec.size else _UNKNOWN_SIZE_CAP
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            declared = int(declared) if declared and declared.strip().isdigit() else None
            bar = _progress_bar(declared or spec.size, progress, _label(spec))
            with atomic_writer(target) as handle:
                while True:
                    block = response.read(_CHUNK)
                    if not block:
                        break
                    received += len(block)
                    if received > limit:
                        raise WeightsError(f"{url} sent more than {limit} bytes (the file is "
                                           f"recorded as {spec.size or 'at most 8 GiB'})")
                    digest.update(block)
                    handle.write(block)
                    if bar is not None:
                        bar.update(len(block))
                if bar is not None:
                    bar.close()
                if declared is not None and received != declared:
                    raise WeightsError(f"{url} sent {received} of {declared} bytes (truncated "
                                       "transfer)")
                if spec.sha256 and digest.hexdigest() != spec.sha256:
                    raise WeightsError(f"{url} sent a file with SHA-256 {digest.hexdigest()} "
                                       f"({received} bytes), expected {spec.sha256}")
    except http.client.IncompleteRead as exc:
        raise WeightsError(f"{url} sent {received + len(exc.partial)} bytes and closed the "
                           "connection (truncated transfer)") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"{url}: {reason}") from None
    return digest.hexdigest()


def _progress_bar(total: int, enabled: bool, label: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr,
                leave=False)


def load_state_dict(weights: ResolvedWeights) -> dict:
    """Load the state dict with ``torch.load(weights_only=True)``: a weights file cannot run code."""
    import pickle

    import torch

    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        msg = " ".join(str(exc).split())[:160]
        raise WeightsError(f"{weights.path} is not a loadable PyTorch weights file ({msg}); "
                           "use the canonical pt_inception-2015-12-05-6726825d.pth") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{weights.path} does not hold a state dict; use the canonical "
                           "pt_inception-2015-12-05-6726825d.pth")
    return state


def make_test_weights(path: str | os.PathLike, seed: int = 0, calibration_images: int = 24) -> str:
    """Write deterministic random FID-Inception weights in the canonical state-dict format.

    The batch-norm running statistics are calibrated on synthetic images (smooth random fields
    plus texture) so that every tap has a real spread across images; without that, random weights
    give near-constant pool_3 features and parity tests would prove nothing. Returns the SHA-256.
    For tests and offline demos only: results computed with these weights are not FIDs.
    """
    import torch

    from fidkit.extractors.networks.inception import FIDInceptionV3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FIDInceptionV3(outputs=("logits",))
        generator = torch.Generator().manual_seed(seed + 1)
        images = synthetic_images(calibration_images, generator=generator)
        x = images.float() / 127.5 - 1.0
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
            bn.training = True  # bypasses the model's eval pin for the calibration pass only
        with torch.no_grad():
            model(x)
        for bn in bns:
            bn.training = False
            bn.momentum = 0.1
        # Small random biases so logits differ between classes for the Inception Score.
        with torch.no_grad():
            model.fc.weight.mul_(4.0)
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    # The canonical file has no num_batches_tracked entries; keep the same key set.
    with atomic_writer(path) as handle:
        torch.save(state, handle)
    return file_sha256(path)


def synthetic_images(count: int, size: int = 299, generator=None):
    """Deterministic uint8 (count, 3, size, size) images: smooth colour fields plus texture."""
    import torch
    import torch.nn.functional as F

    g = generator or torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 6, 6, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    texture = torch.rand(count, 3, size // 4, size // 4, generator=g)
    texture = F.interpolate(texture, size=(size, size), mode="nearest")
    contrast = torch.rand(count, 1, 1, 1, generator=g)
    img = smooth * (1 - 0.5 * contrast) + texture * 0.5 * contrast
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)
