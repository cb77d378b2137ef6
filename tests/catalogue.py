"""The error catalogue: bad inputs and faults a user meets, each run through a real entry point
(``train.py``, ``eval.py``, ``explain.py``: their ``run()``, as the console scripts call it).

``tests/test_error_catalogue.py`` runs every case and checks its exit status, that stderr holds
no traceback and names the field or file, and that the config cases end before anything
compiles. The "Errors you may see" table of docs/errors.md is generated from ``CASES``:

    python tests/catalogue.py --markdown

Running the cases: ``python tests/catalogue.py --run RESULTS.json --work DIR``. One process
imports the libraries once and forks a child per case (two at a time), which saves each case the
seconds of importing JAX; a child is a fresh process from the entry point on.
"""

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


# tests/test_train.py's tiny_config as flags: 8 steps of 16 images, checkpoints at 3, 6, 8.
TINY = ("--config=configs/default.py", "--config.model.width=4", "--config.data.image_size=16",
        "--config.data.num_train=64", "--config.data.num_eval=16",
        "--config.train.batch_size=16", "--config.train.num_epochs=2",
        "--config.train.log_every_steps=2", "--config.train.checkpoint_every_steps=3",
        "--config.eval.batch_size=16")
# Evaluation kept small: 8 maps, 4 deletion steps, one gallery row.
SMALL_EVAL = ("--config.eval.num_explain=8", "--config.eval.deletion_steps=4",
              "--config.eval.num_gallery=1")
MEDMNIST = ("--config=configs/resnet18_medmnist.py", "--config.model.width=8",
            "--config.train.batch_size=8", "--config.train.num_epochs=1",
            "--config.eval.batch_size=8", *SMALL_EVAL)
# configs/bert_agnews.py on a 1-layer BERT written by ``_tiny_bert`` (14 words, width 8).
TEXT = ("--config=configs/bert_agnews.py", "--config.model_init={files}/bert",
        "--config.data.tokenizer_dir={files}/bert", "--config.data.class_names=()",
        "--config.model.num_classes=2", "--config.data.max_len=16",
        "--config.train.batch_size=8", "--config.train.num_epochs=1",
        "--config.eval.batch_size=8", *SMALL_EVAL)
