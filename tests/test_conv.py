"""fidkit.conv against real torch layers: random configurations (hypothesis) must give torch's
output shape, and the configurations torch refuses must be refused; trace against a real forward
pass and the FID Inception's published tap sizes."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fidkit import conv as fc
from fidkit.cli import main
from fidkit.errors import UsageError

#: Examples per property test; FIDKIT_CONV_EXAMPLES=5000 runs a longer search (about 10x the time).
N_EXAMPLES = int(os.environ.get("FIDKIT_CONV_EXAMPLES", "400"))
EXAMPLES = settings(max_examples=N_EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

nds = st.integers(1, 3)


def axes(nd: int, lo: int, hi: int) -> st.SearchStrategy:
    """An int (same on every axis) or one int per axis."""
    return st.one_of(st.integers(lo, hi), st.tuples(*[st.integers(lo, hi)] * nd))


def torch_shape(make_layer, spatial, onednn=True):
    """The spatial output shape torch gives, or None if torch refuses the layer or the input."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        backend = contextlib.nullcontext() if onednn else torch.backends.mkldnn.flags(enabled=False)
        try:
            with backend:
                layer = make_layer()
                return tuple(layer(torch.zeros(1, 1, *spatial)).shape[2:])
        except (RuntimeError, ValueError, TypeError, NotImplementedError):
            return None


def ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs).output_size
    except UsageError:
        return None


def agree(expected, got, config):
    # A refusal on one side only is as much a failure as a wrong size.
    assert got == expected, f"torch {expected}, fidkit {got} for {config}"


@EXAMPLES
@given(st.data())
def test_conv_matches_torch(data):
    nd = data.draw(nds)
    size = data.draw(st.tuples(*[st.integers(0, 11)] * nd))  # 0: torch refuses empty axes
    k = data.draw(axes(nd, 0, 5))
    s = data.draw(axes(nd, 0, 3))
    d = data.draw(axes(nd, 0, 3))
    p = data.draw(st.one_of(axes(nd, -1, 3), st.sampled_from(["same", "valid"])))
    layer_class = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    expected = torch_shape(lambda: layer_class(1, 1, k, stride=s, padding=p, dilation=d), size)
    agree(expected, ours(fc.conv, size, k, s, p, d), (size, k, s, p, d))


@EXAMPLES
@given(st.data())
def test_conv_transpose_matches_torch(data):
    nd = data.draw(nds)
    size = data.draw(st.tuples(*[st.integers(1, 9)] * nd))
    k = data.draw(axes(nd, 0, 5))
    s = data.draw(axes(nd, 1, 3))
    d = data.draw(axes(nd, 1, 3))
    p = data.draw(axes(nd, -1, 4))
    op = data.draw(axes(nd, 0, 3))
    layer_class = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1]
    # torch's oneDNN CPU kernels return an empty tensor for a 2-d/3-d transposed conv whose output
    # is 0 on some axis; its native kernels (the reference) and CUDA refuse it, as fidkit does.
    expected = torch_shape(
        lambda: layer_class(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d), size,
        onednn=False)
    agree(expected, ours(fc.conv_transpose, size, k, s, p, op, d), (size, k, s, p, op, d))


@EXAMPLES
@given(st.data())
def test_max_pool_matches_torch(data):
    nd = data.draw(nds)
    size = data.draw(st.tuples(*[st.integers(0, 11)] * nd))  # 0: torch refuses empty axes
    k = data.draw(axes(nd, 1, 5))
    s = data.draw(st.one_of(st.none(), axes(nd, 1, 4)))
    p = data.draw(axes(nd, -1, 3))
    d = data.draw(axes(nd, 1, 3))
    ceil = data.draw(st.booleans())
    layer_class = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[nd - 1]
    expected = torch_shape(
        lambda: layer_class(k, stride=s, padding=p, dilation=d, ceil_mode=ceil), size)
    agree(expected, ours(fc.pool, size, k, s, p, d, ceil, kind="max"), (size, k, s, p, d, ceil))


