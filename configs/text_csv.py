r"""MHEX-MiniLM on your own CSV of labelled texts: max_len, classes and schedule from the data.

    python train.py --config=configs/text_csv.py --config.data.path=reviews.csv \
        --config.data.label_column=sentiment "--config.data.text_columns=('review',)" \
        --workdir=runs/reviews
    python eval.py --workdir=runs/reviews
    python explain.py --workdir=runs/reviews --text="The battery died after a week."

``:plain`` trains the plain MiniLM classifier (pooler + dense) with the same recipe. The columns
default to AG News' layout (no header; label, title, description); name yours by header name
or 0-based number (``data.label_column``, ``data.text_columns``). Labels may be class names or
integers from ``data.label_base`` (1 here). Only the path and the columns need flags:

- **Classes** from the training file (``model.num_classes`` unset): its class-name labels, or
  its largest integer label.
- **max_len=auto**: the 95th percentile of the training texts' token lengths, rounded up to a
  multiple of 8, at most the model's 512 positions; the value is logged and saved in the
  workdir's config.json, so eval.py and explain.py use it. The log also shows the length
  distribution and the share of texts cut, as a warning above 10%.
- **Splits**: without ``data.eval_path`` 20% of each class is held out for the final accuracy
  (the same rows as configs/bert_agnews.py holds out); 10% of each class of the rest is the
  validation split (``data.val_fraction``). Only the validation split chooses anything.
- **Schedule in steps**: 3 epochs, but at least 300 steps (``train.min_steps``): a 600-row file
  gets ~23 epochs instead of collapsing after 39 steps, a 100k-row file 3 epochs. Warmup is 10%
  of the run, then a cosine from 1e-4 to a floor of 1e-5 (``train.end_learning_rate``).
- **Best checkpoint**: the validation accuracy after every epoch; the best step is kept in
  WORKDIR/best_checkpoint (``train.keep_best=val_accuracy``) and it is the step the final
  accuracy, eval.py and explain.py use.
- After training and in eval.py a warning says when the predictions collapse to one class or do
  no better than the majority class, with the likely causes and flags.

Hardware: 2-core x86 CPU, no accelerator. Time: 300 steps of batch 32 at max_len 80 in about
19 min (measured beside other jobs; about 0.35 steps/s with the per-epoch validation).
Result (measured by benchmarks/text_baseline.py on three 600-row stratified subsets of the AG
News CSV, 120 held-out rows each, means): MHEX-MiniLM 0.881, plain MiniLM 0.850, TF-IDF +
logistic regression 0.794; MHEX above plain on every subset (benchmarks/README.md, "Small CSVs").
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
  config.model.num_classes = config_lib.placeholder(int)  # None: the training file's classes.
  config.model.mhex = arg != "plain"
  # The gate starts at exactly 1 so the pretrained layers are unchanged at step 0.
  config.model.gate_init = "identity"
  config.model.hidden_dropout = 0.1
  config.model.attention_dropout = 0.1

  config.data.name = "text"
  config.data.path = ""
  config.data.eval_path = ""
  config.data.eval_fraction = 0.2
  config.data.val_fraction = 0.1
  config.data.split_seed = 0
  # Tokens per text: "auto" or a number (typed `object` so that both parse).
  config.data.max_len = ml_collections.FieldReference("auto", field_type=object)
  # Columns are 0-based numbers or header names; has_header True, False or "auto" (detected,
  # see mhex_jax.data.text.load_csv).
  config.data.label_column = ml_collections.FieldReference(0, field_type=object)
  config.data.text_columns = (1, 2)
  config.data.label_base = 1
  config.data.has_header = ml_collections.FieldReference("auto", field_type=object)
  config.data.class_names = ()  # From the data (see mhex_jax.data.text.load_text_data).
  # The checkpoint's own tokenizer: follows --config.model_init unless set on its own.
  config.data.tokenizer_dir = config.get_ref("model_init") + ""

  config.train.batch_size = 32
  config.train.num_epochs = 3
  config.train.min_steps = 300
  config.train.optimizer = "adamw"
  config.train.learning_rate = 1e-4
  config.train.end_learning_rate = 1e-5
  config.train.warmup_epochs = 0.3  # 10% of the run, however min_steps stretches it.
  config.train.weight_decay = 0.01
  config.train.keep_best = "val_accuracy"
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 100
  config.train.keep_checkpoints = 1  # Resuming needs the last step; the best is kept apart.
  config.eval.batch_size = 64
  config.eval.num_explain = 256
  config.eval.num_gallery = 16
  return config
