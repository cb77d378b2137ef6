"""Pretrained weights: Hugging Face BERT/ViT checkpoints into mhex_jax models (``hf_import.py``)."""

from mhex_jax.weights.hf_import import (ARCHITECTURE, ARCHITECTURE_READERS, bert_config_from_hf,
                                        load, load_bert, load_vit,
                                        minilm_checkpoint_dir, read_safetensors,
                                        vit_config_from_hf)
