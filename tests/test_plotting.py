"""The gallery PNG and the token HTML view."""

import numpy as np

from mhex_jax import plotting


def test_token_html_escapes_every_token_and_shades_by_saliency():
  html = plotting.token_html([["<script>", "a&b", "\"q\""]], np.array([[1.0, 0.0, 0.5]]),
                             ["label <1>"])
  assert "<script>" not in html and "&lt;script&gt;" in html
  assert "a&amp;b" in html and "&quot;q&quot;" in html and "label &lt;1&gt;" in html
  assert "rgba(220, 30, 30, 1.000)" in html and "rgba(220, 30, 30, 0.500)" in html


def test_gallery_png_is_written(tmp_path):
  path = tmp_path / "g.png"
  images = np.random.default_rng(0).random((2, 8, 8, 3))
  plotting.save_gallery(str(path), images, np.zeros((2, 8, 8)), [np.ones((2, 4, 4))],
                        ["a", "b"], masks=np.ones((2, 8, 8), bool))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
