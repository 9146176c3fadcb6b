"""``fidkit conv``: output sizes of conv / transposed conv / pool / upsample layers, the inverse
helpers, and a shape trace of a model (``fidkit conv trace inception``)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from fidkit.errors import UsageError

_EXAMPLES = """examples:
  fidkit conv conv2d 8x8 -k 3 -s 2 -p 1
  fidkit conv convtranspose3d 16x16x16 -k 4 -s 2 -p 1
  fidkit conv maxpool2d 147 -k 3 -s 2 --ceil-mode
  fidkit conv upsample 17x17 --scale-factor 2
  fidkit conv same-padding -k 5 -d 2
  fidkit conv halve 64        (and: fidkit conv double 64)
  fidkit conv trace inception
  fidkit conv trace mypackage.models:make_unet 1x1x64x64x64"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8 or 8x8 or 16x16x16") from None
    return values


def _padding(text: str) -> Any:
    return text if text in ("same", "valid") else _ints(text)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale like 2 or 0.5 or 2x2") from None


def _axes(values: Any, nd: int, what: str) -> Any:
    """One value given for an n-d layer applies to every axis, as in torch."""
    if values is None or isinstance(values, str):
        return values
    if len(values) == 1:
        return values * nd
    if len(values) != nd:
        raise UsageError(f"{what} {'x'.join(map(str, values))} has {len(values)} axes but the layer "
                         f"has {nd}; give 1 or {nd} values")
    return values


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "conv", help="conv/pool/upsample output sizes and model shape traces",
        description="Exact output sizes of torch conv, transposed conv, pool and upsample layers "
        "(1-3 d), the padding/kernel/stride choices that keep, halve or double a size, and a "
        "shape trace of a model on the meta device. Sizes are spatial only: 8x8, 16x16x16; one "
        "number applies to every axis.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="conv_verb", metavar="LAYER", parser_class=type(parser))
    parser.set_defaults(func=lambda args: _missing(parser))

    def layer(name: str, nd: int, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("size", type=_ints, help="input spatial size, e.g. 64 or 64x64 or 16x64x64")
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p.set_defaults(func=run, nd=nd, layer=name)
        return p

    for nd in (1, 2, 3):
        p = layer(f"conv{nd}d", nd, f"nn.Conv{nd}d")
        p.add_argument("-k", "--kernel-size", type=_ints, required=True)
        p.add_argument("-s", "--stride", type=_ints, default=(1,))
        p.add_argument("-p", "--padding", type=_padding, default=(0,), help="pixels, 'same' or 'valid'")
        p.add_argument("-d", "--dilation", type=_ints, default=(1,))
        p = layer(f"convtranspose{nd}d", nd, f"nn.ConvTranspose{nd}d")
        p.add_argument("-k", "--kernel-size", type=_ints, required=True)
        p.add_argument("-s", "--stride", type=_ints, default=(1,))
        p.add_argument("-p", "--padding", type=_ints, default=(0,))
        p.add_argument("-o", "--output-padding", type=_ints, default=(0,))
        p.add_argument("-d", "--dilation", type=_ints, default=(1,))
        for kind in ("max", "avg"):
            p = layer(f"{kind}pool{nd}d", nd, f"nn.{kind.capitalize()}Pool{nd}d")
            p.add_argument("-k", "--kernel-size", type=_ints, required=True)
            p.add_argument("-s", "--stride", type=_ints, default=None, help="default: the kernel size")
            p.add_argument("-p", "--padding", type=_ints, default=(0,))
            if kind == "max":
                p.add_argument("-d", "--dilation", type=_ints, default=(1,))
            p.add_argument("--ceil-mode", action="store_true")
    p = layer("adaptivepool", 0, "nn.AdaptiveAvgPool/AdaptiveMaxPool (any dimension)")
    p.add_argument("--output-size", required=True,
                   help="e.g. 1 or 7x7; 'none' on an axis keeps its size (e.g. nonex1)")
    p.add_argument("--kind", choices=("avg", "max"), default="avg")
    p = layer("upsample", 0, "nn.Upsample / F.interpolate (any dimension)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", dest="target", type=_ints, help="output size")
    group.add_argument("--scale-factor", type=_floats)
    p.add_argument("--mode", default="nearest",
                   help="nearest (default), nearest-exact, area, linear, bilinear, bicubic, trilinear")
    p = sub.add_parser("same-padding", help="padding that keeps the size at stride 1")
    p.add_argument("-k", "--kernel-size", type=int, required=True)
    p.add_argument("-d", "--dilation", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run, layer="same-padding")
    for name, help_text in (("halve", "convolutions that divide a size by --factor exactly"),
                            ("double", "transposed convolutions that multiply a size by --factor")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("size", type=int, help="input size along one axis")
        p.add_argument("--factor", type=int, default=2)
        p.add_argument("--max-kernel", type=int, default=8 if name == "double" else 7)
        p.add_argument("-d", "--dilation", type=int, default=1)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=run, layer=name)
    p = sub.add_parser("trace", help="shapes of every layer of a model, traced on the meta device")
    p.add_argument("model", help="'inception' (the FID network) or 'package.module:factory', a "
                   "callable returning an nn.Module (this imports and runs your code)")
    p.add_argument("shape", nargs="?", type=_ints, default=None,
                   help="input shape with batch and channels (inception: 1x3x299x299)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run, layer="trace")


def _missing(parser: argparse.ArgumentParser) -> int:
    raise UsageError("name a layer, e.g. 'fidkit conv conv2d 8x8 -k 3 -s 2 -p 1' (see 'fidkit conv --help')")


def _compute(args: argparse.Namespace) -> Any:
    from fidkit.conv import arithmetic as ar

    name: str = args.layer
    if name == "same-padding":
        return {"operation": "same_padding", "kernel_size": args.kernel_size, "dilation": args.dilation,
                "padding": ar.same_padding(args.kernel_size, args.dilation),
                "formula": "p = d*(k-1) / 2 (stride 1)"}
    if name in ("halve", "double"):
        fn = ar.downsampling_choices if name == "halve" else ar.upsampling_choices
        choices = fn(args.size, args.factor, args.max_kernel, args.dilation)
        target = args.size // args.factor if name == "halve" else args.size * args.factor
        return {"operation": name, "input_size": args.size, "output_size": target,
                "layer": "conv" if name == "halve" else "conv_transpose",
                "formula": ar.CONV_FORMULA if name == "halve" else ar.CONV_TRANSPOSE_FORMULA,
                "dilation": args.dilation, "choices": choices}
    if name == "adaptivepool":
        nd = len(args.size)
        wanted = [None if v.lower() == "none" else _int_or_fail(v) for v in args.output_size.split("x")]
        return ar.adaptive_pool(args.size, _axes(tuple(wanted), nd, "output size"), kind=args.kind)
    if name == "upsample":
        nd = len(args.size)
        return ar.interpolate(args.size, _axes(args.target, nd, "size"),
                              _axes(args.scale_factor, nd, "scale factor"), args.mode)
    nd = args.nd
    size = _axes(args.size, nd, "input size")
    k = _axes(args.kernel_size, nd, "kernel size")
    if name.startswith("conv") and not name.startswith("convtranspose"):
        return ar.conv(size, k, _axes(args.stride, nd, "stride"), _axes(args.padding, nd, "padding"),
                       _axes(args.dilation, nd, "dilation"))
    if name.startswith("convtranspose"):
        return ar.conv_transpose(size, k, _axes(args.stride, nd, "stride"),
                                 _axes(args.padding, nd, "padding"),
                                 _axes(args.output_padding, nd, "output padding"),
                                 _axes(args.dilation, nd, "dilation"))
    kind = name[:3]
    return ar.pool(size, k, _axes(args.stride, nd, "stride"), _axes(args.padding, nd, "padding"),
                   _axes(getattr(args, "dilation", (1,)), nd, "dilation"), args.ceil_mode, kind=kind)


def _int_or_fail(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"output size entry {text!r} must be an integer or 'none'") from None


def _trace(args: argparse.Namespace) -> Any:
    import importlib

    import torch

    from fidkit.conv.tracing import trace

    if args.model == "inception":
        from fidkit.defaults import INPUT_SIZE
        from fidkit.extractors.networks.inception import FIDInceptionV3

        with torch.device("meta"):
            model = FIDInceptionV3(outputs=("2048",))
        shape = args.shape or (1, 3, INPUT_SIZE, INPUT_SIZE)
    else:
        module_name, _, attr = args.model.partition(":")
        if not attr:
            raise UsageError(f"model {args.model!r} must be 'inception' or 'package.module:factory'")
        if args.shape is None:
            raise UsageError("give the input shape with batch and channels, e.g. 1x1x64x64x64")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"cannot load {args.model}: {exc}; check the module path and name") from None
        with torch.device("meta"):
            model = factory() if not isinstance(factory, torch.nn.Module) else factory
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{args.model} gave a {type(model).__name__}, not an nn.Module")
        shape = args.shape
    return trace(model, shape)


def run(args: argparse.Namespace) -> int:
    result = _trace(args) if args.layer == "trace" else _compute(args)
    data = result if isinstance(result, dict) else result.as_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.layer == "trace":
        print(result.table())
    elif args.layer == "same-padding":
        print(f"padding {data['padding']} keeps the size (kernel {data['kernel_size']}, dilation "
              f"{data['dilation']}, stride 1); formula: {data['formula']}")
    elif args.layer in ("halve", "double"):
        print(f"{data['layer']} {data['input_size']} -> {data['output_size']}, formula: {data['formula']}")
        for c in data["choices"]:
            print("  " + ", ".join(f"{k}={v}" for k, v in c.items()))
    else:
        size = lambda s: "x".join(map(str, s))  # noqa: E731
        print(f"{data['operation']} {size(data['input_size'])} -> {size(data['output_size'])}")
        print(f"  formula: {data['formula']}")
        worked = data["worked"]
        if len(set(worked)) == 1:
            print(f"  every axis: {worked[0]}")
        else:
            for axis, line in enumerate(worked):
                print(f"  axis {axis}: {line}")
    return 0
