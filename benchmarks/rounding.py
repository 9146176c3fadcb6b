"""How float32 rounding grows through the FID Inception, layer by layer (issue 8's 1e-5 line).

Runs the same images through three evaluations of one set of weights and compares the output of
every convolution block (conv + batch norm + ReLU) and the final taps:

* ``plain``: the unoptimised network, float32, NCHW (``--exact``);
* ``fast``: fidkit's folded CPU network (``--fold-bn``: batch norm folded into the convolutions,
  channels-last; the default network, fidkit.extractors.networks.inception_blocked, gives ``plain``'s bits);
* ``f64``: the plain network in float64, the reference for both.

Each difference is the largest absolute difference relative to the largest magnitude of the
float64 output at that layer. ``local`` feeds each fast block the plain network's own input to
that block, so it shows what the fast block itself changes, without what came before it. Two float32 evaluations that sum in different orders can agree no
better than each agrees with float64, so ``plain vs f64`` is the floor for ``fast vs plain``.

    python benchmarks/rounding.py --weights test.pth            # every 8th block and the taps
    python benchmarks/rounding.py --weights test.pth --all      # every block
"""
from __future__ import annotations

import argparse
import copy
import json

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="weights file (e.g. fidkit weights make-test)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--all", action="store_true", help="print every block, not every 8th")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    from fidkit.extractors.runner import inference_copy, load_model
    from fidkit.extractors.networks.inception import BasicConv2d
    from fidkit.preprocess import get_convention
    from fidkit.extractors.weights import synthetic_images

    net, _ = load_model(args.weights, outputs=("64", "192", "768", "2048"), device="cpu")
    images = synthetic_images(args.images, size=256, generator=torch.Generator().manual_seed(7))
    conv = get_convention("tf1")
    x = torch.stack([conv.prepare_image(img.permute(1, 2, 0).numpy()) for img in images])

    def run(model, inp, inputs=None):
        blocks, hooks = {}, []
        for name, module in model.named_modules():
            if isinstance(module, BasicConv2d):
                hooks.append(module.register_forward_hook(
                    lambda _m, _i, out, name=name: blocks.__setitem__(name, out.double().contiguous())))
                if inputs is not None:
                    hooks.append(module.register_forward_pre_hook(
                        lambda _m, i, name=name: inputs.__setitem__(name, i[0].clone())))
        with torch.inference_mode():
            taps = model(inp)
        for hook in hooks:
            hook.remove()
        return blocks, {k: v.double() for k, v in taps.items()}

    block_inputs: dict = {}
    plain_b, plain_t = run(net, x, block_inputs)
    fast_net = inference_copy(net)
    fast_b, fast_t = run(fast_net, x.contiguous(memory_format=torch.channels_last))
    fast_blocks = dict(fast_net.named_modules())
    local = {}
    with torch.inference_mode():
        for name, inp in block_inputs.items():
            out = fast_blocks[name](inp.contiguous(memory_format=torch.channels_last)).double()
            local[name] = float((out - plain_b[name]).abs().max() / plain_b[name].abs().max())
    exact_b, exact_t = run(copy.deepcopy(net).double(), x.double())

    def rel(a, ref, scale):
        return float((a - ref).abs().max() / scale)

    rows = []
    names = list(plain_b)
    for i, name in enumerate(names):
        scale = float(exact_b[name].abs().max())
        rows.append({"layer": name, "depth": i + 1, "plain_vs_f64": rel(plain_b[name], exact_b[name], scale),
                     "fast_vs_f64": rel(fast_b[name], exact_b[name], scale),
                     "fast_vs_plain": rel(fast_b[name], plain_b[name], scale),
                     "local_fast_vs_plain": local[name]})
    for tap in ("64", "192", "768", "2048"):
        scale = float(exact_t[tap].abs().max())
        rows.append({"layer": f"tap {tap}", "depth": None, "plain_vs_f64": rel(plain_t[tap], exact_t[tap], scale),
                     "fast_vs_f64": rel(fast_t[tap], exact_t[tap], scale),
                     "fast_vs_plain": rel(fast_t[tap], plain_t[tap], scale)})
    print(f"{'block':28s} {'depth':>5s} {'plain vs f64':>12s} {'fast vs f64':>12s} {'fast vs plain':>13s}"
          f" {'local':>9s}")
    for row in rows:
        depth = row["depth"]
        if not args.all and depth is not None and depth % 8 != 1 and depth != len(names):
            continue
        local_col = f"{row['local_fast_vs_plain']:9.1e}" if "local_fast_vs_plain" in row else ""
        print(f"{row['layer']:28s} {depth or '':>5} {row['plain_vs_f64']:12.1e} "
              f"{row['fast_vs_f64']:12.1e} {row['fast_vs_plain']:13.1e} {local_col}")
    worst = max(local.values())
    print(f"largest local difference (a fast block vs the plain block on the same input): {worst:.1e}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
