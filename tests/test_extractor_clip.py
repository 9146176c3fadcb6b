"""OpenAI CLIP image-encoder extractors (clip-vit-b-32, clip-vit-l-14, clip-vit-l-14-336px).

One random ViT-B/32 archive (``make_test_weights``: the official TorchScript layout) is fed to
fidkit and to every peer: torch-fidelity's ``clip-vit-b-32`` (``torch.jit.load`` of the path),
clean-fid's CLIP-FID (``clip.load`` pointed at the file), the ``clip`` package's own model and
preprocess, and open_clip's ``load_openai_model``. The ViT-L towers are checked for keys and
shapes on the meta device against the ``clip`` package's model class.
"""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_images, write_folder
from fidkit.distances.frechet import frechet_distance
from fidkit.errors import UsageError, WeightsError
from fidkit.extractors import get_extractor

NAMES = ("clip-vit-b-32", "clip-vit-l-14", "clip-vit-l-14-336px")


def rel_to_largest(ours, theirs) -> float:
    """max |a - b| over max |b|: the feature tolerance of issue 16."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _import_clip():
    """The ``clip`` package (clip-anytorch) imports pkg_resources, gone from setuptools >= 81;
    it only wants ``pkg_resources.packaging``, which the packaging package provides."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            import packaging.version

            sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)
    import clip

    return clip


@pytest.fixture(scope="module")
def b32():
    return get_extractor("clip-vit-b-32")


@pytest.fixture(scope="module")
def b32_weights(tmp_path_factory, b32):
    path = tmp_path_factory.mktemp("clip") / "test-clip-vit-b-32.pt"
    b32.make_test_weights(path, seed=0)
    return path


@pytest.fixture(scope="module")
def b32_model(b32, b32_weights):
    return b32.build(b32.read_weights(b32_weights), ("embedding", "embedding_normalized"))


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """Two folders of 6 PNGs each, half 224x224 (no resize in any convention) and half
    non-square 90x140 (upsampled, cropped or stretched)."""
    root = tmp_path_factory.mktemp("clip-images")
    out = []
    for side, seed in (("a", 30), ("b", 40)):
        folder = root / side
        write_folder(folder, make_images(3, (224, 224), seed=seed))
        imgs = make_images(3, (90, 140), seed=seed + 1)
        from PIL import Image

        for i, img in enumerate(imgs):
            Image.fromarray(img).save(folder / f"img_{i + 3:05d}.png")
        out.append(folder)
    return tuple(out)


def _fidkit_features(folder, weights, convention) -> tuple[np.ndarray, np.ndarray]:
    """fidkit's pipeline on a folder (fidkit.extraction.extract, as compute_statistics runs it):
    the per-image embeddings and their L2-normalised copies, float32 (N, 512)."""
    from fidkit.extraction import Pipeline, Runtime, extract

    result = extract(folder, Pipeline(features="clip-vit-b-32", convention=convention,
                                      weights=str(weights)),
                     Runtime(device="cpu", workers=1, progress=False), keep_features=True,
                     keep_outputs=("embedding_normalized",))
    assert result.meta["convention"] == convention
    return result.features.astype(np.float64), result.outputs["embedding_normalized"]


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


# -- registry ------------------------------------------------------------------------------------


def test_entries_are_registered_with_official_files():
    clip = _import_clip()
    from torch_fidelity.feature_extractor_clip import MODEL_URLS

    official = {"clip-vit-b-32": "ViT-B/32", "clip-vit-l-14": "ViT-L/14",
                "clip-vit-l-14-336px": "ViT-L/14@336px"}
    for name in NAMES:
        e = get_extractor(name)
        assert e.dims == ((512,) if name == "clip-vit-b-32" else (768,))
        assert e.default_convention == "clean-fid"
        assert set(e.conventions()) == {"clean-fid", "torch-fidelity", "cmmd"}
        assert e.extra_outputs == {"embedding_normalized": e.default_dims}
        # The URL is the clip package's and torch-fidelity's; OpenAI's SHA-256 is in it.
        assert e.weights.urls[0] == clip.clip._MODELS[official[name]] == MODEL_URLS[name]
        assert e.weights.urls[0].split("/")[-2] == e.weights.sha256
        assert e.licence.startswith("MIT")


def test_module_does_not_import_torch():
    code = ("import sys; import fidkit.extractors.clip as c; c.CLIP_VIT_B_32.describe(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..")


