"""Registry entry of the FID Inception (the TF "2015-12-05" graph as pytorch-fid and torch-fidelity
port it): taps 64/192/768/2048 (pool_3), the logits for the Inception Score, and the four
conventions of :mod:`fidkit.preprocess.inception`.

The network itself is :mod:`fidkit.extractors.networks.inception`; on the CPU the runner may swap
in its blocked copy (:mod:`fidkit.extractors.networks.inception_blocked`, same bits).
"""
from __future__ import annotations

from typing import Any

from fidkit.defaults import CONVENTION_NAMES, DEFAULT_CONVENTION, DEFAULT_DIMS, FID_WEIGHTS, LOGITS_DIM
from fidkit.extractors import register
from fidkit.extractors.base import Convention, Extractor


class InceptionExtractor(Extractor):
    """The FID Inception v3 (:class:`~fidkit.extractors.networks.inception.FIDInceptionV3`)."""

    def conventions(self) -> dict[str, Convention]:
        from fidkit.preprocess.inception import CONVENTIONS

        return dict(CONVENTIONS)

    def read_weights(self, path: Any) -> dict:
        from pathlib import Path

        from fidkit.extractors.weights import file_sha256, load_state_dict
        from fidkit.extractors.base import ResolvedWeights

        p = Path(path)
        return load_state_dict(ResolvedWeights(p, file_sha256(p), False))

    def build(self, state: dict, outputs: tuple[str, ...]) -> Any:
        from fidkit.extractors.networks.inception import FIDInceptionV3

        model = FIDInceptionV3(outputs=("2048",))
        model.load_weights(state, source="the weights file")  # the runner adds the path
        model.outputs = tuple(outputs)
        return model

    def make_test_weights(self, path: Any, seed: int = 0) -> None:
        from fidkit.extractors.weights import make_test_weights

        make_test_weights(path, seed=seed)


INCEPTION = register(InceptionExtractor(
    name="inception",
    description="FID Inception v3, TF 2015-12-05 graph (pytorch-fid / torch-fidelity port)",
    weights=FID_WEIGHTS,
    taps={"64": 64, "192": 192, "768": 768, "2048": 2048},
    default_dims=DEFAULT_DIMS,
    default_convention=DEFAULT_CONVENTION,
    convention_names=CONVENTION_NAMES,
    input_contract="RGB 299x299, normalised to about [-1, 1] by the convention",
    reference="Heusel et al. 2017 (TTUR); Szegedy et al. 2016",
    extra_outputs={"logits": LOGITS_DIM, "logits_unbiased": LOGITS_DIM},
))
