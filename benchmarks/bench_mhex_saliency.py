r"""Speed of the fused MHEX saliency against straightforward versions, in one process.

    python benchmarks/bench_mhex_saliency.py [--batch=64] [--image_size=64] [--width=16]

Reports ratios (baseline time / fused time), since absolute times on shared machines are noise:
  * integration: grouped resizes (one per resolution) vs one resize per block;
  * saliency: the batched function vs a per-example loop over the same jitted function.
"""

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from mhex_jax.explain import equivalent_matrix
from mhex_jax.models import mhex as mhex_lib
from mhex_jax.models import resnet

flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_integer("image_size", 64, "Image side.")
flags.DEFINE_integer("width", 16, "ResNet width.")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (best is kept).")
FLAGS = flags.FLAGS


def _best_time(fn, *args):
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  best = float("inf")
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def per_layer_integration(cams, out_size, alpha=0.9):
  weights = equivalent_matrix.depth_weights(len(cams), alpha)
  return sum(w * jax.image.resize(c, (c.shape[0], *out_size), "bilinear", antialias=False)
             for w, c in zip(weights, cams))


def main(_):
  b, s = FLAGS.batch, FLAGS.image_size
  model = resnet.ResNet(num_classes=10, depth=34, width=FLAGS.width, stem="small")
  images = jax.random.normal(jax.random.key(0), (b, s, s, 3))
  variables = model.init(jax.random.key(1), images[:1])
  variables = {k: v for k, v in variables.items() if k != "mhex"}
  targets = jnp.arange(b) % 10

  _, state = model.apply(variables, images, mutable=["mhex"])
  blocks = mhex_lib.collect_blocks(variables["params"], state["mhex"])
  cams = equivalent_matrix.layer_cams(blocks, targets)
  grouped = jax.jit(lambda c: equivalent_matrix.integrate_cams(c, (s, s)))
  naive = jax.jit(lambda c: per_layer_integration(c, (s, s)))
  t_grouped, t_naive = _best_time(grouped, cams), _best_time(naive, cams)
  print(f"integration, {len(cams)} blocks: per-layer/grouped = {t_naive / t_grouped:.2f}x "
        f"({t_naive * 1e3:.1f} ms vs {t_grouped * 1e3:.1f} ms)")

  fused = jax.jit(lambda v, x, t: equivalent_matrix.mhex_saliency(model, v, x, t).saliency)
  def loop(v, x, t):
    return jnp.concatenate([fused(v, x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])])
  t_fused, t_loop = _best_time(fused, variables, images, targets), _best_time(
      loop, variables, images, targets)
  print(f"saliency, batch {b}: per-example loop/batched = {t_loop / t_fused:.2f}x "
        f"({t_loop * 1e3:.1f} ms vs {t_fused * 1e3:.1f} ms)")


if __name__ == "__main__":
  app.run(main)
