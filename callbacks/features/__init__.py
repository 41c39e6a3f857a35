"""Feature extractors for evaluation: uint8 NCHW RGB images → named (N, D) float32 features.

* `InceptionFeatures` — torch-fidelity ``inception-v3-compat`` (TF 2015-12-05 weights, TF1 resize):
  ``pool_3`` (2048), ``logits_unbiased`` (1008), ``spatial`` (2023, ADM's sFID layout).
* `DINOv2Features` — dgm-eval's DINOv2 ViT-L/14 CLS feature (1024) through timm, for KDD.
"""
from speedrun_diffusion.callbacks.features.base import FeatureExtractor
from speedrun_diffusion.callbacks.features.dinov2 import DINOv2Features, hub_interpolate_pos_embed
from speedrun_diffusion.callbacks.features.inception import InceptionFeatures, spatial_features

__all__ = ["DINOv2Features", "FeatureExtractor", "InceptionFeatures", "hub_interpolate_pos_embed", "spatial_features"]
