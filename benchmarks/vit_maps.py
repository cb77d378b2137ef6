r"""Where a trained MHEX-ViT keeps its class evidence, and how its patch maps score.

    python -m benchmarks.vit_maps --workdir=runs/vit_quick [--workdir=runs/vit_quick_seed1]
        [--split=val] [--num=200] [--methods=...] [--out=benchmarks/results]

For a workdir trained with ``configs/vit_imagenet.py:quick`` (the built-in synthetic shapes,
which have object masks), on the first ``--num`` images of ``--split`` ("val" chooses, "test"
reports):

* **Per-layer diagnostics** (the token-norm reading of "Vision Transformers Need Registers",
  arXiv 2309.16588): the mean norm of the layer's features A_ℓ = s + r on object and on
  background patches, the share of the 5% highest-norm patches that lie on the background (the
  background's share of the patches, for comparison), the attention in-degree (each patch's
  column sum of the head-averaged attention, object against background) and the per-token class
  score e_c · A_ℓ[t] (the unrouted CAM): the share of its positive mass on the object.
  A figure, OUT/vit_tokens.png: for four images, per layer, the token norms, in-degrees and
  class scores on the patch grid.
* **Map scores** by ``eval_lib.evaluate`` (the same metrics, targets and examples as
  ``eval.py``), and per image the Pearson correlation of each map with attention rollout's
  (median over images), which says how much of a map is the rollout's.

Writes OUT/vit_maps.{json,md} (one section per workdir and split; earlier sections of other
workdirs or splits are kept).
"""

import argparse
import json
import pathlib
import shutil
import sys
import tempfile

import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

from benchmarks import harness  # pylint: disable=g-import-not-at-top
from mhex_jax import checkpoints
from mhex_jax import config_lib
from mhex_jax import eval_lib
from mhex_jax import model_lib
from mhex_jax import sharding as sharding_lib
from mhex_jax import workdir as workdir_lib
from mhex_jax.data import input_pipeline
from mhex_jax.explain import token_flow
from mhex_jax.explain import transformer
from mhex_jax.models import mhex as mhex_lib

DEFAULT_METHODS = ("mhex,mhex_cam_flow,mhex_flow,mhex_flow_final,mhex_split,mhex_split_rollout,"
                   "mhex_split_unrouted,attention_rollout,gradient_relevance,grad_sam,"
                   "integrated_gradients")
METRICS = ("pointing_game", "energy_pointing_game", "deletion_auc", "insertion_auc")


def _config(workdir: str, split: str, num: int, methods: str):
  config = workdir_lib.load_config(workdir)
  config.data.eval_split = split
  config.eval.num_explain = num
  config.eval.first_example = 0
  config.eval.methods = methods
  config.eval.save_maps = True
  config.eval.num_gallery = 0
  with config.unlocked():
    for key in ("map", "flow_rows"):  # Workdirs saved before the options existed.
      if key not in config.eval.mhex:
        config.eval.mhex[key] = config_lib.placeholder(str)
    for name, options in config_lib.vit_flow_variants().items():
      if name not in config.eval.variants:
        config.eval.variants[name] = options
  return input_pipeline.with_data_classes(workdir_lib.with_decisions(config, workdir))


def _first_batch(config, num: int):
  _, eval_ds = input_pipeline.get_datasets(config.data, config.model.num_classes,
                                           need_train=False)
  batch = next(iter(eval_ds.batches(num, train=False)))
  return eval_ds, batch


def diagnostics(config, workdir: str, num: int) -> tuple[dict, dict]:
  """Per-layer token statistics on object and background patches, and the figure's arrays."""
  model = model_lib.create_model(config)
  eval_ds, batch = _first_batch(config, num)
  variables = checkpoints.restore_variables(workdir, model, eval_ds.dummy_inputs(),
                                            sharding_lib.replicated(
                                                sharding_lib.make_mesh(None)))
  images = jnp.asarray(batch["image"])
  forward = token_flow.forward_pass(model, variables, images, None)
  prefix, grid = model.num_prefix_tokens, model.grid_size
  # A patch is on the object when any of its pixels is.
  masks = np.asarray(batch["mask"]) > 0
  gh, gw = grid
  ph, pw = masks.shape[1] // gh, masks.shape[2] // gw
  on_object = masks.reshape(len(masks), gh, ph, gw, pw).any(axis=(2, 4)).reshape(len(masks), -1)
  rows, figure = [], {"norm": [], "in_degree": [], "class_score": []}
  for i, layer in enumerate(forward.layers):
    features = np.asarray(layer.block.features, np.float32)[:, prefix:]
    norms = np.linalg.norm(features, axis=-1)
    in_degree = np.asarray(transformer.head_mean(layer.probs)).sum(axis=1)[:, prefix:]
    rows_e = np.asarray(mhex_lib.target_rows(layer.block.gate_kernel, layer.block.head_kernel,
                                              forward.targets))
    score = np.einsum("btd,bd->bt", features, rows_e)
    top = norms >= np.quantile(norms, 0.95, axis=1, keepdims=True)
    positive = np.maximum(score, 0)
    rows.append({
        "layer": i,
        "norm_object": float(norms[on_object].mean()),
        "norm_background": float(norms[~on_object].mean()),
        "top5_norm_on_background": float((top & ~on_object).sum() / top.sum()),
        "background_share": float((~on_object).mean()),
        "in_degree_object": float(in_degree[on_object].mean()),
        "in_degree_background": float(in_degree[~on_object].mean()),
        "class_score_positive_on_object": float(
            (positive * on_object).sum() / max(positive.sum(), 1e-12)),
    })
    for key, value in (("norm", norms), ("in_degree", in_degree), ("class_score", score)):
      figure[key].append(value[:4].reshape(-1, gh, gw))
  figure["images"] = np.asarray(batch["image"][:4])
  figure["masks"] = masks[:4]
  return {"layers": rows, "num_images": int(len(masks))}, figure


