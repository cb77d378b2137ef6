"""Flax models: the MHEX module (``mhex.py``) and the backbones that carry it. A config's model
is built by ``mhex_jax.model_lib.create_model``."""

from mhex_jax.models.mhex import MHEX
from mhex_jax.models.resnet import ResNet
from mhex_jax.models.bert import BERT
from mhex_jax.models.vit import ViT

__all__ = ["MHEX", "ResNet", "BERT", "ViT"]
