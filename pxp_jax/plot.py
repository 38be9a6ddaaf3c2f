"""Pictures of relevance: input heatmaps as PNG (matplotlib, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np


def heatmap(relevance) -> np.ndarray:
  """(H, W, C) input relevance -> (H, W) in [-1, 1]: summed over channels and
  divided by its largest magnitude (0 stays white in the ``bwr`` colormap)."""
  r = np.asarray(relevance, np.float64).sum(-1)
  scale = np.abs(r).max()
  return r / scale if scale > 0 else r


def heatmaps(images, relevance, path: str | os.PathLike, *,
             titles: Sequence[str] | None = None,
             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
             suptitle: str | None = None) -> str:
  """Writes a PNG with each image above its relevance heatmap.

  Args:
    images: (N, H, W, C) model inputs (normalised with ``mean``/``std``).
    relevance: (N, H, W, C) input relevance (``attribute(...).input``).
    path: the PNG file to write.
    titles: one caption per image, e.g. ``'label 3'``.
    mean, std: the normalisation to undo for display.
    suptitle: a title over the whole figure.

  Returns:
    ``path`` as a string.
  """
  images = np.asarray(images)
  n = images.shape[0]
  if np.shape(relevance)[:1] != (n,):
    raise ValueError(f'{n} images but relevance of shape '
                     f'{np.shape(relevance)}')
  fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
  shown = np.clip(images * np.asarray(std) + np.asarray(mean), 0, 1)
  for i in range(n):
    axes[0, i].imshow(shown[i].squeeze() if shown.shape[-1] == 1
                      else shown[i], cmap='gray')
    axes[1, i].imshow(heatmap(relevance[i]), cmap='bwr', vmin=-1, vmax=1)
    if titles is not None:
      axes[0, i].set_title(titles[i], fontsize=9)
    for ax in axes[:, i]:
      ax.set_axis_off()
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return str(path)
