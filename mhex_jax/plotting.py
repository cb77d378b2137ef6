"""Eval figures: the method gallery PNG, the token HTML page and the quality map."""

from typing import Optional, Sequence

import matplotlib
matplotlib.use("Agg")  # Headless: eval runs on servers and in CI.
import matplotlib.pyplot as plt
import numpy as np

from mhex_jax import files


def save_figure(fig, path) -> None:
  """Writes ``fig`` as a PNG to ``path`` (local or a URI, through epath; or an open binary
  file) and closes it."""
  if hasattr(path, "write"):
    fig.savefig(path, format="png", dpi=100)
  else:
    with files.atomic_open(path, "wb") as f:
      fig.savefig(f, format="png", dpi=100)
  plt.close(fig)


def to_display(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Undoes input normalisation: f32[B, H, W, C] -> [0, 1] images ([B, H, W] if C = 1)."""
  images = np.asarray(images) * np.asarray(std) + np.asarray(mean)
  images = np.clip(images, 0.0, 1.0)
  return images[..., 0] if images.shape[-1] == 1 else images


def save_gallery(path: files.PathLike, images: np.ndarray, maps: dict[str, np.ndarray],
                            titles: Sequence[str], masks: Optional[np.ndarray] = None) -> None:
  """Writes one row per example: the input, then one saliency overlay per method.

  Args:
    path: output PNG (local or a URI).
    images: display images [N, H, W(, 3)] in [0, 1].
    maps: method name -> maps [N, H, W] in [0, 1].
    titles: one caption per example.
    masks: optional ground-truth masks [N, H, W], drawn as a contour on every overlay.
  """
  n, cols = len(images), 1 + len(maps)
  fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)
  cmap = "gray" if images.ndim == 3 else None
  for i in range(n):
    axes[i, 0].imshow(images[i], cmap=cmap)
    axes[i, 0].set_title(titles[i], fontsize=7)
    for j, method_maps in enumerate(maps.values()):
      ax = axes[i, 1 + j]
      ax.imshow(images[i], cmap=cmap)
      ax.imshow(method_maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
      if masks is not None:
        ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=0.8)
  for j, name in enumerate(maps):
    axes[0, 1 + j].set_title(name, fontsize=7)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  save_figure(fig, path)


def blend(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
  """The map in the jet colormap over the image, at the image's size: uint8 [H, W, C] (C = 1 or
  3) and [H, W] in [0, 1] -> uint8 [H, W, 3]."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  rgb = np.broadcast_to(image[..., :3], (*image.shape[:2], 3)) / 255.0
  heat = matplotlib.colormaps["jet"](np.clip(saliency, 0.0, 1.0))[..., :3]
  return np.round(255 * ((1 - alpha) * rgb + alpha * heat)).astype(np.uint8)


def overlay_figure(images: Sequence[np.ndarray], maps: Sequence[dict[str, np.ndarray]],
                   captions: Sequence[str]):
  """A figure with one row per image, each at its own size: the image, then one overlay per
  method.

  Args:
    images: uint8 [H, W, C] (C = 1 or 3), any sizes.
    maps: per image, method -> map [H, W] in [0, 1] at that image's size.
    captions: one per image.
  """
  n, cols = len(images), 1 + max(len(m) for m in maps)
  fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.5 * n), squeeze=False)
  for i, (image, image_maps) in enumerate(zip(images, maps)):
    image = np.asarray(image)
    gray = image.ndim == 3 and image.shape[-1] == 1
    shown, cmap = (image[..., 0], "gray") if gray else (image, None)
    axes[i, 0].imshow(shown, cmap=cmap)
    axes[i, 0].set_title(captions[i], fontsize=8)
    for j, (name, saliency) in enumerate(image_maps.items()):
      axes[i, 1 + j].imshow(shown, cmap=cmap)
      axes[i, 1 + j].imshow(saliency, cmap="jet", alpha=0.5, vmin=0, vmax=1)
      axes[i, 1 + j].set_title(name, fontsize=8)
  for ax in axes.ravel():
    ax.axis("off")
  fig.tight_layout()
  return fig


def token_html(tokens: Sequence[Sequence[str]], saliency: dict[str, np.ndarray],
                          captions: Sequence[str],
                          title: str = "Token saliency by method") -> str:
  """A self-contained HTML page: per example, one shaded line of tokens per method.

  Args:
    tokens: per example, the token strings of positions 0..T-1 (padding may be omitted).
    saliency: method name -> [N, T] in [0, 1].
    captions: one caption per example.
  """
  import html  # Every token, caption and method name is escaped: texts are untrusted input.
  blocks = []
  for i, (toks, caption) in enumerate(zip(tokens, captions)):
    lines = []
    for name, maps in saliency.items():
      spans = "".join(
          f'<span style="background: rgba(220, 30, 30, {float(s):.3f})" '
          f'title="{float(s):.3f}">{html.escape(t)}</span> ' for t, s in zip(toks, maps[i]))
      lines.append(f"<tr><td><i>{html.escape(name)}</i></td><td>{spans}</td></tr>")
    blocks.append(f"<p><b>{html.escape(caption)}</b></p><table>{''.join(lines)}</table>")
  return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>"
          f"{html.escape(title)}</title></head><body style=\"font-family: sans-serif\">"
          f"<h3>{html.escape(title)}</h3>{''.join(blocks)}</body></html>")


def save_quality_map(path: files.PathLike, quality: np.ndarray) -> None:
  """Writes the occlusion quality map (Σ_ℓ s_ℓ with each grid cell occluded) as a heat map."""
  fig, ax = plt.subplots(figsize=(3.2, 3))
  image = ax.imshow(quality, cmap="coolwarm")
  fig.colorbar(image, ax=ax)
  ax.set_title("Σ_ℓ s_ℓ, cell occluded", fontsize=8)
  ax.axis("off")
  fig.tight_layout()
  save_figure(fig, path)
