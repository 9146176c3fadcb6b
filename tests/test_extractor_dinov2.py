"""DINOv2 extractors (fidkit.extractors.dinov2): the network against independent implementations
fed the same random weights, the position-embedding resampling against the official formula
evaluated here in float64, and each convention against its tool's own preprocessing.

Peers: timm's VisionTransformer and transformers' Dinov2Model (keys mapped) at 518x518, where no
resampling happens; at 224x224 and at a non-square size, timm's VisionTransformer built for that
grid and given position embeddings resampled by this file's float64 evaluation of the official
formula (timm and transformers resample to a size, which is not what the official code does).
When a checkout of facebookresearch/dinov2 is at hand ($FIDKIT_DINOV2_REPO, or torch hub's cache
folder facebookresearch_dinov2_main), torch-fidelity's own extractor runs the official code on
the same weights file too.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fidkit.errors import WeightsError
from fidkit.extractors import get_extractor

VARIANTS = {  # name -> (timm model, dims, parameter count of the official module)
    # Parameter counts: the official hub backbones built with pretrained=False (README: 21 M,
    # 86 M, 300 M, 1,100 M).
    "dinov2-vit-s-14": ("vit_small_patch14_dinov2", 384, 22_056_576),
    "dinov2-vit-b-14": ("vit_base_patch14_dinov2", 768, 86_580_480),
    "dinov2-vit-l-14": ("vit_large_patch14_dinov2", 1024, 304_368_640),
    "dinov2-vit-g-14": ("vit_giant_patch14_dinov2", 1536, 1_136_480_768),
}
SMALL = get_extractor("dinov2-vit-s-14")


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    SMALL.make_test_weights(path, seed=0)
    return path


@pytest.fixture(scope="module")
def small_state(small_weights) -> dict:
    return SMALL.read_weights(small_weights)


@pytest.fixture(scope="module")
def small_net(small_state):
    return SMALL.build(small_state, ("cls",))


def images(sizes, seed=0) -> list[np.ndarray]:
    """uint8 (H, W, 3) images with structure: smooth colour fields plus texture."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.rand(1, 3, 4, 4, generator=g)
        smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        noise = torch.rand(1, 3, h, w, generator=g)
        img = (0.8 * smooth + 0.2 * noise).clamp(0, 1)[0].permute(1, 2, 0)
        out.append((img * 255).round().to(torch.uint8).numpy())
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


