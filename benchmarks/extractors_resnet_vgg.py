"""Throughput of fidkit's ``vgg16`` and ``swav-resnet50`` extractors against their peers, same run,
same random weights, CPU (or --device cuda), uint8 images in, features out:

* vgg16: fidkit's ``torch-fidelity`` convention + network vs torch-fidelity 0.4.0's own
  ``FeatureExtractorVGG16`` (its download replaced by torchvision's vgg16 holding the weights);
* swav-resnet50: fidkit's ``studiogan-clean`` convention + network vs StudioGAN's path
  (per-image PIL float bicubic, ToTensor, ImageNet normalisation) into torchvision's resnet50
  loaded as swav's hubconf does, ``fc`` replaced by Identity.

Prints images/s for each side, the ratio fidkit/peer and the largest feature difference.
Usage: python benchmarks/extractors_resnet_vgg.py --images 64 --size 256 --batch 32
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _images(count: int, size: int) -> np.ndarray:
    from fidkit.extractors.weights import synthetic_images

    imgs = synthetic_images(count, size=size, generator=torch.Generator().manual_seed(0))
    return imgs.permute(0, 2, 3, 1).contiguous().numpy()  # uint8 (N, H, W, 3)


def _time(fn, images: np.ndarray, batch: int) -> tuple[float, torch.Tensor]:
    out = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(fn(images[i:i + batch]).cpu())
    return len(images) / (time.perf_counter() - start), torch.cat(out)


def bench_vgg16(images: np.ndarray, batch: int, device: str) -> dict:
    import torchvision
    import torch_fidelity.feature_extractor_vgg16 as tf_vgg

    from fidkit.extractors import get_extractor
    from fidkit.extractors.vgg16 import make_test_state

    state = make_test_state(0)
    extractor = get_extractor("vgg16")
    net = extractor.build(state, ("fc2_relu",)).to(device)
    convention = extractor.convention(None)

    def load(**_kwargs):
        model = torchvision.models.vgg16()
        model.load_state_dict(state)
        return model

    tf_vgg.torchvision_load_pretrained_vgg16 = load
    peer = tf_vgg.FeatureExtractorVGG16("vgg16", ["fc2_relu"]).to(device)

    def ours(chunk):
        x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).float()
        return net(convention.prepare(x))["fc2_relu"]

    def theirs(chunk):
        return peer(torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).contiguous())[0]

    return _compare("vgg16", ours, theirs, images, batch)


def bench_swav(images: np.ndarray, batch: int, device: str) -> dict:
    import torchvision
    from PIL import Image

    from fidkit.extractors import get_extractor
    from fidkit.extractors.swav import IMAGENET_MEAN, IMAGENET_STD, make_test_state

    state = make_test_state(0)
    extractor = get_extractor("swav-resnet50")
    net = extractor.build(state, ("avgpool",)).to(device)
    convention = extractor.convention("studiogan-clean")
    peer = torchvision.models.resnet50()
    peer.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=False)
    peer.fc = torch.nn.Identity()
    peer = peer.eval().to(device)
    to_tensor = torchvision.transforms.ToTensor()
    mean = torch.Tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(device)
    std = torch.Tensor(IMAGENET_STD).view(1, 3, 1, 1).to(device)

    def studiogan_resize(img):
        planes = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32))
                             .resize((224, 224), resample=Image.BICUBIC)).reshape(224, 224, 1)
                  for c in range(3)]
        return to_tensor(np.concatenate(planes, axis=2).astype(np.float32))

    def ours(chunk):
        x = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2).float()
        return net(convention.prepare(x))["avgpool"]

    def theirs(chunk):
        x = torch.stack([studiogan_resize(img) for img in chunk]).to(device)
        return peer((x / 255.0 - mean) / std)

    return _compare("swav-resnet50", ours, theirs, images, batch)


def _compare(name, ours, theirs, images, batch) -> dict:
    ours(images[:1]), theirs(images[:1])  # warm-up: kernels, caches
    peer_rate, peer_out = _time(theirs, images, batch)
    our_rate, our_out = _time(ours, images, batch)
    diff = float((our_out - peer_out).abs().max() / peer_out.abs().max())
    print(f"{name:14s} fidkit {our_rate:8.2f} img/s   peer {peer_rate:8.2f} img/s   "
          f"ratio {our_rate / peer_rate:5.2f}x   max |diff| / max |feature| {diff:.2e}")
    return {"name": name, "fidkit_img_s": our_rate, "peer_img_s": peer_rate,
            "ratio": our_rate / peer_rate, "max_relative_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("vgg16", "swav"), default=None)
    args = parser.parse_args()
    images = _images(args.images, args.size)
    if args.only in (None, "vgg16"):
        bench_vgg16(images, args.batch, args.device)
    if args.only in (None, "swav"):
        bench_swav(images, args.batch, args.device)


if __name__ == "__main__":
    main()
