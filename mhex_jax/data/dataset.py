"""What every dataset offers (``Dataset``), whatever it reads: in-memory arrays, tfds or text.

Training and evaluation use these members only. Batches are numpy dicts holding this process'
share of a global batch: the model's inputs (``"image"`` f32[B, H, W, C], or the token arrays
[B, T]), ``"label"`` int32[B], ``"valid"`` bool[B] (eval batches are padded to full size) and,
with ``has_masks``, ``"mask"`` bool[B, H, W].
"""

from typing import Iterator, Optional, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Dataset(Protocol):
  """A split of examples, read in batches."""

  @property
  def num_examples(self) -> int:
    """Examples in the split (over all processes)."""

  @property
  def has_masks(self) -> bool:
    """Whether batches carry ground-truth ``"mask"``s (the pointing games need them)."""

  @property
  def class_names(self) -> Optional[tuple[str, ...]]:
    """Class names the data itself defines (a CSV's string labels), or None."""

  @property
  def validation(self) -> Optional["Dataset"]:
    """A training split's validation split, held out of its training examples
    (``data.val_fraction``; ``train.keep_best`` selects on it), or None."""

  def dummy_inputs(self) -> tuple[np.ndarray, ...]:
    """Model inputs of batch size 1, for initialisation."""

  def batches(self, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of this process' batches of the global ``batch_size``, from batch ``start``
    on; shuffled (and augmented) by (seed, epoch) when ``train``."""
