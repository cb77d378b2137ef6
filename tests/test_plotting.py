"""The gallery PNG, the token HTML view and the quality map."""

import numpy as np

from mhex_jax import plotting

PNG = b"\x89PNG\r\n\x1a\n"


def test_token_html_escapes_every_token_and_shades_by_saliency():
  html = plotting.token_html([["<script>", "a&b", "\"q\""]],
                             {"mhex": np.array([[1.0, 0.0, 0.5]]),
                              "<b>": np.array([[0.25, 0.0, 0.0]])}, ["label <1>"])
  assert "<script>" not in html and "&lt;script&gt;" in html
  assert "a&amp;b" in html and "&quot;q&quot;" in html and "label &lt;1&gt;" in html
  assert "<i>mhex</i>" in html and "<i>&lt;b&gt;</i>" in html  # Method names are escaped too.
  assert "rgba(220, 30, 30, 1.000)" in html and "rgba(220, 30, 30, 0.500)" in html
  assert "rgba(220, 30, 30, 0.250)" in html


def test_gallery_and_quality_map_pngs_are_written(tmp_path):
  images = np.random.default_rng(0).random((2, 8, 8, 3))
  path = tmp_path / "g.png"
  plotting.save_gallery(str(path), images, {"a": np.zeros((2, 8, 8)), "b": np.ones((2, 8, 8))},
                        ["x", "y"], masks=np.ones((2, 8, 8), bool))
  assert path.read_bytes()[:8] == PNG
  path = tmp_path / "q.png"
  plotting.save_quality_map(str(path), np.arange(49.0).reshape(7, 7))
  assert path.read_bytes()[:8] == PNG
