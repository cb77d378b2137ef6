r"""MHEX maps on imported checkpoints against their forward pass, in one process.

    python -m benchmarks.imported [--out=benchmarks/results] [--rounds=9] [--quick]

Writes a ViT-B/16-sized DINOv2 (d 768, 12 layers, 12 heads, patch 16, 224 px) and a ResNet-50
with random weights as Hugging Face checkpoints (``save_pretrained``, needs torch and
transformers), imports each into an MHEX model through ``mhex_jax.weights`` as a user would, and
times the MHEX maps of given classes and of the predicted class against the prediction (the
final head's logits), in interleaved rounds (``harness.interleaved``). Writes
``imported.{json,md}`` beside the main table; ``--quick`` is one batch size at 112 px.
"""

import argparse
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from benchmarks import run as run_lib
from mhex_jax import host_allocator
from mhex_jax import weights
from mhex_jax.explain import registry
from mhex_jax.models import resnet

NUM_CLASSES = 1000
GROUP = "imported checkpoint: MHEX / forward"


def _save_dinov2(directory: pathlib.Path, image_size: int) -> None:
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.Dinov2Config(hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, intermediate_size=3072,
                                     patch_size=16, image_size=image_size)
  transformers.Dinov2Model(config).save_pretrained(directory, safe_serialization=True)


def _save_resnet50(directory: pathlib.Path) -> None:
  import transformers  # pylint: disable=g-import-not-at-top
  config = transformers.ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck",
                                     hidden_sizes=[256, 512, 1024, 2048], embedding_size=64)
  transformers.ResNetModel(config).save_pretrained(directory, safe_serialization=True)


def imported_models(directory: pathlib.Path, image_size: int):
  """{name: (model, variables)}: each checkpoint imported into MHEX, as ``train.py`` would."""
  dinov2_dir, resnet_dir = directory / "dinov2_b16", directory / "resnet50"
  _save_dinov2(dinov2_dir, image_size)
  _save_resnet50(resnet_dir)
  vit_model, vit_variables = weights.load_vit(dinov2_dir, num_classes=NUM_CLASSES, mhex=True)
  model = resnet.ResNet(num_classes=NUM_CLASSES, depth=50, width=64, stem="imagenet", mhex=True)
  init = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
  params, batch_stats, _ = weights.load_resnet_params(model, init["params"],
                                                      init["batch_stats"], resnet_dir)
  return {"dinov2 ViT-B/16": (vit_model, vit_variables),
          "resnet50": (model, {"params": params, "batch_stats": batch_stats})}


def imported_vs_forward(models, size: int, batches, rounds: int):
  rows = []
  for name, (model, variables) in models.items():
    forward, mhex = run_lib._forward(model), jax.jit(registry.explainer("mhex", model))
    for batch in batches:
      x, y = run_lib._images(batch, size), run_lib._targets(batch)
      times = harness.interleaved({"forward": lambda: forward(variables, x),
                                   "mhex": lambda: mhex(variables, x, y),
                                   "mhex, predicted class": lambda: mhex(variables, x, None)},
                                  rounds)
      for method in ("mhex", "mhex, predicted class"):
        rows.append(run_lib._row(GROUP, f"{name}, {size}², batch {batch}", times, method,
                                 "forward"))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="112 px, batch 1.")
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  parser.add_argument("--rounds", type=int, default=None)
  args = parser.parse_args()
  rounds = args.rounds or (3 if args.quick else 9)
  host_allocator.keep_large_buffers()
  size, batches = (112, [1]) if args.quick else (224, [1, 8])
  with tempfile.TemporaryDirectory() as directory:
    models = imported_models(pathlib.Path(directory), size)
  rows = imported_vs_forward(models, size, batches, rounds)
  results = {"machine": harness.machine(), "rounds": rounds, "quick": args.quick,
             "rows": rows, "notes": []}
  harness.write_results(args.out, "imported", results, run_lib.markdown(results))
  print(run_lib.markdown(results))


if __name__ == "__main__":
  main()