DEFAULT = ("--config=configs/default.py",)
# configs/image_folder.py on a folder written by ``_folder_tree`` (20 PNGs of 16 px, 2 classes):
# 2 steps of 8 images; the plain model, which compiles in a third of the MHEX model's time.
FOLDER = ("--config=configs/image_folder.py:plain", "--config.data.path={files}/images",
          "--config.model.width=4",
          "--config.data.image_size=16", "--config.train.batch_size=8",
          "--config.train.num_epochs=1", "--config.eval.batch_size=8", *SMALL_EVAL)


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input. ``args`` may hold ``{w}`` (a path nothing exists at), ``{files}`` (the
  case's folder, where ``setup`` writes) and ``{trained}`` (a copy of a finished tiny run)."""
  name: str
  problem: str  # What the user did: the docs table's first column.
  command: str  # "train", "eval" or "explain".
  args: tuple[str, ...]
  expect: tuple[str, ...]  # In stderr; the first is the docs table's second column.
  returncode: int = 1  # 0: a documented, working behaviour (a warning or a recovery).
  setup: str = ""  # A function of SETUPS, called with (files, trained).
  before_compile: bool = False  # A config error: nothing may compile before it.
  before_data: bool = False  # Refused before any data is read: within EARLY_SECONDS.
  env: tuple[tuple[str, str], ...] = ()  # Environment variables of the case (may hold {files}).

  @property
  def uses_trained(self) -> bool:
    return any("{trained}" in a for a in self.args) or self.setup.startswith("damage")


# What a config error found before any data is read may take: a fork of the loaded libraries,
# the config parsed, the model built (measured on a 2-core CPU: 0.2 s, 1.3 s with the ResNet's
# heads traced); twice the 5 s asked of these errors, as the machine may be busy. That no data
# was read shows in the message itself: each case names data that would fail to load.
EARLY_SECONDS = 10
# Synthetic eval data of no examples: a DataError when the data is read.
NO_EVAL_DATA = ("--config.data.num_eval=0",)


def _early(name, problem, command, flags, expect, setup="", workdir="{files}", env=()):
  """A config error that needs the built model: refused before any data is read or anything
  compiles, within ``EARLY_SECONDS``. Eval's ``{files}`` is an existing workdir that holds
  nothing yet."""
  return Case(name, problem, command, (*flags, f"--workdir={workdir}"),
              expect if isinstance(expect, tuple) else (expect,), setup=setup,
              before_compile=True, before_data=True, env=tuple(env))


def _config(name, problem, flags, expect, command="train", base=DEFAULT):
  return Case(name, problem, command, (*base, *flags, "--workdir={w}"), (expect,),
              before_compile=True)


CASES = (
    # The config, refused before any data is read or anything compiles.
    _config("batch_size_negative", "`train.batch_size=-16`", ["--config.train.batch_size=-16"],
            "train.batch_size=-16 must be a positive integer"),
    _config("batch_size_zero", "`train.batch_size=0`", ["--config.train.batch_size=0"],
            "train.batch_size=0 must be a positive integer"),
    _config("num_epochs_zero", "`train.num_epochs=0`", ["--config.train.num_epochs=0"],
            "train.num_epochs=0 must be a positive integer"),
    _config("keep_checkpoints_zero", "`train.keep_checkpoints=0`",
            ["--config.train.keep_checkpoints=0"],
            "train.keep_checkpoints=0 must be a positive integer"),
    _config("learning_rate_negative", "`train.learning_rate=-0.5`",
            ["--config.train.learning_rate=-0.5"], "train.learning_rate=-0.5 must be > 0"),
    _config("learning_rate_nan", "`train.learning_rate=nan`",
            ["--config.train.learning_rate=nan"], "train.learning_rate=nan must be finite"),
    _config("checkpoint_every_zero", "`train.checkpoint_every_steps=0`",
            ["--config.train.checkpoint_every_steps=0"],
            "train.checkpoint_every_steps=0 must be a positive integer"),
    _config("log_every_zero", "`train.log_every_steps=0`", ["--config.train.log_every_steps=0"],
            "train.log_every_steps=0 must be a positive integer"),
    _config("eval_batch_indivisible", "`eval.batch_size=12` on 8 devices",
            ["--config.eval.batch_size=12"],
            "eval.batch_size=12 must be a multiple of the 8 devices (e.g. 8)"),
    _config("label_smoothing_too_big", "`train.label_smoothing=2`",
            ["--config.train.label_smoothing=2.0"],
            "train.label_smoothing=2.0 must be in [0, 1]"),
    _config("image_size_zero", "`data.image_size=0`", ["--config.data.image_size=0"],
            "data.image_size=0 must be a positive integer"),
    _config("optimizer_typo", "`train.optimizer=sgdd`", ["--config.train.optimizer=sgdd"],
            "train.optimizer='sgdd' must be one of 'sgd', 'adamw' (did you mean 'sgd'?)"),
    _config("data_name_typo", "`data.name=medmist`", ["--config.data.name=medmist"],
            "data.name='medmist' must be one of 'synthetic', 'medmnist', 'imagenet', 'text', "
            "'folder' (did you mean 'medmnist'?)"),
    _config("model_name_typo", "`model_name=resnet19`", ["--config.model_name=resnet19"],
            "model_name='resnet19' must be one of 'resnet18', 'resnet34', 'resnet50', 'bert', "
            "'vit' (did you mean 'resnet18'?)"),
    _config("config_argument_typo", "`--config=configs/resnet18_medmnist.py:plian`", [],
            "Unknown config argument 'plian'; this config takes 'plain'",
            base=("--config=configs/resnet18_medmnist.py:plian",)),
    _config("config_argument_typo_vit", "`--config=configs/vit_imagenet.py:quik`", [],
            "Unknown config argument 'quik'; this config takes 'quick'",
            base=("--config=configs/vit_imagenet.py:quik",)),
    _config("unknown_field", "`--config.train.no_such_field=1`",
            ["--config.train.no_such_field=1"],
            "Unknown config field train.no_such_field. The fields of train are: batch_size,"),
    _config("misspelt_field", "`--config.train.bach_size=4`", ["--config.train.bach_size=4"],
            "Unknown config field train.bach_size; did you mean train.batch_size?"),
    _config("misspelt_section", "`--config.trian.batch_size=4`",
            ["--config.trian.batch_size=4"],
            "Unknown config field trian.batch_size; did you mean train?"),
    _config("not_a_number", "`--config.train.batch_size=abc`",
            ["--config.train.batch_size=abc"],
            "flag --config.train.batch_size=abc: invalid literal for int()"),
    _config("config_file_missing", "`--config=configs/nope.py`", [],
            "'configs/nope.py' is neither a config file nor a shipped config; shipped configs: "
            "bert_agnews, default,", base=("--config=configs/nope.py",)),
    _config("stray_argument", "`train.py extra --config=...`", ["extra"],
            "Unexpected arguments: ['extra']"),
    _config("eval_num_explain_zero", "`eval.num_explain=0`", ["--config.eval.num_explain=0"],
            "eval.num_explain=0 must be a positive integer", command="eval"),
    _config("eval_alpha_nan", "`eval.mhex.alpha=nan`", ["--config.eval.mhex.alpha=nan"],
            "eval.mhex.alpha=nan must be finite", command="eval"),
    _config("eval_alpha_too_big", "`eval.mhex.alpha=1.5`", ["--config.eval.mhex.alpha=1.5"],
            "eval.mhex.alpha=1.5 must be in [0, 1]", command="eval"),
    _config("max_len_typo", "`data.max_len=atuo`", ["--config.data.max_len=atuo"],
            "data.max_len='atuo' must be a positive integer or 'auto'",
            base=("--config=configs/text_csv.py",)),
    _config("min_steps_zero", "`train.min_steps=0`", ["--config.train.min_steps=0"],
            "train.min_steps=0 must be a positive integer"),
    _config("keep_best_typo", "`train.keep_best=accuracy`", ["--config.train.keep_best=accuracy"],
            "train.keep_best='accuracy' must be one of 'val_accuracy' (did you mean "
            "'val_accuracy'?)"),
    _config("val_fraction_one", "`data.val_fraction=1.0`", ["--config.data.val_fraction=1.0"],
            "data.val_fraction=1.0 must be in [0, 1)"),
    # Options that depend on the model, refused right after it is built: the data named here
    # is missing or empty, so reading it first would fail with another message.
    _early("eval_collaboration_text", "`eval.collaboration_examples=4` on a text model", "eval",
           (*TEXT, "--config.data.path={w}/none.csv", "--config.eval.collaboration_examples=4"),
           "eval.collaboration_examples > 0 needs an MHEX image model", setup="tiny_bert"),
    _early("eval_collaboration_plain", "`eval.collaboration_examples=4` on a plain model", "eval",
           (*DEFAULT, *NO_EVAL_DATA, "--config.model.mhex=False",
            "--config.eval.collaboration_examples=4"),
           "eval.collaboration_examples > 0 needs an MHEX image model"),
    _early("eval_mhex_option_misplaced", "`eval.mhex.route=attention` on a CNN", "eval",
           (*DEFAULT, *NO_EVAL_DATA, "--config.eval.mhex.route=attention"),
           "MHEX options ['route'] apply to Transformer token maps only; unset them in eval.mhex "
           "for ResNet"),
    _early("eval_variants_on_plain", "a config's `eval.variants` on a plain model", "eval",
           (*TEXT, "--config.data.path={w}/none.csv", "--config.model.mhex=False"),
           "are MHEX variants, but the model is plain (model.mhex=False); remove them",
           setup="tiny_bert"),
    _early("eval_aopc_modes_typo", "`eval.aopc_modes=deletion,replace`", "eval",
           (*TEXT, "--config.data.path={w}/none.csv", "--config.eval.aopc_modes=deletion,replace"),
           "eval.aopc_modes='deletion,replace'; use 'deletion', 'replacement' or "
           "'deletion,replacement'", setup="tiny_bert"),
    _early("eval_method_typo", "`eval.methods=mhex,gradcam`", "eval",
           (*DEFAULT, *NO_EVAL_DATA, "--config.eval.methods=mhex,gradcam"),
           "eval.methods names ['gradcam'], which ResNet(mhex=True) cannot run"),
    _early("head_weights_length", "`train.head_weights` of 2 weights for 8 heads", "train",
           (*DEFAULT, "--config.data.num_train=0", "--config.train.head_weights=(1.0,2.0)"),
           "train.head_weights has 2 entries but the model has 8 heads", workdir="{w}"),
    _early("resnet_weights_missing", "`model_init` naming ResNet weights that do not exist",
           "train", (*DEFAULT, "--config.data.num_train=0", "--config.model.stem=imagenet",
                     "--config.model.width=64", "--config.model_init={w}.safetensors"),
           ".safetensors do not exist; pass a Hugging Face checkpoint directory or a "
           ".safetensors/.pth state dict", workdir="{w}"),
    # An empty cache: HF_HOME is the case's folder. Offline, nothing touches the network.
    _early("hub_id_offline_not_cached",
           "`model_init` a Hugging Face Hub id not in the cache, with `HF_HUB_OFFLINE=1`", "train",
           (*DEFAULT, "--config.data.num_train=0", "--config.model.stem=imagenet",
            "--config.model.width=64", "--config.model_init=owner/not-cached"),
           ("model_init='owner/not-cached' is not a local path, and the Hugging Face Hub model "
            "owner/not-cached is not in the cache", "`hf download owner/not-cached`",
            "or pass a local checkpoint directory"), workdir="{w}",
           env=(("HF_HOME", "{files}/hf_home"), ("HF_HUB_OFFLINE", "1"))),
    _early("resnet_weights_other_width", "ResNet `model_init` with `model.width=16`", "train",
           (*DEFAULT, "--config.data.num_train=0", "--config.model_init={w}.safetensors"),
           "Pretrained ResNets have the ImageNet stem and width 64; the model has "
           "stem='small', width=16", workdir="{w}"),
    Case("workdir_is_a_file", "`--workdir` names a file", "train",
         (*TINY, "--workdir={files}/afile"), ("--workdir=", "/afile is a file; a workdir is a "
                                              "directory"), setup="a_file"),
    # Workdirs and checkpoints.
    Case("rerun_with_another_config", "rerun of a workdir with another batch size and rate",
         "train", (*TINY, "--config.train.batch_size=8", "--config.train.learning_rate=0.2",
                   "--workdir={trained}"),
         ("holds checkpoints of another config: train.batch_size: 16 in the workdir, 8 here; "
          "train.learning_rate: 0.05 in the workdir, 0.2 here", "--config.train.resume=force")),
    Case("rerun_with_other_data", "rerun of a workdir with another data seed", "train",
         (*TINY, "--config.data.seed=1", "--workdir={trained}"),
         ("holds checkpoints of another config: data.seed: 0 in the workdir, 1 here",)),
    Case("rerun_forced", "the same with `--config.train.resume=force`", "train",
         (*TINY, "--config.data.seed=1", "--config.train.resume=force", "--workdir={trained}"),
         ("with a changed config (train.resume=force): data.seed: 0 in the workdir, 1 here",),
         returncode=0),
    Case("eval_other_width", "eval with another `model.width` than the checkpoint", "eval",
         (*TINY, "--config.model.width=8", "--workdir={trained}"),
         ("builds another model than the one", "model.width: 4 in the workdir, 8 here",
          "Leave out --config to use the workdir's saved config")),
    Case("eval_plain_model", "eval with `model.mhex=False` on an MHEX checkpoint", "eval",
         (*TINY, "--config.model.mhex=False", "--workdir={trained}"),
         ("model.mhex: True in the workdir, False here",)),
    Case("eval_other_optimizer", "eval with another optimizer than training's", "eval",
         ("--config.train.optimizer=adamw", *SMALL_EVAL, "--workdir={trained}"),
         ("Restored", "at step 8"), returncode=0),
    Case("eval_no_workdir", "eval of a workdir that does not exist", "eval",
         ("--workdir={w}",), ("/config.json does not exist:", "is not a workdir written by "
                                                              "train.py")),
    Case("eval_no_checkpoint", "eval of a workdir without checkpoints", "eval",
         (*DEFAULT, "--workdir={files}"), ("No checkpoint in", "train first")),
    *(Case(f"train_{how}", f"latest checkpoint {how.replace('_', ' ')}: train", "train",
           (*TINY, "--workdir={trained}"),
           ("Damaged checkpoint", "/checkpoints/8 (", "Resuming from step 6 instead"),
           returncode=0, setup=f"damage_{how}")
      for how in ("truncated", "metadata_deleted", "emptied", "overwritten")),
    *(Case(f"eval_{how}", f"latest checkpoint {how.replace('_', ' ')}: eval", "eval",
           (*SMALL_EVAL, "--workdir={trained}"),
           ("Damaged checkpoint", "/checkpoints/8 (", "Resuming from step 6 instead"),
           returncode=0, setup=f"damage_{how}")
      for how in ("truncated", "metadata_deleted", "emptied", "overwritten")),
    Case("every_checkpoint_damaged", "every checkpoint damaged", "eval",
         ("--workdir={trained}",), ("No intact checkpoint in", "/checkpoints/8: ",
                                    "Move these step directories out of"),
         setup="damage_all"),
    Case("workdir_locked", "`train.py` on a workdir another training run holds", "train",
         (*TINY, "--workdir={trained}"),
         ("is in use by another training run (host", "Wait for it to finish, stop it"),
         setup="live_lock"),
    Case("workdir_lock_stale", "`train.py` on a workdir whose last run was killed (`kill -9`)",
         "train", (*TINY, "--workdir={trained}"),
         ("Took over the training lock", "no longer exists on this host"), returncode=0,
         setup="dead_lock"),
    Case("disk_full", "disk full during a checkpoint save", "train",
         (*TINY, "--workdir={files}/disk/run"),
         ("No space left on the device holding", "/disk/run/checkpoints",
          "rerun the same command to resume"), setup="small_disk"),
    # Data files.
    Case("npz_missing", "`data.path` that does not exist", "train",
         (*MEDMNIST, "--config.data.path={files}/nope.npz", "--workdir={w}"),
         ("/nope.npz does not exist",)),
    Case("npz_is_a_directory", "`data.path` a directory", "train",
         (*MEDMNIST, "--config.data.path={files}", "--workdir={w}"),
         ("is a directory, not an .npz file",)),
    Case("npz_empty_split", "a split with 0 examples", "train",
         (*MEDMNIST, "--config.data.path={files}/empty_val.npz", "--workdir={w}"),
         ("empty_val.npz: the 'val' split is empty ('val_images' has shape [0, 28, 28])",),
         setup="empty_split"),
    Case("npz_is_text", "a text file named `.npz`", "train",
         (*MEDMNIST, "--config.data.path={files}/text.npz", "--workdir={w}"),
         ("text.npz is not a NumPy .npz archive",), setup="text_npz"),
    Case("labels_beyond_num_classes", "`model.num_classes=3` on 4-class data", "train",
         (*TINY, "--config.model.num_classes=3", "--workdir={w}"),
         ("label 3", "outside [0, 3)")),
    Case("few_classes_used", "`model.num_classes=10` on 4-class data (a warning)", "train",
         (*MEDMNIST, "--config.data.path={files}/four_classes.npz",
          "--config.model.num_classes=10", "--config.data.class_names=()", "--workdir={w}"),
         ("span 4 classes", "model.num_classes=10", "Set model.num_classes=4"),
         returncode=0, setup="four_classes"),
    Case("keep_best_without_validation", "`train.keep_best=val_accuracy` without a validation "
         "split", "train", (*TEXT, "--config.data.path={files}/good.csv",
                            "--config.train.keep_best=val_accuracy", "--workdir={w}"),
         ("train.keep_best='val_accuracy' needs a validation split of the training data: set "
          "data.val_fraction",), setup="good_csv"),
    Case("csv_unclosed_quote", "a CSV whose quote never closes (a field over any limit)",
         "train", (*TEXT, "--config.data.path={files}/unclosed.csv", "--workdir={w}"),
         ("unclosed.csv, line 2: a field is longer than", "a quote opened on that line is "
                                                          "never closed"),
         setup="unclosed_csv"),
    Case("csv_every_text_empty", "every text of a CSV empty", "train",
         (*TEXT, "--config.data.path={files}/allempty.csv", "--workdir={w}"),
         ("allempty.csv: the text", "is empty in every row"), setup="all_empty_csv"),
    Case("csv_text_without_tokens", "a text the tokenizer drops entirely", "train",
         (*TEXT, "--config.data.path={files}/zerowidth.csv", "--workdir={w}"),
         ("zerowidth.csv: 1 of 17 texts have no token", "at line(s) 11"),
         setup="zero_width_csv"),
    # Image folders (configs/image_folder.py).
    Case("folder_empty_class", "an empty class folder", "train", (*FOLDER, "--workdir={w}"),
         ("/images/tumour holds no images", "add its images or remove the folder"),
         setup="folder_empty_class"),
    Case("folder_one_class", "an image folder of one class", "train", (*FOLDER, "--workdir={w}"),
         ("/images holds one class only ('normal')", "images of at least two classes"),
         setup="folder_one_class"),
    Case("folder_class_count", "3 class folders with `model.num_classes=2`", "train",
         (*FOLDER, "--config.model.num_classes=2", "--workdir={w}"),
         ("has 3 classes (lesion, normal, tumour) but model.num_classes=2",
          "--config.model.num_classes=3"), setup="folder_three_classes"),
    Case("folder_not_an_image", "a non-image file in a class folder", "train",
         (*FOLDER, "--workdir={w}"),
         ("/images/normal/notes.txt is not an image file (suffix '.txt'",
          "move other files out of the class folders"), setup="folder_not_an_image"),
    Case("folder_manifest_missing_file", "a manifest row naming a missing file", "train",
         (*FOLDER, "--config.data.path={files}/manifest.csv", "--workdir={w}"),
         ("manifest.csv, line 3: image images/lesion/gone.png does not exist",
          "paths are relative to the manifest's folder"), setup="folder_manifest"),
    Case("folder_unknown_eval_class", "a class in the `val` split folder that `train` lacks",
         "train", (*FOLDER, "--config.data.path={files}/split", "--workdir={w}"),
         ("/split/val has the class(es) ['tumour'], which are not among the classes ['lesion', "
          "'normal']",), setup="folder_split_unknown_class"),
    Case("folder_unreadable_image", "a corrupt image in a class folder", "train",
         (*FOLDER, "--workdir={w}"),
         ("/images/lesion/img_0.png is not an image file that can be read",
          "--config.data.skip_unreadable=True"), setup="folder_corrupt_image"),
    Case("folder_mask_other_size", "a mask of another size than its image", "train",
         (*FOLDER, "--config.data.mask_root={files}/images_masks", "--workdir={w}"),
         ("is 8x8 (width x height) but its image", "is 16x16; a mask must have its image's "
                                                   "size"), setup="folder_mask_other_size"),
    # Pretrained weights.
    Case("weights_truncated", "a truncated `model.safetensors`", "train",
         (*TEXT, "--config.data.path={files}/good.csv", "--workdir={w}"),
         ("bert/model.safetensors is not a readable safetensors file (truncated or corrupt?)",),
         setup="weights_truncated"),
    Case("weights_config_broken", "a broken `config.json` of the weights", "train",
         (*TEXT, "--config.data.path={files}/good.csv", "--workdir={w}"),
         ("bert/config.json is not valid JSON",), setup="weights_bad_json"),
    Case("weights_missing", "no `model.safetensors` in the checkpoint directory", "train",
         (*TEXT, "--config.data.path={files}/good.csv", "--workdir={w}"),
         ("No model.safetensors in", "/bert"), setup="weights_missing"),
    Case("weights_non_finite", "a NaN in an imported weight", "train",
         (*TEXT, "--config.data.path={files}/good.csv", "--workdir={w}"),
         ("bert/model.safetensors: encoder.layer.0.attention.self.query.weight holds 3 "
          "non-finite values",), setup="weights_nan"),
    # Explaining files.
    Case("explain_not_an_image", "explain a text file named `.png`", "explain",
         ("--workdir={trained}", "{files}/fake.png"),
         ("fake.png is not an image file that can be read",), setup="fake_png"),
    Case("explain_multi_frame_dicom", "explain a multi-frame DICOM", "explain",
         ("--workdir={trained}", "{files}/cine.dcm"),
         ("cine.dcm is a multi-frame DICOM of 3 frames",
          "export each frame as a single-frame DICOM"), setup="multi_frame_dicom"),
    Case("explain_missing_file", "explain a file that does not exist", "explain",
         ("--workdir={trained}", "{files}/nope.png"),
         ("Image file", "/nope.png does not exist")),
    Case("explain_no_workdir", "explain with a workdir that does not exist", "explain",
         ("--workdir={w}", "{files}/nope.png"), ("is not a workdir written by train.py",)),
    Case("explain_text_on_image_model", "`--text` for an image model", "explain",
         ("--workdir={trained}", "--text=hello"), ("--text is for text models",)),
    Case("explain_workdir_and_model_init", "explain with both `--workdir` and `--model_init`",
         "explain", ("--workdir={w}", "--model_init={files}", "{files}/a.png"),
         ("are both given; explain a trained workdir or a pretrained checkpoint",),
         before_compile=True, before_data=True),
    Case("explain_no_model", "explain with neither `--workdir` nor `--model_init`", "explain",
         ("{files}/a.png",), ("Give --workdir=DIR (a run trained by train.py) or "
                              "--model_init=DIR",), before_compile=True, before_data=True),
    Case("explain_model_init_no_config", "`--model_init` a directory without `config.json`",
         "explain", ("--model_init={files}", "{files}/a.png"), ("No config.json in",),
         before_compile=True, before_data=True),
    Case("explain_model_init_no_processor",
         "`--model_init` an image classifier without `preprocessor_config.json`", "explain",
         ("--model_init={files}/vit", "{files}/a.png"),
         ("No preprocessor_config.json in", "are not guessed"), setup="vit_config",
         before_compile=True, before_data=True),
)

TRAINED = Case("trained", "", "train", (*TINY, "--workdir={w}"), (), returncode=0)


# Setups: (files, trained) -> None, writing into ``files`` or damaging ``trained``.
def _a_file(files, trained):
  (files / "afile").write_text("not a directory\n")


def _empty_split(files, trained):
  zeros = np.zeros
  np.savez(files / "empty_val.npz", train_images=zeros((16, 28, 28), np.uint8),
           train_labels=(np.arange(16) % 2)[:, None], val_images=zeros((0, 28, 28), np.uint8),
           val_labels=zeros((0, 1), np.uint8))


def _text_npz(files, trained):
  (files / "text.npz").write_text("image,label\n1,2\n")


def _four_classes(files, trained):
  np.savez(files / "four_classes.npz", train_images=np.zeros((16, 28, 28), np.uint8),
           train_labels=(np.arange(16) % 4)[:, None], val_images=np.zeros((8, 28, 28), np.uint8),
           val_labels=(np.arange(8) % 4)[:, None])


def _tiny_bert(directory: pathlib.Path) -> None:
  """A random 1-layer BERT (width 8) with a 14-word vocabulary, as a Hugging Face directory."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  directory.mkdir(parents=True, exist_ok=True)
  vocab = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat dog ran .".split()
  hidden, inner, rng = 8, 16, np.random.default_rng(0)
  shapes = {"embeddings.word_embeddings.weight": (len(vocab), hidden),
            "embeddings.position_embeddings.weight": (32, hidden),
            "embeddings.token_type_embeddings.weight": (2, hidden)}
  layer = "encoder.layer.0."
  for name in ("attention.self.query", "attention.self.key", "attention.self.value",
               "attention.output.dense"):
    shapes[f"{layer}{name}.weight"], shapes[f"{layer}{name}.bias"] = (hidden, hidden), (hidden,)
  shapes[f"{layer}intermediate.dense.weight"] = (inner, hidden)
  shapes[f"{layer}intermediate.dense.bias"] = (inner,)
  shapes[f"{layer}output.dense.weight"], shapes[f"{layer}output.dense.bias"] = ((hidden, inner),
                                                                              (hidden,))
  for name in ("embeddings.LayerNorm", f"{layer}attention.output.LayerNorm",
               f"{layer}output.LayerNorm"):
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (hidden,), (hidden,)
  tensors = {k: (0.02 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
  safetensors.numpy.save_file(tensors, directory / "model.safetensors",
                              metadata={"format": "pt"})
  (directory / "config.json").write_text(json.dumps(dict(
      model_type="bert", vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1,
      num_attention_heads=2, intermediate_size=inner, max_position_embeddings=32,
      type_vocab_size=2)))
  (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
  (directory / "tokenizer_config.json").write_text(
      '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')


def _text_files(files, rows: str, name: str) -> None:
  _tiny_bert(files / "bert")
  (files / name).write_text(rows)


def _unclosed_csv(files, trained):
  _text_files(files, '"1","the cat","sat"\n"2","never closed, mat\n' + "the cat sat\n" * 1_500_000,
              "unclosed.csv")


def _all_empty_csv(files, trained):
  _text_files(files, '"1","",""\n"2","",""\n' * 10, "allempty.csv")


def _zero_width_csv(files, trained):
  _text_files(files, '"1","the cat","sat"\n' * 10 + '"2","\u200b",""\n'
              + '"2","the dog","ran"\n' * 10, "zerowidth.csv")


def _good_csv(files):
  _text_files(files, '"1","the cat sat","on the mat"\n"2","the dog ran","."\n' * 20, "good.csv")


def _weights_truncated(files, trained):
  _good_csv(files)
  path = files / "bert" / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-100])


def _weights_bad_json(files, trained):
  _good_csv(files)
  (files / "bert" / "config.json").write_text('{"model_type": "bert", "hidden_size": 8,')


def _weights_missing(files, trained):
  _good_csv(files)
  (files / "bert" / "model.safetensors").unlink()


def _weights_nan(files, trained):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  _good_csv(files)
  path = files / "bert" / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  tensors["encoder.layer.0.attention.self.query.weight"].flat[:3] = np.nan
  safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _fake_png(files, trained):
  (files / "fake.png").write_text("not an image\n")


def _multi_frame_dicom(files, trained):
  """A 3-frame 8-bit DICOM (a cine loop), as pydicom writes it."""
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom.uid import SecondaryCaptureImageStorage  # pylint: disable=g-import-not-at-top
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
  ds.set_pixel_data(np.zeros((3, 16, 16), np.uint8), "MONOCHROME2", 8)
  ds.save_as(files / "cine.dcm", enforce_file_format=True)


def _vit_config(files, trained):
  """A ViT classifier's config.json alone: no processor beside it (nor weights)."""
  (files / "vit").mkdir()
  (files / "vit" / "config.json").write_text(json.dumps(dict(
      model_type="vit", architectures=["ViTForImageClassification"], image_size=32,
      patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=32, id2label={"0": "cat", "1": "dog"})))


def _damage_step(step_dir, how):
  """``damage`` in a child process: this runner forks its cases, and orbax (which "overwritten"
  uses) starts threads, which a fork must not inherit."""
  subprocess.run([sys.executable, os.fspath(ROOT / "tests" / "damage.py"), os.fspath(step_dir),
                  how], check=True, capture_output=True,
                 env={**os.environ, "PYTHONPATH": os.fspath(ROOT)})


def _damage(how):
  return lambda files, trained: _damage_step(trained / "checkpoints" / "8", how)


def _damage_all(files, trained):
  for step, how in ((3, "emptied"), (6, "truncated"), (8, "metadata_deleted")):
    _damage_step(trained / "checkpoints" / str(step), how)


def _small_disk(files, trained):
  """A 160 KiB tmpfs: room for the config and the logs, not for a checkpoint."""
  (files / "disk").mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(files / "disk")],
                 check=True, capture_output=True)