# -- architecture of the large towers (meta device, no weights) --------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tower_keys_and_shapes_match_the_clip_package(name):
    clip = _import_clip()
    from fidkit.extractors.networks.clip import CLIPImageEncoder, config_from_state

    e = get_extractor(name)
    o = e.options
    text_width = 512 if o["embed_dim"] == 512 else 768
    with torch.device("meta"):
        ours = CLIPImageEncoder(e._config()).state_dict()
        theirs = clip.model.CLIP(o["embed_dim"], o["resolution"], o["layers"], o["width"], o["patch"],
                                 77, 49408, text_width, text_width // 64, 12).state_dict()
    theirs = {k: v for k, v in theirs.items() if k.startswith("visual.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    # Reading the shape off a file's keys (as OpenAI's build_model does) gives the entry's.
    assert config_from_state(theirs) == e._config()


# -- weights files ---------------------------------------------------------------------------------


def test_test_weights_round_trip(b32, b32_weights, tmp_path):
    import warnings

    ours = b32.read_weights(b32_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = torch.jit.load(str(b32_weights), map_location="cpu").state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    # The official dtype split, and the scalar buffers every peer deletes.
    assert ours["visual.conv1.weight"].dtype == torch.float16
    assert ours["visual.proj"].dtype == torch.float16
    assert ours["visual.ln_pre.weight"].dtype == torch.float32
    assert ours["visual.positional_embedding"].dtype == torch.float32
    assert {"input_resolution", "context_length", "vocab_size", "text_projection"} <= set(ours)
    # Deterministic in the seed.
    again = tmp_path / "again.pt"
    b32.make_test_weights(again, seed=0)
    assert all(torch.equal(v, ours[k]) for k, v in b32.read_weights(again).items())
    # A plain state dict with the same keys (bare, and wrapped in a checkpoint) reads the same.
    for i, payload in enumerate(({k: v.clone() for k, v in ours.items()},
                                 {"state_dict": {k: v.clone() for k, v in ours.items()}})):
        plain = tmp_path / f"plain{i}.pth"
        torch.save(payload, plain)
        assert all(torch.equal(v, ours[k]) for k, v in b32.read_weights(plain).items())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line_weights_error(extractor, path) -> str:
    with pytest.raises(WeightsError) as info:
        extractor.read_weights(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_hostile_and_garbage_files_are_refused(b32, b32_weights, tmp_path):
    marker = tmp_path / "pwned"
    # A TorchScript-shaped archive whose data.pkl calls os.system.
    archive = tmp_path / "evil-archive.pt"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    assert "refused global" in _one_line_weights_error(b32, archive)
    # The same payload as a plain torch pickle.
    plain = tmp_path / "evil.pth"
    torch.save({"visual.x": _Evil(marker)}, plain)
    _one_line_weights_error(b32, plain)
    assert not marker.exists()
    # Garbage, an empty file, and a real archive cut short.
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    _one_line_weights_error(b32, garbage)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    _one_line_weights_error(b32, empty)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(b32_weights.read_bytes()[: 1 << 20])
    _one_line_weights_error(b32, cut)
    # A storage record that is shorter than the pickle says.
    short = tmp_path / "short.pt"
    with zipfile.ZipFile(b32_weights) as src, zipfile.ZipFile(short, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data = data[:-2]
            dst.writestr(info, data)
    assert "bytes" in _one_line_weights_error(b32, short)
    # A readable state dict of another network.
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    assert "visual" in _one_line_weights_error(b32, other)


def test_archive_reader_walks_shared_objects_once(tmp_path):
    """A module tree whose nodes are shared (paths double at every level: 2**40 of them here)
    and cyclic is read in linear time, each object under the first name reaching it."""
    from fidkit.extractors.networks.torchscript_archive import read_torchscript_tensors

    fake = types.ModuleType("__torch__")

    class Node:
        def __init__(self, state):
            self.state = state

        def __reduce__(self):
            return (Node, (), self.state)

        def __setstate__(self, state):
            self.state = state

    Node.__module__, Node.__qualname__ = "__torch__", "Node"
    fake.Node = Node
    sys.modules["__torch__"] = fake
    try:
        leaf = Node({"weight": torch.ones(2)})
        node = leaf
        for _ in range(40):
            node = Node({"a": node, "b": node})
        leaf.state["loop"] = node  # a cycle back to the root
        buffer = io.BytesIO()
        torch.save(node, buffer)  # torch's zip container: <name>/data.pkl + data/<key>
    finally:
        del sys.modules["__torch__"]
    archive = tmp_path / "shared.pt"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(archive, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(src.namelist()[0].split("/")[0] + "/constants.pkl", pickle.dumps(()))
    tensors = read_torchscript_tensors(archive)
    assert list(tensors) == [".".join(["a"] * 40 + ["weight"])]


def test_another_clip_model_is_refused(b32_weights):
    state = get_extractor("clip-vit-b-32").read_weights(b32_weights)
    with pytest.raises(WeightsError, match="ViT-L/14"):
        get_extractor("clip-vit-l-14").build(state, ("embedding",))


# -- features and FD against the peers -----------------------------------------------------------


class TestAgainstOpenAI:
    """The ``clip`` package's model and preprocess and open_clip's model on the test archive
    (class-scoped: freed before the next peer is loaded)."""

    @pytest.fixture(scope="class")
    def clip_package(self, b32_weights):
        import open_clip

        clip = _import_clip()
        model, preprocess = clip.load(str(b32_weights), device="cpu")
        yield model.eval(), preprocess, open_clip.load_openai_model(str(b32_weights), device="cpu").eval()

    @pytest.mark.parametrize("size", [(224, 224), (90, 140), (300, 260)])
    def test_features_match(self, size, b32, b32_model, clip_package):
        """The default convention is OpenAI's own preprocess, and the network OpenAI's model."""
        from PIL import Image

        model, preprocess, oc_model = clip_package
        images = make_images(2, size, seed=5)
        conv = b32.convention(None)
        with torch.no_grad():
            theirs_x = torch.stack([preprocess(Image.fromarray(i)) for i in images])
            ours_x = torch.stack([conv.prepare_image(i) for i in images])
            assert torch.equal(ours_x, theirs_x)  # bit for bit
            ours = b32_model(ours_x)
            theirs = model.encode_image(theirs_x)
            theirs_oc = oc_model.encode_image(theirs_x)
        assert rel_to_largest(ours["embedding"], theirs) <= 1e-5
        assert rel_to_largest(ours["embedding"], theirs_oc) <= 1e-5
        unit = theirs / theirs.norm(dim=-1, keepdim=True)
        assert rel_to_largest(ours["embedding_normalized"], unit) <= 1e-5
        # Random weights still give features that differ between images.
        spread = ours["embedding"].std(0).mean() / ours["embedding"].abs().mean()
        assert spread > 0.1


@pytest.fixture(scope="module")
def torch_fidelity_kwargs(clip_folders, b32_weights):
    a, b = clip_folders
    # torch-fidelity stacks undecoded-size images into a batch: 3 = one size per batch.
    return dict(input1=str(a), input2=str(b), cuda=False, cache=False, verbose=False, batch_size=3,
                feature_extractor="clip-vit-b-32", feature_extractor_weights_path=str(b32_weights),
                save_cpu_ram=True)


class TestAgainstTorchFidelity:
    @pytest.fixture(scope="class")
    def peer(self, torch_fidelity_kwargs):
        """torch-fidelity's clip-vit-b-32 extractor, reading the test archive with torch.jit.load."""
        from torch_fidelity.utils import create_feature_extractor

        kwargs = {k: v for k, v in torch_fidelity_kwargs.items() if k != "feature_extractor"}
        yield create_feature_extractor("clip-vit-b-32", ["clip"], **kwargs)

    @pytest.mark.parametrize("size", [(224, 224), (90, 140)])
    def test_features_match(self, size, b32, b32_model, peer):
        images = torch.from_numpy(make_images(2, size, seed=7)).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            (theirs,) = peer(images)
            ours = b32_model(b32.convention("torch-fidelity").prepare(images.float()))["embedding"]
        assert rel_to_largest(ours, theirs) <= 1e-5

    def test_statistics_and_fd_match(self, b32_weights, clip_folders, torch_fidelity_kwargs, peer):
        """Folder to statistics to FD: torch-fidelity's statistics and its own Frechet function."""
        from torch_fidelity.metric_fid import fid_input_id_to_statistics, fid_statistics_to_metric

        kwargs = {k: v for k, v in torch_fidelity_kwargs.items() if k != "feature_extractor"}
        theirs = [fid_input_id_to_statistics(i, peer, "clip", **kwargs) for i in (1, 2)]
        ours = [_moments(_fidkit_features(f, b32_weights, "torch-fidelity")[0]) for f in clip_folders]
        for (mu, sigma), t in zip(ours, theirs):
            assert rel_to_largest(mu, t["mu"]) <= 1e-5
            assert rel_to_largest(sigma, t["sigma"]) <= 1e-5
        fd_ours = frechet_distance(*ours[0], *ours[1])
        assert fd_ours > 0
        peer_own = fid_statistics_to_metric(theirs[0], theirs[1], False)["frechet_inception_distance"]
        assert abs(fd_ours - peer_own) <= 1e-4 * peer_own


@pytest.mark.slow
def test_fd_matches_torch_fidelity_end_to_end(b32_weights, clip_folders, torch_fidelity_kwargs):
    """torch-fidelity's calculate_metrics on the two folders, as a user runs it."""
    import torch_fidelity

    ours = [_moments(_fidkit_features(f, b32_weights, "torch-fidelity")[0]) for f in clip_folders]
    fd_ours = frechet_distance(*ours[0], *ours[1])
    peer_own = torch_fidelity.calculate_metrics(fid=True, **torch_fidelity_kwargs)["frechet_inception_distance"]
    assert abs(fd_ours - peer_own) <= 1e-4 * peer_own


@pytest.fixture()
def clean_fid_clip(monkeypatch, b32_weights):
    """clean-fid's CLIP_fx with ``clip.load`` pointed at the test archive (on the CPU)."""
    clip = _import_clip()
    from cleanfid import clip_features

    original = clip.load
    monkeypatch.setattr(clip_features.clip, "load",
                        lambda name, device="cpu", **kw: original(str(b32_weights), device="cpu"))
    return clip_features


def _clean_fid_features(clean_fid_clip, folders):
    from cleanfid import fid as cleanfid

    cpu = torch.device("cpu")
    peer = clean_fid_clip.CLIP_fx("ViT-B/32", device=cpu)
    return [cleanfid.get_folder_features(str(f), peer, num_workers=0, batch_size=6, device=cpu,
                                         mode="clean", custom_fn_resize=clean_fid_clip.img_preprocess_clip,
                                         verbose=False)
            for f in folders]


def test_features_and_fd_match_clean_fid(b32_weights, clip_folders, clean_fid_clip):
    """clean-fid's CLIP-FID pipeline (its folder reader, resize, CLIP_fx) and its Frechet function."""
    from cleanfid import fid as cleanfid

    theirs = _clean_fid_features(clean_fid_clip, clip_folders)
    ours, unit = zip(*(_fidkit_features(f, b32_weights, "clean-fid") for f in clip_folders))
    for o, u, t in zip(ours, unit, theirs):
        assert rel_to_largest(o, t) <= 1e-5
        assert rel_to_largest(u, t / np.linalg.norm(t, axis=1, keepdims=True)) <= 1e-5
    fd_ours = frechet_distance(*_moments(ours[0]), *_moments(ours[1]))
    assert fd_ours > 0
    peer_own = cleanfid.frechet_distance(*_moments(theirs[0]), *_moments(theirs[1]))
    assert abs(fd_ours - peer_own) <= 1e-4 * peer_own


@pytest.mark.slow
def test_fd_matches_clean_fid_end_to_end(b32_weights, clip_folders, clean_fid_clip):
    """clean-fid's compute_fid(model_name="clip_vit_b_32") on the two folders, as a user runs it."""
    from cleanfid import fid as cleanfid

    ours = [_fidkit_features(f, b32_weights, "clean-fid")[0] for f in clip_folders]
    fd_ours = frechet_distance(*_moments(ours[0]), *_moments(ours[1]))
    peer_own = cleanfid.compute_fid(str(clip_folders[0]), str(clip_folders[1]), mode="clean",
                                    model_name="clip_vit_b_32", device=torch.device("cpu"),
                                    num_workers=0, batch_size=6, verbose=False)
    assert abs(fd_ours - peer_own) <= 1e-4 * peer_own


# -- conventions -------------------------------------------------------------------------------


def test_clean_fid_normalisation_equals_its_two_divisions():
    """clean-fid divides by 255 in ToTensor, multiplies back, divides again: for every uint8
    value that is float32 k / 255 exactly, which is what the convention computes."""
    k = torch.arange(256, dtype=torch.uint8)
    once = k.float() / 255
    assert torch.equal(((k.float().div(255)) * 255) / 255.0, once)


@pytest.mark.parametrize("size", [(336, 336), (90, 140), (401, 333)])
def test_cmmd_convention_is_the_reference_reader(size):
    """CMMD's reader (google-research cmmd/io_util.py), restated with PIL: crop the centred
    square with floored offsets, PIL bicubic to 336, float32 / 255, then (x - mean) / std."""
    from PIL import Image

    e = get_extractor("clip-vit-l-14-336px")
    images = make_images(2, size, seed=9)
    mean = np.array([0.48145466, 0.4578275, 0.40821073]).astype(np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711]).astype(np.float32)
    for image in images:
        im = Image.fromarray(image)
        w, h = im.size
        side = min(w, h)
        top, left = (h - side) // 2, (w - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((336, 336), resample=Image.BICUBIC)
        x = np.asarray(im).astype(np.float32) / 255.0
        expected = ((x - mean) / std).transpose(2, 0, 1)
        ours = e.convention("cmmd").prepare_image(image).numpy()
        assert ours.shape == (3, 336, 336)
        np.testing.assert_array_equal(ours, expected)


def test_network_refuses_other_sizes_and_outputs(b32_model):
    with pytest.raises(UsageError, match="224"):
        b32_model(torch.zeros(1, 3, 200, 200))
    from fidkit.extractors.networks.clip import check_outputs

    with pytest.raises(UsageError):
        check_outputs(("logits",))
