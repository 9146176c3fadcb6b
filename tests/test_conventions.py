"""The `clean` and `antialias` conventions against the tools they reproduce (issue 4), and the
`tf1` resize against torch-fidelity's port of TF1's.

`clean` is checked against clean-fid 0.1.35's own resizer and its whole `compute_fid` pipeline
(its custom feature-extractor hook, given pytorch-fid's Inception with the test weights);
`antialias` against torchmetrics' `FrechetInceptionDistance(antialias=True)` on the same weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fidkit
from fidkit.distances.frechet import frechet_distance
from fidkit.preprocess import get_convention

SIZES = [(32, 32), (90, 140), (256, 256)]


def _images(size, seed, count=3):
    from conftest import make_images

    return make_images(count, size, seed=seed)  # uint8 (N, H, W, 3)


@pytest.mark.parametrize("size", SIZES + [(1024, 1024), (300, 299), (7, 1000)])
def test_tf1_resize_is_bit_identical_to_torch_fidelity(size):
    """TTUR's TF1 bilinear resize as torch-fidelity ports it: fidkit reorders the work (rows
    interpolated once, then gathered) but every output is the same float32 operations."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = torch.from_numpy(_images(size, seed=8, count=2)).permute(0, 3, 1, 2).float()
    ours = get_convention("tf1").prepare(x)
    theirs = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    assert torch.equal(ours, (theirs - 128) / 128)


@pytest.mark.parametrize("size", SIZES)
def test_clean_resize_matches_cleanfid(size):
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    images = _images(size, seed=1)
    ours = get_convention("clean").prepare(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    for img, mine in zip(images, ours):
        theirs = resize(img)  # float32 (299, 299, 3), 0..255
        assert theirs.dtype == np.float32 and theirs.shape == (299, 299, 3)
        theirs = (torch.from_numpy(theirs).permute(2, 0, 1) - 128) / 128
        assert (mine - theirs).abs().max().item() * 128 <= 1e-4


def _torchmetrics_extractor(weights):
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=str(weights), antialias=True).eval()


@pytest.mark.parametrize("size", SIZES)
def test_antialias_resize_matches_torchmetrics(size, test_weights):
    peer = _torchmetrics_extractor(test_weights)
    seen = []

    class Seen(Exception):
        pass

    def capture(module, args):
        # the network's first layer receives torchmetrics' resized and normalised input; stop
        # there, the rest of the network is not under test and costs seconds on a CPU
        seen.append(args[0].clone())
        raise Seen

    hook = peer.Conv2d_1a_3x3.register_forward_pre_hook(capture)
    images = torch.from_numpy(_images(size, seed=2)).permute(0, 3, 1, 2).contiguous()
    try:
        with torch.no_grad(), pytest.raises(Seen):
            peer(images)
    finally:
        hook.remove()
    ours = get_convention("antialias").prepare(images.float())
    assert ours.shape == seen[0].shape == (3, 3, 299, 299)
    assert (ours - seen[0]).abs().max().item() * 128 <= 1e-4


@pytest.fixture(scope="module")
def small_folders(image_folders, tmp_path_factory):
    """The first 5 images of each non-square and 32x32 folder: the whole pipeline runs the
    Inception on the CPU four times per test, so the sets are kept small."""
    import shutil

    root = tmp_path_factory.mktemp("small")
    out = {}
    for name in ("nonsquare", "32"):
        pair = []
        for side, folder in zip("ab", image_folders[name]):
            target = root / f"{name}_{side}"
            target.mkdir()
            for f in sorted(folder.iterdir())[:5]:
                shutil.copy(f, target / f.name)
            pair.append(target)
        out[name] = tuple(pair)
    return out


# The 64-channel tap sits right after the resize and the first convolutions, so it checks the
# preprocessing as strictly as pool_3 does at a tenth of the CPU time; pool_3 runs with -m slow.
DIMS = [64, pytest.param(2048, marks=pytest.mark.slow)]


@pytest.mark.parametrize("dims", DIMS)
def test_clean_fid_matches_cleanfid_compute_fid(small_folders, test_weights, dims):
    from cleanfid import fid as cleanfid_fid
    from pytorch_fid import inception as pfi

    state = torch.load(test_weights, weights_only=True)
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        block = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        net = pfi.InceptionV3([block], resize_input=False, normalize_input=False).eval()
    finally:
        pfi.load_state_dict_from_url = original

    def extractor(batch):  # clean-fid hands float32 (N, 3, 299, 299) on 0..255
        with torch.no_grad():
            out = net((batch - 128) / 128)[0]
            return torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)

    a, b = small_folders["nonsquare"]
    peer = cleanfid_fid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=extractor,
                                    num_workers=0, batch_size=8, device=torch.device("cpu"),
                                    verbose=False, use_dataparallel=False)
    ours = [fidkit.compute_statistics(f, convention="clean", weights=str(test_weights), workers=0,
                                      dims=dims, progress=False) for f in (a, b)]
    value = frechet_distance(ours[0].mu, ours[0].sigma, ours[1].mu, ours[1].sigma)
    assert ours[0].meta["convention"] == "clean"
    assert value > 0 and abs(value - peer) <= 1e-4 * peer


@pytest.mark.parametrize("dims", DIMS)
def test_antialias_fid_matches_torchmetrics(small_folders, test_weights, dims):
    from PIL import Image
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = small_folders["32"]
    metric = FrechetInceptionDistance(feature=dims, antialias=True,
                                      feature_extractor_weights_path=str(test_weights))
    for folder, real in ((a, True), (b, False)):
        files = sorted(folder.iterdir())
        batch = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        metric.update(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(), real=real)
    peer = float(metric.compute())
    ours = [fidkit.compute_statistics(f, convention="antialias", weights=str(test_weights), workers=0,
                                      dims=dims, progress=False) for f in (a, b)]
    value = frechet_distance(ours[0].mu, ours[0].sigma, ours[1].mu, ours[1].sigma)
    assert value > 0 and abs(value - peer) <= 1e-4 * peer
