"""Heatmap pictures, and the main job end to end on the embedded data."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from pxp_jax import plot


def test_heatmap_sums_channels_and_keeps_sign():
  r = np.zeros((4, 4, 3))
  r[0, 0] = [1.0, 1.0, 2.0]   # +4
  r[3, 3, 1] = -2.0           # -2
  h = plot.heatmap(r)
  assert h[0, 0] == 1.0 and h[3, 3] == -0.5 and np.count_nonzero(h) == 2


def test_heatmap_of_a_batch_in_jax_each_map_by_its_own_scale():
  r = np.zeros((3, 4, 4, 3), np.float32)
  r[0, 0, 0] = [1.0, 1.0, 2.0]   # map 0: +4 and -2
  r[0, 3, 3, 1] = -2.0
  r[1, 1, 2, 0] = -0.5           # map 1: -0.5 alone; map 2: all 0
  sums = jax.jit(lambda x: plot.heatmap(x, normalize=False))(jnp.asarray(r))
  assert isinstance(sums, jax.Array) and sums.shape == (3, 4, 4)
  np.testing.assert_array_equal(sums, r.sum(-1))
  h = plot.heatmap(jnp.asarray(r))
  np.testing.assert_array_equal(h[0], plot.heatmap(r[0]))
  assert h[1, 1, 2] == -1.0 and np.count_nonzero(h[1]) == 1
  assert np.count_nonzero(h[2]) == 0 and not np.isnan(h).any()
  np.testing.assert_array_equal(plot.heatmap(r), h)


def test_heatmaps_png_shows_every_image(tmp_path):
  rng = np.random.default_rng(0)
  images, relevance = rng.normal(size=(2, 3, 8, 8, 3))
  path = plot.heatmaps(images, relevance, tmp_path / 'h.png',
                       titles=['a', 'b', 'c'])
  picture = matplotlib.image.imread(path)
  assert picture.shape[0] > 100 and picture.shape[1] > 100
  assert picture[..., :3].std() > 0.05  # not a blank canvas
  with pytest.raises(ValueError, match='3 images'):
    plot.heatmaps(images, relevance[:2], tmp_path / 'bad.png')


@pytest.mark.slow
def test_main_job_evaluates_shipped_checkpoints(tmp_path, digits_dir):
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.evaluate', f'--workdir={tmp_path}',
       f'--data_dir={digits_dir}', '--heatmaps=4'],
      capture_output=True, text=True, timeout=600, check=True)
  assert 'resnet_digits' in out.stdout and 'vit_digits' in out.stdout
  rows = {r['checkpoint']: r for r in
          json.loads((tmp_path / 'results.json').read_text())}
  assert rows['resnet_digits']['test'] >= 0.97
  assert rows['vit_digits']['test'] >= 0.95
  for name in ('resnet_digits', 'vit_digits'):
    assert (tmp_path / f'heatmaps_{name}.png').stat().st_size > 10_000