@EXAMPLES
@given(st.data())
def test_avg_pool_matches_torch(data):
    nd = data.draw(nds)
    size = data.draw(st.tuples(*[st.integers(0, 11)] * nd))  # 0: torch refuses empty axes
    k = data.draw(axes(nd, 1, 5))
    s = data.draw(st.one_of(st.none(), axes(nd, 1, 4)))
    p = data.draw(axes(nd, -1, 3))
    ceil = data.draw(st.booleans())
    include_pad = data.draw(st.booleans())
    layer_class = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[nd - 1]
    expected = torch_shape(
        lambda: layer_class(k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad),
        size)
    agree(expected, ours(fc.pool, size, k, s, p, 1, ceil, kind="avg"), (size, k, s, p, ceil))


@settings(max_examples=max(150, N_EXAMPLES // 2), deadline=None)
@given(st.data())
def test_adaptive_pool_and_interpolate_match_torch(data):
    nd = data.draw(nds)
    size = data.draw(st.tuples(*[st.integers(1, 9)] * nd))
    kind = data.draw(st.sampled_from(["avg", "max"]))
    wanted = data.draw(st.one_of(st.integers(0, 6),
                                 st.tuples(*[st.one_of(st.none(), st.integers(0, 6))] * nd)))
    layer_class = getattr(nn, f"Adaptive{kind.capitalize()}Pool{nd}d")
    agree(torch_shape(lambda: layer_class(wanted), size),
          ours(fc.adaptive_pool, size, wanted, kind=kind), (size, wanted, kind))
    mode = data.draw(st.sampled_from(["nearest", "nearest-exact", "area", "linear", "bilinear",
                                      "bicubic", "trilinear"]))
    if data.draw(st.booleans()):
        target = data.draw(axes(nd, 0, 12))
        expected = torch_shape(lambda: nn.Upsample(size=target, mode=mode), size)
        agree(expected, ours(fc.interpolate, size, size=target, mode=mode), (size, target, mode))
    else:
        scale = data.draw(st.one_of(
            st.floats(0.05, 4.0), st.tuples(*[st.floats(0.05, 4.0)] * nd)))
        expected = torch_shape(lambda: nn.Upsample(scale_factor=scale, mode=mode), size)
        agree(expected, ours(fc.interpolate, size, scale_factor=scale, mode=mode), (size, scale, mode))


def test_notes_patterns_closed_form():
    # The hand-worked cases of the notes: 3x3/s1/p1 keeps, s2 halves, 4x4 transposed s2 p1 doubles.
    assert fc.conv((64, 64), 3, 1, 1).output_size == (64, 64)
    assert fc.conv((64, 64), 3, 2, 1).output_size == (32, 32)
    assert fc.conv_transpose((16, 16, 16), 4, 2, 1).output_size == (32, 32, 32)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), out=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4),
       d=st.integers(1, 3))
def test_inverse_helpers_solve_or_refuse_correctly(size, out, k, s, d):
    # Brute force over paddings torch accepts is the independent reference.
    reachable = [p for p in range(0, 100) if ours(fc.conv, size, k, s, p, d) == (out,)]
    try:
        p = fc.padding_for(size, out, k, s, d)
    except UsageError:
        assert not reachable
    else:
        assert p == min(reachable)
        layer = nn.Conv1d(1, 1, k, stride=s, padding=p, dilation=d)
        assert layer(torch.zeros(1, 1, size)).shape[-1] == out
    pairs = [(p, op) for p in range(0, 100) for op in range(max(s, d))
             if ours(fc.conv_transpose, size, k, s, p, op, d) == (out,)]
    try:
        p, op = fc.transpose_padding_for(size, out, k, s, d)
    except UsageError:
        assert not pairs
    else:
        assert (p, op) == min(pairs)
        layer = nn.ConvTranspose1d(1, 1, k, stride=s, padding=p, output_padding=op, dilation=d)
        assert layer(torch.zeros(1, 1, size)).shape[-1] == out


def test_same_padding_halving_doubling_against_torch():
    for k in (1, 3, 5, 7):
        for d in (1, 2, 3):
            p = fc.same_padding(k, d)
            assert nn.Conv2d(1, 1, k, padding=p, dilation=d)(torch.zeros(1, 1, 13, 13)).shape[-2:] == (13, 13)
    with pytest.raises(UsageError, match="odd"):
        fc.same_padding(4)
    for c in fc.downsampling_choices(64):
        layer = nn.Conv2d(1, 1, c["kernel_size"], c["stride"], c["padding"])
        assert layer(torch.zeros(1, 1, 64, 64)).shape[-1] == 32
    for c in fc.upsampling_choices(17, factor=3):
        layer = nn.ConvTranspose1d(1, 1, c["kernel_size"], c["stride"], c["padding"], c["output_padding"])
        assert layer(torch.zeros(1, 1, 17)).shape[-1] == 51
    with pytest.raises(UsageError, match="not a multiple of 2"):
        fc.downsampling_choices(63)