def save_figure(figure: dict, path: pathlib.Path, mean, std) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers = len(figure["norm"])
  rows = [("norm", "token norm"), ("in_degree", "attention in-degree"),
          ("class_score", "class score e·A")]
  fig, axes = plt.subplots(4, 1 + layers * len(rows), figsize=(1.3 * (1 + layers * 3), 5.6))
  images = np.clip(figure["images"] * np.asarray(std) + np.asarray(mean), 0, 1)
  for n in range(4):
    axes[n, 0].imshow(images[n])
    axes[n, 0].contour(figure["masks"][n], levels=[0.5], colors="w", linewidths=0.6)
    for r, (key, title) in enumerate(rows):
      for layer in range(layers):
        ax = axes[n, 1 + r * layers + layer]
        value = figure[key][layer][n]
        ax.imshow(value, cmap="RdBu_r" if key == "class_score" else "viridis",
                  **({"vmin": -abs(value).max(), "vmax": abs(value).max()}
                     if key == "class_score" else {}))
        if n == 0:
          ax.set_title(f"{title}\nlayer {layer}", fontsize=6)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def map_scores(config, workdir: str) -> dict:
  """``eval_lib.evaluate`` on the configured examples (into a scratch copy of the eval
  directory), and each map's per-image Pearson correlation with attention rollout."""
  eval_dir = pathlib.Path(workdir) / "eval"
  kept = pathlib.Path(tempfile.mkdtemp()) / "eval"
  if eval_dir.exists():
    shutil.copytree(eval_dir, kept)
  try:
    report = eval_lib.evaluate(config, workdir)
    with np.load(eval_dir / "per_example.npz") as per_example:
      maps = {k[:-len("/maps")]: per_example[k] for k in per_example.files
              if k.endswith("/maps")}
  finally:
    shutil.rmtree(eval_dir, ignore_errors=True)
    if kept.exists():
      shutil.copytree(kept, eval_dir)
  rollout = maps.get("attention_rollout")
  methods = {}
  for name, entry in report["methods"].items():
    row = {m: entry.get(m) for m in METRICS}
    if rollout is not None and name in maps:
      a = maps[name].reshape(len(maps[name]), -1)
      b = rollout.reshape(len(rollout), -1)
      a = a - a.mean(1, keepdims=True)
      b = b - b.mean(1, keepdims=True)
      r = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                      1e-12)
      row["pearson_with_rollout"] = float(np.median(r))
    methods[name] = row
  return {"accuracy": report.get("accuracy"), "methods": methods}


def markdown(results: dict) -> str:
  m = results["machine"]
  lines = [f"MHEX-ViT patch maps ({m['processor']}, jax {m['jax']}). Diagnostics: per layer, "
           "features A = s + r; norms and in-degrees on object (obj) and background (bg) "
           "patches; the class score's positive mass on the object.", ""]
  for key, section in sorted(results["sections"].items()):
    lines += [f"## {key}", "", f"{section['diagnostics']['num_images']} images; accuracy "
              f"{section['scores']['accuracy']}.", "",
              "| layer | norm obj | norm bg | top-5% norms on bg (bg share) | in-degree obj | "
              "in-degree bg | class score + on obj |", "|---|---|---|---|---|---|---|"]
    for r in section["diagnostics"]["layers"]:
      lines.append(f"| {r['layer']} | {r['norm_object']:.2f} | {r['norm_background']:.2f} | "
                   f"{r['top5_norm_on_background']:.2f} ({r['background_share']:.2f}) | "
                   f"{r['in_degree_object']:.2f} | {r['in_degree_background']:.2f} | "
                   f"{r['class_score_positive_on_object']:.2f} |")
    lines += ["", "| method | pointing game | energy PG | deletion AUC | insertion AUC | "
              "Pearson with rollout (median) |", "|---|---|---|---|---|---|"]
    for name, row in section["scores"]["methods"].items():
      cells = [f"{row[k]:.3f}" if row.get(k) is not None else "" for k in METRICS]
      pearson = row.get("pearson_with_rollout")
      lines.append(f"| {name} | {' | '.join(cells)} | "
                   f"{'' if pearson is None else f'{pearson:.3f}'} |")
    lines.append("")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--split", default="val", choices=("val", "test"))
  parser.add_argument("--num", type=int, default=200)
  parser.add_argument("--methods", default=DEFAULT_METHODS)
  parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  previous = out / "vit_maps.json"
  sections = json.loads(previous.read_text())["sections"] if previous.exists() else {}
  for workdir in args.workdir:
    config = _config(workdir, args.split, args.num, args.methods)
    diag, figure = diagnostics(config, workdir, args.num)
    name = pathlib.Path(workdir).name
    out.mkdir(parents=True, exist_ok=True)
    save_figure(figure, out / f"vit_tokens_{name}_{args.split}.png", config.data.mean,
                config.data.std)
    sections[f"{name}, {args.split}"] = {"workdir": workdir, "seed": config.seed,
                                         "diagnostics": diag,
                                         "scores": map_scores(config, workdir)}
    results = {"machine": harness.machine(), "sections": sections}
    harness.write_results(out, "vit_maps", results, markdown(results))
  print(markdown(results))


if __name__ == "__main__":
  main()
