r"""MHEX-BERT fine-tuned on AG News (default weights: all-MiniLM-L6-v2 from its pip package).

    python train.py --config=configs/bert_agnews.py \
        --config.data.path=PATH/agnews.csv --workdir=runs/agnews_mhex
    python eval.py --config=configs/bert_agnews.py \
        --config.data.path=PATH/agnews.csv --workdir=runs/agnews_mhex

``:plain`` trains the plain classifier (pooler + dense) with the same recipe. Any checkpoint of
the BERT family (BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA's discriminator: config.json +
model.safetensors + tokenizer files) via ``--config.model_init=DIR`` (or a hub id such as
``distilbert-base-uncased``, downloaded into the Hugging Face cache on first use); the tokenizer
follows from the same directory unless ``--config.data.tokenizer_dir`` names another. Without
``data.eval_path`` the CSV is split 80/20, stratified by class, deterministically from
``data.split_seed``.

Your own CSV (header row, class names as labels, Excel's UTF-8 export all read as they are):

    python train.py --config=configs/bert_agnews.py --config.data.path=reviews.csv \
        --config.data.label_column=sentiment "--config.data.text_columns=('review',)" \
        "--config.data.class_names=()" --config.model.num_classes=2 --workdir=runs/reviews

Hardware: 2-core x86 CPU, no accelerator. Time: 300 steps in about 7 min. Result (measured,
stratified 20% of the AG News CSV): MHEX-MiniLM 0.892, plain MiniLM 0.898.
MHEX token maps on the first 200 eval texts (default: routed, signed, LayerNorm-normalised
first-layer CAM): deletion AOPC 0.651, LOdds −2.47, the best AOPC of every method
(docs/results.md, "Explainers side by side" (c)); ``eval.variants`` below are scored beside it by
``--config.eval.methods=all``.
"""

import ml_collections

from mhex_jax import config_lib


def get_config(arg=None):
  config_lib.check_arg(arg, ("plain",))
  from mhex_jax.weights import hf_import  # Locates the MiniLM package directory.
  minilm = str(hf_import.minilm_checkpoint_dir())
  config = config_lib.base_config()
  config.model_name = "bert"
  config.model = config_lib.bert_model()  # Architecture: model_init's config.json.
  config.model_init = minilm
  config.model_load.new_head = True  # MiniLM has no classifier: the plain model gets a new one.
  config.model.num_classes = 4
  config.model.mhex = arg != "plain"
  # The gate (always on the sum u + v in BERT) starts at exactly 1 so the pretrained layers are
  # unchanged at step 0.
  config.model.gate_init = "identity"
  config.model.hidden_dropout = 0.1
  config.model.attention_dropout = 0.1

  config.data.name = "text"
  config.data.path = ""
  config.data.eval_path = ""
  config.data.eval_fraction = 0.2
  config.data.split_seed = 0
  # Tokens per text, or "auto" (from the training texts' lengths; see configs/text_csv.py).
  config.data.max_len = ml_collections.FieldReference(64, field_type=object)
  # Columns are 0-based numbers or header names; has_header True, False or "auto" (detected,
  # see mhex_jax.data.text.load_csv). Typed `object` so that --config.data.label_column=sentiment
  # and --config.data.has_header=True both parse.
  config.data.label_column = ml_collections.FieldReference(0, field_type=object)
  config.data.text_columns = (1, 2)
  config.data.label_base = 1
  config.data.has_header = ml_collections.FieldReference("auto", field_type=object)
  # Class names in index order; () reads them from the data (see make_text_splits).
  config.data.class_names = ("World", "Sports", "Business", "Sci/Tech")
  # The checkpoint's own tokenizer: follows --config.model_init unless set on its own.
  config.data.tokenizer_dir = config.get_ref("model_init") + ""

  config.train.batch_size = 32
  config.train.num_epochs = 2
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4
  config.train.warmup_epochs = 0.1
  config.train.weight_decay = 0.01
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 100
  config.eval.batch_size = 64
  config.eval.num_explain = 1200
  config.eval.num_gallery = 16
  if config.model.mhex:
    config.eval.variants = config_lib.transformer_variants(4, spec_layers=(0, 1, 2),
                                                           default_layers=(0,))
  return config