def write_lock(path, **fields):
  """A training lock at ``path`` held by another run: by default this process on this host
  with a fresh heartbeat (the file's time, as ``mhex_jax.workdir_lock`` reads it)."""
  now = time.time()
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": now - 60,
            "command": "train.py --config=configs/default.py --workdir=run", "heartbeat": now,
            "token": "another-run", **fields}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(holder))
  os.utime(path, (holder["heartbeat"], holder["heartbeat"]))


def dead_pid() -> int:
  """A process id no process has now (a child, reaped; ids are not reused at once)."""
  process = subprocess.Popen(["true"])
  process.wait()
  return process.pid


def _live_lock(files, trained):
  write_lock(trained / "train.lock")  # This runner: alive while the case runs.


def _dead_lock(files, trained):
  write_lock(trained / "train.lock", pid=dead_pid())


def _folder_tree(root: pathlib.Path, classes=("lesion", "normal"), per_class=10,
                 masks: bool = False) -> None:
  """``root/<class>/img_<i>.png``: 16 x 16 8-bit PNGs of a bright square on a dark ground, and
  with ``masks`` their masks at the same paths under ``root``_masks."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  mask_root = root.with_name(root.name + "_masks")
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      mask = np.zeros((16, 16), bool)
      mask[2 + i % 8:8 + i % 8, 2 + c * 6:8 + c * 6] = True
      Image.fromarray(np.where(mask, 220, 30).astype(np.uint8)).save(root / name / f"img_{i}.png")
      if masks:
        (mask_root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_root / name / f"img_{i}.png")


def _folder_empty_class(files, trained):
  _folder_tree(files / "images")
  (files / "images" / "tumour").mkdir()


def _folder_not_an_image(files, trained):
  _folder_tree(files / "images")
  (files / "images" / "normal" / "notes.txt").write_text("scanned 2024\n")


def _folder_manifest(files, trained):
  _folder_tree(files / "images")
  (files / "manifest.csv").write_text("path,label\nimages/lesion/img_0.png,lesion\n"
                                      "images/lesion/gone.png,lesion\n")


def _folder_split_unknown_class(files, trained):
  _folder_tree(files / "split" / "train")
  _folder_tree(files / "split" / "val", classes=("lesion", "tumour"), per_class=2)


def _folder_corrupt_image(files, trained):
  _folder_tree(files / "images")
  (files / "images" / "lesion" / "img_0.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")


def _folder_mask_other_size(files, trained):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  _folder_tree(files / "images", masks=True)
  for mask in (files / "images_masks" / "lesion").iterdir():  # The eval split holds 2 of them.
    Image.new("L", (8, 8)).save(mask)


_FOLDER_SETUPS = {
    "folder_empty_class": _folder_empty_class,
    "folder_one_class": lambda files, trained: _folder_tree(files / "images", ("normal",)),
    "folder_three_classes": lambda files, trained: _folder_tree(
        files / "images", ("lesion", "normal", "tumour")),
    "folder_not_an_image": _folder_not_an_image, "folder_manifest": _folder_manifest,
    "folder_split_unknown_class": _folder_split_unknown_class,
    "folder_corrupt_image": _folder_corrupt_image,
    "folder_mask_other_size": _folder_mask_other_size}


SETUPS = {"a_file": _a_file, **_FOLDER_SETUPS,
          "tiny_bert": lambda files, trained: _tiny_bert(files / "bert"),
          "good_csv": lambda files, trained: _good_csv(files),
          "live_lock": _live_lock, "dead_lock": _dead_lock,
          "empty_split": _empty_split, "text_npz": _text_npz,
          "four_classes": _four_classes, "unclosed_csv": _unclosed_csv,
          "all_empty_csv": _all_empty_csv, "zero_width_csv": _zero_width_csv,
          "weights_truncated": _weights_truncated, "weights_bad_json": _weights_bad_json,
          "weights_missing": _weights_missing, "weights_nan": _weights_nan,
          "fake_png": _fake_png, "multi_frame_dicom": _multi_frame_dicom,
          "vit_config": _vit_config, "damage_all": _damage_all,
          "small_disk": _small_disk,
          **{f"damage_{how}": _damage(how)
             for how in ("truncated", "metadata_deleted", "emptied", "overwritten")}}


def markdown() -> str:
  """The docs/errors.md table: what the user did, and the start of what they read."""
  rows = ["| what you did | what stderr says (excerpts) | exit status |", "|---|---|---|"]
  for case in CASES:
    expect = " … ".join(case.expect).replace("|", "\\|")
    rows.append(f"| {case.problem} | {expect} | {case.returncode} |")
  return "\n".join(rows) + "\n"


def _child(case: Case, argv: list[str], env: dict[str, str], out: pathlib.Path) -> None:
  """Runs one entry point in this (forked) process with its output in ``out`` and ``env`` in
  its environment; never returns."""
  code = 1
  try:
    os.environ.update(env)
    for fd, name in ((1, "stdout"), (2, "stderr")):
      os.dup2(os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(ROOT)
    sys.argv = [f"{case.command}.py", *argv]
    try:
      entry = importlib.import_module(f"mhex_jax.cli.{case.command}")
      sys.modules["__main__"].__doc__ = entry.__doc__  # What absl's usage message prints.
      entry.run()
      code = 0
    except SystemExit as exit_:
      code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
  except BaseException:  # What Python itself would print for an uncaught exception.
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _names(work: pathlib.Path) -> dict[str, str]:
  names = {"w": work / "w", "files": work / "files", "trained": work / "trained"}
  return {k: os.fspath(v) for k, v in names.items()}


def _argv(case: Case, work: pathlib.Path) -> list[str]:
  return [a.format(**_names(work)) for a in case.args]


def _env(case: Case, work: pathlib.Path) -> dict[str, str]:
  return {k: v.format(**_names(work)) for k, v in case.env}


def _prepare(case: Case, work: pathlib.Path, trained: pathlib.Path) -> list[str]:
  (work / "files").mkdir(parents=True)
  (work / "out").mkdir()
  if case.uses_trained:
    shutil.copytree(trained, work / "trained")
  if case.setup:
    SETUPS[case.setup](work / "files", work / "trained")
  return _argv(case, work)


def _cleanup(case: Case, work: pathlib.Path) -> None:
  if case.setup == "small_disk":
    subprocess.run(["umount", os.fspath(work / "files" / "disk")], capture_output=True)


def run_cases(cases, work: pathlib.Path, parallel: int = 2, timeout: float = 180) -> dict:
  """Runs ``TRAINED`` (the run the workdir cases copy), then ``cases``, ``parallel`` at a
  time; {name: {"returncode", "stdout", "stderr", "seconds"}}."""
  os.environ["JAX_LOG_COMPILES"] = "1"  # "Compiling ..." lines show what compiled.
  # A rerun compiles what its training run compiled: with JAX's persistent cache (which the
  # entry points do not turn on yet) it is read back, as on a machine that keeps the cache.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.fspath(work / "jax_cache")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  for module in ("jax", "flax.linen", "optax", "orbax.checkpoint", "transformers",
                 "mhex_jax.train_lib", "mhex_jax.eval_lib", "mhex_jax.explain_lib"):
    importlib.import_module(module)  # Once here, not in every child.
  results, running = {}, {}

  def start(case):
    case_dir = work / case.name
    argv = _prepare(case, case_dir, work / TRAINED.name / "w")
    pid = os.fork()
    if pid == 0:
      _child(case, argv, _env(case, case_dir), case_dir / "out")
    running[pid] = (case, time.time())

  def collect(pid, status):
    case, started = running.pop(pid)
    out = work / case.name / "out"
    code = os.waitstatus_to_exitcode(status)
    results[case.name] = {"returncode": code, "seconds": round(time.time() - started, 2),
                          "stdout": (out / "stdout").read_text(errors="replace"),
                          "stderr": (out / "stderr").read_text(errors="replace")}
    _cleanup(case, work / case.name)

  def wait_one():
    while True:
      for pid, (case, started) in list(running.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
          return collect(pid, status)
        if time.time() - started > timeout:
          os.kill(pid, 9)
      time.sleep(0.05)

  # Config errors (nothing compiles) start beside the trained run; the rest wait for it, so
  # they read its compiled programs back from the cache instead of compiling them again.
  start(TRAINED)
  pending = list(cases)
  while pending or running:
    trained = results.get(TRAINED.name)
    if trained is not None and trained["returncode"] != 0:
      raise RuntimeError("The tiny training run failed:\n" + trained["stderr"])
    ready = [case for case in pending if trained is not None or case.before_compile]
    if ready and len(running) < parallel:
      pending.remove(ready[0])
      start(ready[0])
    else:
      wait_one()
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--markdown", action="store_true", help="Print the docs/errors.md table.")
  parser.add_argument("--run", help="Run the cases; write their results to this JSON file.")
  parser.add_argument("--work", help="A new directory for the cases' files.")
  parser.add_argument("--only", default="", help="Comma-separated case names (default: all).")
  args = parser.parse_args()
  if args.markdown:
    print(markdown(), end="")
    return
  only = set(filter(None, args.only.split(",")))
  cases = [c for c in CASES if not only or c.name in only]
  results = run_cases(cases, pathlib.Path(args.work))
  pathlib.Path(args.run).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