# -- the position embeddings -------------------------------------------------------------------


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 (torch's A = -0.75)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic_axis(n_in: int, n_out: int, step: float) -> np.ndarray:
    """(n_out, n_in) float64 matrix: output i samples input coordinate (i + 0.5) * step - 0.5 with
    the 4 nearest taps, indices clamped at the border (no antialias)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * step - 0.5
        base = math.floor(src)
        for k, wt in zip(range(-1, 3), _cubic_weights(src - base)):
            m[i, min(max(base + k, 0), n_in - 1)] += wt
    return m


def official_pos_embed(pos: torch.Tensor, gh: int, gw: int, *, by_size: bool = False) -> torch.Tensor:
    """The official DINOv2 resampling, evaluated independently in float64: the M x M grid is
    resampled bicubically with scale factor (g + 0.1) / M per axis, so output pixel i samples input
    coordinate (i + 0.5) * M / (g + 0.1) - 0.5. ``by_size``: the size-based mapping
    (i + 0.5) * M / g - 0.5 of transformers / timm instead."""
    p = pos.double().numpy()[0]
    m = int(round(math.sqrt(p.shape[0] - 1)))
    grid = p[1:].reshape(m, m, -1)
    step_h = m / gh if by_size else m / (gh + 0.1)
    step_w = m / gw if by_size else m / (gw + 0.1)
    rows, cols = _bicubic_axis(m, gh, step_h), _bicubic_axis(m, gw, step_w)
    out = np.einsum("ia,jb,abd->ijd", rows, cols, grid).reshape(gh * gw, -1)
    return torch.from_numpy(np.concatenate([p[:1], out]))[None]


@pytest.mark.parametrize("grid", [(16, 16), (9, 7), (5, 11), (40, 40)])
def test_pos_embed_resampling_is_the_official_formula(grid):
    from fidkit.extractors.networks.dinov2 import interpolate_pos_embed

    pos = torch.randn(1, 1 + 37 * 37, 6, generator=torch.Generator().manual_seed(1))
    got = interpolate_pos_embed(pos, *grid)
    want = official_pos_embed(pos, *grid)
    assert got.shape == want.shape == (1, 1 + grid[0] * grid[1], 6)
    # torch computes the sample positions in float32 (up to ~37 * 2**-24 off), hence not 1e-7.
    assert relative_error(got, want) < 1e-5
    # The test can tell the official mapping from resampling to a size (what transformers and
    # timm do): on the same embeddings the two differ far beyond the tolerance.
    assert relative_error(want, official_pos_embed(pos, *grid, by_size=True)) > 1e-3


def test_pos_embed_unchanged_on_the_training_grid():
    from fidkit.extractors.networks.dinov2 import interpolate_pos_embed

    pos = torch.randn(1, 1 + 37 * 37, 4)
    assert interpolate_pos_embed(pos, 37, 37) is pos


# -- the whole network ---------------------------------------------------------------------------


def timm_peer(state: dict, img_size: tuple[int, int], pos_embed: torch.Tensor | None = None,
              **arch):
    """timm's VisionTransformer in the DINOv2 configuration, given ``state`` (official keys)."""
    from timm.models.vision_transformer import VisionTransformer

    arch = arch or dict(embed_dim=384, depth=12, num_heads=6)
    with torch.device("meta"):  # no random initialisation: every tensor comes from state
        model = VisionTransformer(img_size=img_size, patch_size=14, num_classes=0, init_values=1.0,
                                  **arch)
    mapped = {k.replace(".w12.", ".fc1.").replace(".w3.", ".fc2."): v for k, v in state.items()
              if k != "mask_token"}
    if pos_embed is not None:
        mapped["pos_embed"] = pos_embed.float()
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.eval()


def timm_features(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)[:, 0]


def transformers_peer(state: dict):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
                          image_size=518, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6,
                          qkv_bias=True, use_swiglu_ffn=False)
    with torch.device("meta"):
        model = Dinov2Model(config).eval()
    mapped = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"],
              "embeddings.position_embeddings": state["pos_embed"],
              "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
              "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
              "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(12):
        b, t = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[b + f"attn.qkv.{part}"].chunk(3, dim=0)
            mapped.update({t + f"attention.q_proj.{part}": q, t + f"attention.k_proj.{part}": k,
                           t + f"attention.v_proj.{part}": v,
                           t + f"attention.o_proj.{part}": state[b + f"attn.proj.{part}"]})
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                mapped[t + f"{name}.{part}"] = state[b + f"{name}.{part}"]
        mapped[t + "layer_scale1.lambda1"] = state[b + "ls1.gamma"]
        mapped[t + "layer_scale2.lambda1"] = state[b + "ls2.gamma"]
    model.load_state_dict(mapped, strict=True, assign=True)
    return model