def test_output_shape_of_layer_objects_matches_forward():
    cases = [
        (nn.Conv2d(3, 8, 3, stride=2, padding=1), (2, 3, 17, 16)),
        (nn.Conv3d(2, 4, (3, 1, 5), padding="same"), (2, 9, 8, 7)),  # unbatched
        (nn.ConvTranspose3d(4, 2, 4, stride=2, padding=1), (1, 4, 5, 6, 7)),
        (nn.MaxPool2d(3, 2, ceil_mode=True), (1, 2, 10, 11)),
        (nn.AvgPool1d(4, 3, padding=2, ceil_mode=True), (1, 2, 10)),
        (nn.AdaptiveAvgPool2d((None, 3)), (1, 2, 10, 11)),
        (nn.Upsample(scale_factor=1.7), (1, 2, 5, 7)),
        (nn.Linear(7, 3), (2, 5, 7)),
        (nn.Flatten(), (2, 3, 4, 5)),
        (nn.BatchNorm2d(2), (1, 2, 4, 4)),
    ]
    for layer, shape in cases:
        with torch.no_grad():
            expected = tuple(layer(torch.zeros(shape)).shape)
        assert fc.output_shape(layer, shape) == expected, layer
    with pytest.raises(UsageError, match="expects 3 input channels"):
        fc.output_shape(nn.Conv2d(3, 8, 3), (1, 4, 8, 8))
    with pytest.raises(UsageError, match="does not know"):
        fc.output_shape(nn.LSTM(3, 3), (1, 3))


# -- trace --------------------------------------------------------------------------------------

def test_trace_inception_reproduces_tap_sizes():
    from fidkit.extractors.networks.inception import FIDInceptionV3

    with torch.device("meta"):
        model = FIDInceptionV3(outputs=("2048",))
    result = fc.trace(model, (2, 3, 299, 299))
    rows = {r.name: r for r in result.rows}
    side = lambda name: rows[name].output_shape[0][-1]  # noqa: E731
    pools = [r for r in result.rows if r.name == "F.max_pool2d"]
    # The FID network's taps: 299 -> 149 -> 147 -> 73 -> 71 -> 35 -> 17 -> 8 -> 2048.
    sizes = [side("Conv2d_1a_3x3.conv"), side("Conv2d_2a_3x3.conv"), pools[0].output_shape[0][-1],
             side("Conv2d_4a_3x3.conv"), pools[1].output_shape[0][-1],
             side("Mixed_6e.branch_pool.conv"), side("Mixed_7c.branch_pool.conv")]
    assert sizes == [149, 147, 73, 71, 35, 17, 8]
    assert result.output_shape == ((2, 2048),)
    assert rows["Mixed_6e.branch1x1.conv"].output_shape == ((2, 192, 17, 17),)
    assert result.uncalled == ("fc",)  # only the 2048 tap was asked for
    # Every conv / pool the trace saw agrees with the arithmetic on that layer.
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name in rows:
            assert fc.output_shape(module, rows[name].input_shape) == rows[name].output_shape[0]
    assert result.total_parameters == sum(p.numel() for p in model.parameters())
    assert "Conv2d_1a_3x3.conv" in result.table()


class UNet3d(nn.Module):
    """A small 3-D UNet: two poolings, a transposed-conv and an Upsample way back, skip concat."""

    def __init__(self, base: int = 4) -> None:
        super().__init__()
        block = lambda i, o: nn.Sequential(  # noqa: E731
            nn.Conv3d(i, o, 3, padding=1), nn.InstanceNorm3d(o), nn.LeakyReLU(0.1))
        self.enc1, self.enc2, self.mid = block(1, base), block(base, 2 * base), block(2 * base, 4 * base)
        self.pool = nn.MaxPool3d(2)
        self.up2 = nn.ConvTranspose3d(4 * base, 2 * base, 4, stride=2, padding=1)
        self.dec2 = block(4 * base, 2 * base)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(2 * base, base, 1))
        self.dec1 = block(2 * base, base)
        self.head = nn.Conv3d(base, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def real_forward_rows(model, x):
    rows = []
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: rows.append((n, tuple(out.shape))))
             for n, m in model.named_modules() if not list(m.children())]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return rows, tuple(out.shape)


