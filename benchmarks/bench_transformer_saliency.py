r"""Cost of MHEX token maps on a Transformer relative to its own forward pass, in one process.

    python -m benchmarks.bench_transformer_saliency [--batch=8] [--length=128]

A MiniLM-sized MHEX-BERT (6 layers, width 384, 12 heads) with random weights. Reports each
map's time divided by the time of the plain eval forward pass (ratios, since absolute times on
shared machines are noise), timed in interleaved rounds, median of the rounds:
  * MHEX, the reference's unrouted token map (SPEC §4: the first three layers), and the same
    over all six layers (it needs the whole forward pass);
  * MHEX, the default: routed through the attention rollout (needs the attention probabilities);
  * AttCAT (one forward and one backward pass), for comparison.
"""

import functools
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mhex_jax.explain import mhex as mhex_explain
from mhex_jax.explain import transformer
from mhex_jax.models import bert

flags.DEFINE_integer("batch", 8, "Batch size.")
flags.DEFINE_integer("length", 128, "Tokens per sequence.")
flags.DEFINE_integer("rounds", 9, "Interleaved timing rounds (the median is kept).")
FLAGS = flags.FLAGS


def _time(fn, *args):
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def main(_):
  b, t = FLAGS.batch, FLAGS.length
  model = bert.BERT(num_classes=4, hidden_size=384, num_layers=6, num_heads=12,
                    intermediate_size=1536, gate_init="random")
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1000, 30000, (b, t)), jnp.int32)
  mask = jnp.ones((b, t), jnp.int32)
  special = jnp.zeros((b, t), bool).at[:, 0].set(True).at[:, -1].set(True)
  variables = {"params": jax.jit(model.init)(jax.random.key(0), ids[:1], mask[:1])["params"]}
  targets = jnp.arange(b) % 4
  inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": jnp.zeros_like(ids),
            "special_tokens_mask": special}

  def mhex_map(v, x, y, **options):
    return mhex_explain.mhex_token_saliency(
        model.apply, v, x["input_ids"], x["attention_mask"], x["token_type_ids"],
        (x["attention_mask"] > 0) & ~x["special_tokens_mask"], y, **options).saliency

  fns = {
      "forward": jax.jit(lambda v, x, y: model.apply(v, x["input_ids"], x["attention_mask"])),
      "mhex (SPEC §4, unrouted)": jax.jit(functools.partial(
          mhex_map, route="none", layers=(0, 1, 2), feature_norm="none")),
      "mhex (all six layers, unrouted)": jax.jit(functools.partial(
          mhex_map, route="none", layers=(), feature_norm="none")),
      "mhex (default, routed)": jax.jit(mhex_map),
      "attcat": jax.jit(functools.partial(transformer.attcat, model)),
  }
  for fn in fns.values():  # Compile and warm up.
    _time(fn, variables, inputs, targets)
  times = {name: [] for name in fns}
  for _ in range(FLAGS.rounds):
    for name, fn in fns.items():
      times[name].append(_time(fn, variables, inputs, targets))
  forward = np.median(times["forward"])
  print(f"batch {b}, {t} tokens; time / forward time (median of {FLAGS.rounds} rounds):")
  for name in list(fns)[1:]:
    print(f"  {name}: {np.median(times[name]) / forward:.2f}")


if __name__ == "__main__":
  app.run(main)