def network_input(h: int, w: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    """ImageNet-normalised (N, 3, h, w) input made from structured images."""
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() for im in images([(h, w)] * n, seed)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    return (x - mean) / std


@pytest.mark.slow  # three ViT-S passes over 1370 tokens
def test_network_at_518_matches_timm_and_transformers(small_state, small_net):
    x = network_input(518, 518, n=1)
    with torch.no_grad():
        ours = small_net(x)["cls"]
        hf = transformers_peer(small_state)(pixel_values=x).pooler_output
    theirs = timm_features(timm_peer(small_state, (518, 518)), x)
    assert ours.shape == (1, 384) and ours.dtype == torch.float32
    assert relative_error(ours, theirs) <= 1e-5
    assert relative_error(ours, hf) <= 1e-5


@pytest.mark.parametrize("size", [(224, 224), (126, 98)])
def test_network_with_official_resampling_matches_timm(small_state, small_net, size):
    h, w = size
    x = network_input(h, w, n=2, seed=1)
    pos = official_pos_embed(small_state["pos_embed"], h // 14, w // 14)
    with torch.no_grad():
        ours = small_net(x)["cls"]
    theirs = timm_features(timm_peer(small_state, size, pos), x)
    assert relative_error(ours, theirs) <= 1e-5
    # Features differ clearly between images (the test weights are not degenerate) ...
    assert float(ours.std(0).norm() / ours.norm(dim=1).mean()) > 0.05
    # ... and resampling to a size instead (transformers, timm) gives features the tolerance
    # tells apart: the comparison above checks the resampling, not only the transformer.
    by_size = official_pos_embed(small_state["pos_embed"], h // 14, w // 14, by_size=True)
    assert relative_error(timm_features(timm_peer(small_state, size, by_size), x), ours) > 1e-4


def test_swiglu_network_matches_timm():
    """ViT-g's SwiGLU feed-forward (packed w12: gate then value) on a small network of that
    kind: 2 blocks, width 48, trained grid 5x5, against timm's SwiGLUPacked ViT."""
    from timm.layers import SwiGLUPacked

    from fidkit.extractors.networks.dinov2 import DinoV2Architecture, DinoV2ViT

    arch = DinoV2Architecture(embed_dim=48, depth=2, num_heads=4, ffn="swiglu", train_size=70)
    assert arch.ffn_hidden == 128  # (int(192 * 2 / 3) + 7) // 8 * 8
    torch.manual_seed(3)
    ours = DinoV2ViT(arch).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 and p.shape[0] == 48 else 0.0))
    state = ours.state_dict()
    theirs = timm_peer(state, (70, 70), embed_dim=48, depth=2, num_heads=4, mlp_ratio=2 * 128 / 48,
                       mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU)
    x = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        mine = ours(x)["cls"]
    assert relative_error(mine, timm_features(theirs, x)) <= 1e-5


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_layout_matches_timm_and_official_parameter_count(name):
    """Keys and shapes of every variant, on the meta device (nothing allocated): the official
    layout timm's DINOv2 models load (their keys mapped back), and the official parameter count."""
    import timm

    from fidkit.extractors.networks.dinov2 import DinoV2ViT, state_dict_shapes

    extractor = get_extractor(name)
    timm_name, dims, count = VARIANTS[name]
    arch = extractor._architecture()
    with torch.device("meta"):
        ours = DinoV2ViT(arch)
        peer = timm.create_model(timm_name, pretrained=False, num_classes=0)
        features = ours(torch.empty(2, 3, 224, 224))["cls"]
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == state_dict_shapes(arch)
    timm_shapes = {k.replace(".fc1.", ".w12.").replace(".fc2.", ".w3.") if arch.ffn == "swiglu" else k:
                   tuple(v.shape) for k, v in peer.state_dict().items()}
    assert timm_shapes == {k: v for k, v in shapes.items() if k != "mask_token"}
    assert sum(math.prod(s) for s in shapes.values()) == count
    assert tuple(features.shape) == (2, dims) and extractor.dims == (dims,)
    assert {k: extractor.options[k] for k in ("embed_dim", "depth", "num_heads", "ffn")} == \
        {"embed_dim": arch.embed_dim, "depth": arch.depth, "num_heads": arch.num_heads, "ffn": arch.ffn}


# -- conventions: each tool's own preprocessing ---------------------------------------------------

SIZES = [(224, 224), (5, 7), (31, 64), (300, 260)]  # identity, upscaled non-square, mixed, shrunk


def prepared(convention: str, img: np.ndarray) -> torch.Tensor:
    return SMALL.convention(convention).prepare_image(img)


@pytest.mark.parametrize("size", SIZES)
def test_dgm_eval_convention_is_dgm_evals_transform(size):
    """dgm-eval's DINOv2Encoder.transform (no --clean_resize): torchvision Resize((224, 224),
    BICUBIC) on the PIL image, ToTensor, Normalize with numpy mean/std."""
    import torchvision.transforms as TF
    from PIL import Image

    img = images([size], seed=5)[0]
    pil = Image.fromarray(img).convert("RGB")
    resized = TF.Compose([TF.Resize((224, 224), TF.InterpolationMode.BICUBIC), TF.ToTensor()])(pil)
    want = TF.Normalize(np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))(resized)
    assert torch.equal(prepared("dgm-eval", img), want)


