"""The default CPU network (fidkit.extractors.networks.inception_blocked) gives the reference network's features bit for bit.

The reference is the plain module (``nn.Conv2d``, ``nn.BatchNorm2d``, ReLU in NCHW: pytorch-fid's
operations, whose features tests/test_parity.py holds to the peers'). Checked at every tap, at
several batch sizes and thread counts, layer by layer, and through the self-check that guards
the fast path on a user's machine (which must be able to fail: a one-ulp change is caught).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import layer_inputs_and_outputs, make_images

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="the blocked network needs torch's oneDNN")

TAPS = ("64", "192", "768", "2048", "logits", "logits_unbiased")


@pytest.fixture(scope="module")
def model(test_weights):
    from fidkit.extractors.runner import load_model

    net, _ = load_model(str(test_weights), outputs=("2048",), device="cpu")
    return net


@pytest.fixture(scope="module")
def blocked(model):
    from fidkit.extractors.networks.inception_blocked import blocked_copy

    return blocked_copy(model)


def _images(count: int, seed: int) -> torch.Tensor:
    from fidkit.preprocess import get_convention

    conv = get_convention("tf1")
    sizes = [(64, 48), (120, 90), (299, 299)]
    return torch.stack([conv.prepare_image(make_images(1, sizes[k % 3], seed=seed + k)[0])
                        for k in range(count)])


def _both(model, blocked, x):
    model.outputs = blocked.outputs = TAPS
    try:
        with torch.inference_mode():
            return model(x), blocked(x)
    finally:
        model.outputs = blocked.outputs = ("2048",)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_every_output_is_bit_identical(model, blocked, batch):
    ref, got = _both(model, blocked, _images(batch, seed=100 * batch))
    for tap in TAPS:
        assert got[tap].dtype == torch.float32 and not got[tap].is_mkldnn
        assert torch.equal(got[tap], ref[tap]), \
            f"{tap}: {(got[tap] - ref[tap]).abs().max().item():.2e} from the reference"
    # the features vary between images, so equality is not trivial
    if batch > 1:
        assert float(ref["2048"].std(0).mean()) > 1e-3 * float(ref["2048"].abs().max())


def test_bit_identical_with_one_thread(model, blocked):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, got = _both(model, blocked, torch.rand(2, 3, 299, 299) * 2 - 1)
    finally:
        torch.set_num_threads(threads)
    for tap in TAPS:
        assert torch.equal(got[tap], ref[tap]), tap


def test_every_layer_is_bit_identical_on_its_own_input(model, blocked):
    """Each of the 94 convolution + batch norm + ReLU layers, fed the very tensor the reference
    network fed it: the blocked layer (packed weights, batch norm as a depthwise convolution)
    returns the same bits. Localises a failure of the end-to-end check."""
    from fidkit.extractors.networks.inception_blocked import BlockedConv2d

    inputs, outputs = layer_inputs_and_outputs(model, _images(2, seed=7))
    layers = dict(blocked.named_modules())
    assert len(inputs) == 94
    differ = []
    with torch.inference_mode():
        for name, inp in inputs.items():
            assert isinstance(layers[name], BlockedConv2d), name
            out = layers[name](inp)
            assert out.is_mkldnn  # really the blocked path, not a dense fallback
            if not torch.equal(out.to_dense(), outputs[name]):
                differ.append(name)
    assert differ == []


def test_batch_norm_is_the_fused_multiply_add_the_blocked_layer_relies_on():
    """torch's eval batch norm is fma(x, a, b) with a = rsqrt(var + eps) * gamma and
    b = fma(-mean, a, beta): checked against an exact float64 evaluation of that formula (the
    products of float32 numbers are exact in float64), on values where mul-then-add differs."""
    torch.manual_seed(0)
    channels = 64
    bn = torch.nn.BatchNorm2d(channels, eps=1e-3).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-5, 5)
        bn.running_var.uniform_(0.5, 50)
    x = torch.randn(4, channels, 9, 9) * 30
    with torch.inference_mode():
        out = bn(x)
        a = torch.rsqrt(bn.running_var + bn.eps) * bn.weight
        b = (-bn.running_mean.double() * a.double() + bn.bias.double()).float()
        fused = (x.double() * a.double().view(1, -1, 1, 1) + b.double().view(1, -1, 1, 1)).float()
        unfused = x * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    assert not torch.equal(unfused, fused)  # the two roundings really differ on these values
    # float64 then float32 rounds twice; a tie at float32 precision is rare, not impossible
    assert (out != fused).float().mean().item() < 1e-4


def test_self_check_catches_a_one_ulp_change(model):
    from fidkit.extractors.networks.inception_blocked import blocked_copy, check_bit_identical

    other = blocked_copy(model)
    assert check_bit_identical(model, other) is None
    layer = other.Mixed_7c.branch_pool
    # every channel's batch-norm shift one float32 step up (a single channel may be all ReLU'd)
    layer.shift.copy_(torch.nextafter(layer.shift, torch.full_like(layer.shift, np.inf)))
    reason = check_bit_identical(model, other)
    assert reason is not None and "2048" in reason and "differs" in reason


def test_failed_self_check_falls_back_to_the_reference_network(test_weights, tmp_path,
                                                               monkeypatch, capsys):
    import fidkit
    import fidkit.extractors.networks.inception_blocked
    from conftest import write_folder
    from fidkit.extractors.runner import _COPIES, inference_copy, load_model

    folder = write_folder(tmp_path / "f", make_images(4, (40, 40), seed=3))
    kwargs = dict(dims=64, weights=str(test_weights), device="cpu", progress=False, cache=False)
    good = fidkit.compute_statistics(folder, **kwargs)
    assert good.meta["network"] == "blocked"
    monkeypatch.setattr(fidkit.extractors.networks.inception_blocked, "check_bit_identical",
                        lambda *a, **k: "tap 2048 differs from the reference network by up to 1e-07")
    net, _ = load_model(str(test_weights), device="cpu")
    _COPIES.pop(net, None)  # forget this process's verified copy
    capsys.readouterr()
    assert inference_copy(net, "blocked") is net
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "running the reference network" in err and "2048" in err
    fallback = fidkit.compute_statistics(folder, **kwargs)
    assert fallback.meta["network"] == "reference"
    assert np.array_equal(fallback.mu, good.mu) and np.array_equal(fallback.sigma, good.sigma)
    _COPIES.pop(net, None)


def test_a_torch_without_the_blocked_ops_runs_the_reference_network(model, monkeypatch, capsys):
    import fidkit.extractors.networks.inception_blocked

    def missing(_model):
        raise AttributeError("module 'torch._C._nn' has no attribute 'mkldnn_reorder_conv2d_weight'")

    monkeypatch.setattr(fidkit.extractors.networks.inception_blocked, "blocked_copy", missing)
    assert fidkit.extractors.networks.inception_blocked.verified_blocked_copy(model) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be built here (AttributeError" in err


def test_blocked_copy_is_memoised_and_follows_reloaded_weights(model, test_weights):
    from fidkit.extractors.runner import inference_copy
    from fidkit.extractors.weights import load_state_dict, resolve_weights

    first = inference_copy(model, "blocked")
    assert first is not model and inference_copy(model, "blocked") is first
    model.load_weights(load_state_dict(resolve_weights(str(test_weights))))
    assert inference_copy(model, "blocked") is not first
    import copy

    copy.deepcopy(model)  # the copies live beside the model: its opaque tensors are not met


def test_network_path_reads_the_api_argument():
    from fidkit.errors import UsageError
    from fidkit.extractors.runner import network_path

    assert network_path(None, "cpu") == network_path("auto", "cpu") == "blocked"
    assert network_path("blocked", "cpu") == "blocked"
    assert network_path("reference", "cpu") == "reference"
    assert network_path(None, "cuda") == "reference"
    with pytest.raises(UsageError, match="auto, reference, blocked"):
        network_path("fastest", "cpu")


def test_network_choices_are_listed_once_for_the_command_line():
    from fidkit.cli.common import NETWORK_CHOICES as CLI
    from fidkit.extractors.runner import NETWORK_CHOICES

    assert CLI == NETWORK_CHOICES