def test_trace_3d_unet_matches_real_forward_and_leaves_model_alone():
    model = UNet3d()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 1, 12, 16, 8)
    expected_rows, expected_out = real_forward_rows(model, x)
    result = fc.trace(model, x.shape, functional=False)
    assert [(r.name, r.output_shape[0]) for r in result.rows] == expected_rows
    assert result.output_shape == (expected_out,) == ((1, 2, 12, 16, 8),)
    assert {r.name: r.parameters for r in result.rows}["enc1.0"] == 1 * 4 * 27 + 4
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model.enc1[0]._forward_hooks
    # An odd depth breaks the skip concatenation: the real forward fails, so must the trace.
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 1, 12, 16, 9))
    with pytest.raises(UsageError, match="UNet3d fails on input"):
        fc.trace(model, (1, 1, 12, 16, 9))


def test_trace_records_functional_pools_between_leaves():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return F.interpolate(F.max_pool2d(self.conv(x), 2, ceil_mode=True), scale_factor=3)

    result = fc.trace(Net(), (1, 1, 10, 10))
    assert [(r.name, r.output_shape[0]) for r in result.rows] == [
        ("conv", (1, 2, 8, 8)), ("F.max_pool2d", (1, 2, 4, 4)), ("F.interpolate", (1, 2, 12, 12))]


# -- CLI ----------------------------------------------------------------------------------------

def test_cli_layers_json_and_errors(capsys):
    assert main(["conv", "conv2d", "8x8", "-k", "3", "-s", "2", "-p", "1"]) == 0
    out = capsys.readouterr().out
    assert "conv2d 8x8 -> 4x4" in out and "floor(" in out
    assert main(["conv", "convtranspose3d", "16x16x16", "-k", "4", "-s", "2", "-p", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output_size"] == list(nn.ConvTranspose3d(1, 1, 4, 2, 1)(torch.zeros(1, 1, 16, 16, 16)).shape[2:])
    assert "output_padding" in data["formula"]
    assert main(["conv", "maxpool2d", "147", "-k", "3", "-s", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_size"] == [73, 73]
    for bad in (["conv", "conv2d", "4x4", "-k", "7"], ["conv", "conv2d", "8x8x8", "-k", "3"],
                ["conv", "conv2d", "8", "-k", "3", "-s", "2", "-p", "same"],
                ["conv", "convtranspose2d", "8", "-k", "3", "-s", "2", "-o", "2"],
                ["conv", "halve", "63"], ["conv", "conv2d", "eight", "-k", "3"], ["conv"],
                ["conv", "trace", "nosuchmodule:make"]):
        assert exit_code(bad) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, (bad, err)


def exit_code(argv):
    # argparse's own errors leave through SystemExit; fidkit's through main's return value.
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_trace_inception_and_helpers(capsys):
    assert main(["conv", "trace", "inception", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["output_shape"] == [[1, 2048]]
    assert main(["conv", "double", "8"]) == 0
    assert "kernel_size=4, stride=2, padding=1, output_padding=0" in capsys.readouterr().out
    assert main(["conv", "same-padding", "-k", "5", "-d", "2"]) == 0
    assert "padding 4" in capsys.readouterr().out


def test_importing_conv_and_its_cli_does_not_import_torch():
    code = ("import sys, fidkit.conv, fidkit.cli.conv; fidkit.conv.conv(8, 3);"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_transposed_conv_empty_output_is_refused_like_torch_native_kernels():
    # Found by the long hypothesis run: oneDNN gives (1, 1, 0, 0, 0) here, torch's native kernels
    # refuse it ("Output size is too small"); fidkit follows the native rule.
    with torch.backends.mkldnn.flags(enabled=False), pytest.raises(RuntimeError, match="too small"):
        nn.ConvTranspose3d(1, 1, 5, padding=4)(torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(UsageError, match="gives output 0"):
        fc.conv_transpose((4, 4, 4), 5, 1, 4)
