"""`InceptionFeatures`: torch-fidelity ``inception-v3-compat`` with the ADM evaluator's three outputs.

torch-fidelity's network carries the weights of TensorFlow's ``inception-2015-12-05`` graph (the
one ADM's ``classify_image_graph_def.pb`` holds), takes uint8 NCHW, resizes with TF1 bilinear to
299 and normalises with (x - 128)/128, as ADM's graph does (metrics README §2.2). Outputs:

* ``pool_3`` (2048): FID, precision/recall.
* ``logits_unbiased`` (1008): pool_3 @ W of ``softmax/logits/MatMul`` without the bias: the IS input.
* ``spatial`` (2023): ADM's ``mixed_6/conv`` = torch-fidelity ``Mixed_6d.branch1x1`` (conv + BN +
  ReLU, 192 x 17 x 17), tapped with a forward hook, permuted to NHWC, channels 0..6, flattened —
  feature index (h * 17 + w) * 7 + c (ADM ``_create_feature_graph`` + ``compute_activations``).
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

from torch import Tensor, nn

from speedrun_diffusion.callbacks.features.base import FeatureExtractor, freeze
from speedrun_diffusion.lightning_modules.weights import read_state_dict

SPATIAL_LAYER = "Mixed_6d.branch1x1"  # torch-fidelity's name for ADM's mixed_6/conv
SPATIAL_CHANNELS = 7  # ADM: spatial[..., :7]


def spatial_features(conv_nchw: Tensor, channels: int = SPATIAL_CHANNELS) -> Tensor:
    """ADM sFID layout: NCHW map → NHWC → first ``channels`` channels → (N, H*W*channels), float32."""
    if conv_nchw.ndim != 4 or conv_nchw.shape[1] < channels:
        raise ValueError(f"spatial map must be NCHW with >= {channels} channels, got {tuple(conv_nchw.shape)}")
    return conv_nchw.permute(0, 2, 3, 1)[..., :channels].reshape(conv_nchw.shape[0], -1).float()


_RANDOM = object()  # stands in for a state dict: keep torch-fidelity's random initialisation


def torch_fidelity_inception(weights: str | Path | None = None, random_weights: bool = False) -> nn.Module:
    """torch-fidelity ``FeatureExtractorInceptionV3('inception-v3-compat', ['2048', 'logits_unbiased'])``.

    ``weights=None`` downloads through torch-fidelity (torch hub cache); a path is loaded here without
    pickles and handed to the network; ``random_weights`` keeps the random initialisation (benchmarks).
    """
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    features = ["2048", "logits_unbiased"]
    if weights is None and not random_weights:
        return freeze(tfi.FeatureExtractorInceptionV3("inception-v3-compat", features))
    state = _RANDOM if random_weights else read_state_dict(weights, "Inception (torch-fidelity inception-v3-compat) weights")

    class _Local(tfi.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # type: ignore[override]
            if state_dict is _RANDOM:
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    # torch-fidelity loads from its URL when no path is given: hand it the state read above instead
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *args, **kwargs: state):
        return freeze(_Local("inception-v3-compat", features))


class InceptionFeatures(FeatureExtractor):
    """uint8 NCHW → ``{"pool_3": (N, 2048), "logits_unbiased": (N, 1008), "spatial": (N, 2023)}``.

    Args:
        weights: local path of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (or a
            safetensors copy); None downloads through torch-fidelity.
        network: inject any module mapping uint8 NCHW to ``(pool, logits_unbiased)`` that has a
            submodule ``spatial_layer`` (tests use small random networks).
        random_weights: torch-fidelity's architecture with random weights (benchmarks).
        feature_dims: widths of an injected network's outputs (default: the real 2048 / 1008 / 2023).
    """

    def __init__(self, weights: str | Path | None = None, network: nn.Module | None = None,
                 random_weights: bool = False, spatial_layer: str = SPATIAL_LAYER,
                 feature_dims: dict[str, int] | None = None) -> None:
        super().__init__()
        self.network = freeze(network) if network is not None else torch_fidelity_inception(weights, random_weights)
        try:
            layer = self.network.get_submodule(spatial_layer)
        except AttributeError as err:
            raise AttributeError(f"Inception network has no layer {spatial_layer!r} for the sFID features") from err
        self._spatial: Tensor | None = None
        layer.register_forward_hook(self._keep_spatial)
        self.spatial_layer = spatial_layer
        # an injected network declares its own widths; the real one has these
        self.feature_dims = dict(feature_dims or {"pool_3": 2048, "logits_unbiased": 1008,
                                                  "spatial": 17 * 17 * SPATIAL_CHANNELS})

    def _keep_spatial(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self._spatial = output

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        self._spatial = None
        pool, logits = self.network(images.to(self.device))
        if self._spatial is None:
            raise RuntimeError(f"the Inception forward never reached {self.spatial_layer!r}")
        spatial, self._spatial = spatial_features(self._spatial), None
        return {"pool_3": pool.float(), "logits_unbiased": logits.float(), "spatial": spatial}
