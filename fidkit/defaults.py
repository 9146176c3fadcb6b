"""The one table of constants that the API, the CLI and the tests share."""
from __future__ import annotations

from fidkit.extractors.base import WeightsFile

#: The older name of :class:`fidkit.extractors.base.WeightsFile`.
WeightsSpec = WeightsFile


#: The TF "2015-12-05" Inception graph ported to PyTorch by pytorch-fid; torch-fidelity serves the
#: same bytes as a mirror. The hash is checked after every download and on every cache hit.
FID_WEIGHTS = WeightsFile(
    filename="pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    size=95_628_359,
    urls=(
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
    ),
    licence="Apache-2.0 (TensorFlow models; PyTorch port by pytorch-fid)",
)

#: Feature taps of the FID Inception: channels of the 64/192/768 blocks, pool_3, and the logits.
TAP_DIMS: tuple[int, ...] = (64, 192, 768, 2048)
LOGITS_DIM = 1008
DEFAULT_DIMS = 2048
INPUT_SIZE = 299

#: The preprocessing conventions fidkit reproduces; see :mod:`fidkit.preprocess`.
DEFAULT_CONVENTION = "tf1"
#: Every convention name, for argument parsing without importing torch; the registry in
#: :mod:`fidkit.preprocess` defines each and checks that it holds exactly these.
CONVENTION_NAMES: tuple[str, ...] = ("tf1", "pytorch-fid", "clean", "antialias")

#: Environment variable that points at a local weights file (offline use).
WEIGHTS_ENV = "FIDKIT_WEIGHTS"
#: Environment variable that overrides the cache folder.
CACHE_ENV = "FIDKIT_CACHE"

#: Images per network batch on a GPU, and on CPU (where the batch only costs memory: on the 2-core
#: box, 200 PNGs 256x256, 16 gave 8.6 img/s at 1.18 GB peak RSS against 9.05 img/s at 1.75 GB for
#: 50; ``benchmarks/throughput.py --batch-sweep``, benchmarks/RESULTS.md).
DEFAULT_BATCH_SIZE = 50
DEFAULT_CPU_BATCH_SIZE = 16

#: Image file suffixes read from folders (compared case-insensitively).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm",
)
ARRAY_SUFFIXES: tuple[str, ...] = (".npy", ".npz")
STATS_SUFFIXES: tuple[str, ...] = (".pkl", ".npz", ".pt", ".pth")

#: Decompression-bomb guard: images with more pixels than this are refused.
MAX_IMAGE_PIXELS = 178_956_970  # PIL's own default, stated here so it cannot drift