@pytest.mark.parametrize("size", SIZES)
def test_dgm_eval_convention_is_edm2_pil_mode(size):
    """EDM2 DINOv2Detector with resize_mode='pil' (said there to match dgm-eval exactly)."""
    from PIL import Image

    img = images([size], seed=6)[0]
    x = np.array(np.uint8(Image.fromarray(img, "RGB").resize((224, 224), Image.Resampling.BICUBIC)))
    x = torch.from_numpy(x).permute(2, 0, 1)[None].to(torch.float32) / 255
    x = x - torch.as_tensor(np.asarray([0.485, 0.456, 0.406]), dtype=torch.float32).reshape(1, -1, 1, 1)
    x = x / torch.as_tensor(np.asarray([0.229, 0.224, 0.225]), dtype=torch.float32).reshape(1, -1, 1, 1)
    assert torch.equal(prepared("dgm-eval", img), x[0])


@pytest.mark.parametrize("size", SIZES)
def test_edm2_convention_is_edm2_torch_mode(size):
    """EDM2 DINOv2Detector's default resize_mode='torch'."""
    img = images([size], seed=7)[0]
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x.to(torch.float32), size=(224, 224), mode="bicubic", antialias=True)
    x = x.to(torch.float32) / 255
    x = x - torch.as_tensor(np.asarray([0.485, 0.456, 0.406]), dtype=torch.float32).reshape(1, -1, 1, 1)
    x = x / torch.as_tensor(np.asarray([0.229, 0.224, 0.225]), dtype=torch.float32).reshape(1, -1, 1, 1)
    assert torch.equal(prepared("edm2", img), x[0])


class _Recorder(torch.nn.Module):
    """Stands in for the network inside torch-fidelity's extractor: returns its input."""

    def forward(self, x):
        return x


def torch_fidelity_extractor(monkeypatch, model_for):
    """torch-fidelity 0.4.0's FeatureExtractorDinoV2 with torch.hub.load answered by
    ``model_for(hub_name)`` (it has no way to take a local network or weights file)."""
    from torch_fidelity import feature_extractor_dinov2 as tfd

    monkeypatch.setattr(tfd.torch.hub, "load", lambda repo, name, *a, **k: model_for(name))
    return tfd.FeatureExtractorDinoV2("dinov2-vit-s-14", ["dinov2"])


