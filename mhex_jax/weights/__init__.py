"""Pretrained weights: Hugging Face BERT/ViT checkpoints (``hf_import.py``) and ResNet-18/34/50
from Hugging Face or torchvision/timm files (``resnet_import.py``) into mhex_jax models; a
checkpoint named by a Hugging Face Hub id is fetched into the local cache first (``hub.py``)."""

from mhex_jax.weights.hf_import import (ARCHITECTURE, ARCHITECTURE_READERS, bert_config_from_hf,
                                        load, load_bert, load_vit,
                                        minilm_checkpoint_dir, read_safetensors,
                                        vit_config_from_hf)
from mhex_jax.weights.hub import checkpoint_path
from mhex_jax.weights.resnet_import import check_init as check_resnet_init
from mhex_jax.weights.resnet_import import load_resnet_params
from mhex_jax.weights.workdir_import import check_workdir, is_workdir, load_workdir_variables