@pytest.mark.parametrize("size", SIZES)
def test_torch_fidelity_convention_is_torch_fidelitys_forward(monkeypatch, size):
    extractor = torch_fidelity_extractor(monkeypatch, lambda name: _Recorder())
    img = images([size], seed=8)[0]
    (want,) = extractor(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
    assert torch.equal(prepared("torch-fidelity", img), want[0])


def test_torch_fidelity_end_to_end_with_official_resampling(monkeypatch, small_state, small_net):
    """torch-fidelity's extractor (its preprocessing, then a DINOv2 network at 224 with the
    official position embeddings, here timm's) against fidkit's convention + network."""
    pos = official_pos_embed(small_state["pos_embed"], 16, 16)
    peer = timm_peer(small_state, (224, 224), pos)

    class Cls(torch.nn.Module):
        def forward(self, x):
            return peer.forward_features(x)[:, 0]

    extractor = torch_fidelity_extractor(monkeypatch, lambda name: Cls())
    imgs = images([(96, 80), (17, 40)], seed=9)
    for img in imgs:
        (want,) = extractor(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
        with torch.no_grad():
            ours = small_net(prepared("torch-fidelity", img)[None])["cls"]
        assert relative_error(ours, want) <= 1e-5


def _official_repo() -> Path | None:
    candidates = [os.environ.get("FIDKIT_DINOV2_REPO"),
                  os.path.join(torch.hub.get_dir(), "facebookresearch_dinov2_main")]
    for c in candidates:
        if c and (Path(c) / "hubconf.py").is_file():
            return Path(c)
    return None


@pytest.mark.skipif(_official_repo() is None, reason="no facebookresearch/dinov2 checkout "
                    "($FIDKIT_DINOV2_REPO or torch hub's facebookresearch_dinov2_main)")
def test_official_code_through_torch_fidelity(monkeypatch, tmp_path, small_weights, small_net):
    """The official hub backbone, loading the weights file itself as torch.hub does, inside
    torch-fidelity's extractor: the whole torch-fidelity pipeline against fidkit's."""
    repo = _official_repo()
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    os.symlink(small_weights, hub / "checkpoints" / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("XFORMERS_DISABLED", "1")
    original_load, original_dir = torch.hub.load, torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        extractor = torch_fidelity_extractor(
            monkeypatch, lambda name: original_load(str(repo), name, source="local"))
        for img in images([(224, 224), (50, 90)], seed=10):
            (want,) = extractor(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())
            with torch.no_grad():
                ours = small_net(prepared("torch-fidelity", img)[None])["cls"]
            assert relative_error(ours, want) <= 1e-5
    finally:
        torch.hub.set_dir(original_dir)


def test_conventions_registered_as_declared():
    from fidkit.preprocess.dinov2 import CONVENTION_NAMES

    for name in VARIANTS:
        e = get_extractor(name)
        assert e.convention_names == CONVENTION_NAMES == tuple(e.conventions())
        assert e.default_convention == "dgm-eval"
        assert not e.convention("dgm-eval").batched_on_device  # PIL, per image
        assert e.weights.urls[0] == ("https://dl.fbaipublicfiles.com/dinov2/"
                                     f"{e.weights.filename[:13]}/{e.weights.filename}")


# -- weights files ---------------------------------------------------------------------------------


def test_make_test_weights_is_deterministic_and_accepted(tmp_path, small_weights, small_state):
    again = tmp_path / "again.pth"
    other = tmp_path / "other.pth"
    SMALL.make_test_weights(again, seed=0)
    SMALL.make_test_weights(other, seed=1)
    assert again.read_bytes() == small_weights.read_bytes()
    state1 = SMALL.read_weights(other)
    assert list(small_state) == list(state1)
    assert not torch.equal(small_state["blocks.3.attn.qkv.weight"], state1["blocks.3.attn.qkv.weight"])
    model = SMALL.build(state1, ("cls",))
    with torch.no_grad():
        assert model(network_input(28, 42, n=2))["cls"].shape == (2, 384)


def test_read_weights_accepts_the_chunked_training_layout(tmp_path, small_state):
    # FSDP-chunked checkpoints: 4 chunks of 3 blocks, each padded with identities in front.
    chunked = {}
    for key, value in small_state.items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // 3}.{key[len('blocks.'):]}"
        chunked[key] = value
    path = tmp_path / "chunked.pth"
    torch.save(chunked, path)
    state = SMALL.read_weights(path)
    assert list(state) == list(small_state)
    assert all(torch.equal(state[k], small_state[k]) for k in state)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_read_weights_refuses_wrong_files(tmp_path, small_state):
    cases = {
        "garbage.pth": (tmp_path / "garbage.pth", "not a loadable PyTorch weights file"),
        "wide.pth": (_save(tmp_path / "wide.pth", {"cls_token": torch.zeros(1, 1, 768)}), "768-wide"),
        "short.pth": (_save(tmp_path / "short.pth", {k: v for k, v in small_state.items()
                                                       if not k.startswith("blocks.11.")}),
                      "missing keys"),
        "reg.pth": (_save(tmp_path / "reg.pth", {**small_state, "register_tokens": torch.zeros(1, 4, 384)}),
                    "with-registers"),
        "shape.pth": (_save(tmp_path / "shape.pth", {**small_state, "pos_embed": torch.zeros(1, 257, 384)}),
                      "pos_embed has shape"),
        "list.pth": (_save(tmp_path / "list.pth", [1, 2]), "plain state dict"),
    }
    (tmp_path / "garbage.pth").write_bytes(b"not a zip file at all")
    for name, (path, words) in cases.items():
        with pytest.raises(WeightsError) as info:
            SMALL.read_weights(path)
        message = str(info.value)
        assert words in message and name in message and "dinov2_vits14_pretrain.pth" in message
        assert "\n" not in message


def test_read_weights_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"cls_token": Evil()}, path)
    with pytest.raises(WeightsError):
        SMALL.read_weights(path)


def test_build_refuses_unknown_outputs(small_state):
    from fidkit.errors import UsageError

    with pytest.raises(UsageError):
        SMALL.build(small_state, ("logits",))
