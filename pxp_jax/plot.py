"""Pictures of relevance as PNG: input heatmaps, accuracy-vs-rate curves,
perturbation curves (faithfulness), heatmap stability under pruning and
accuracy against the size of slim models.

Figures are built with ``matplotlib.figure.Figure`` and saved directly, so no
display and no pyplot backend is needed (and a notebook's backend is left
alone).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure


def heatmap(relevance, *, normalize: bool = True):
  """(..., H, W, C) input relevance -> (..., H, W) heatmaps: summed over
  channels and, with ``normalize``, each divided by its largest magnitude
  (into [-1, 1]; 0 stays white in the ``bwr`` colormap).

  A NumPy input is summed in float64 (for display); a JAX array stays one
  (traceable: the faithfulness analyses call it inside ``jit``).
  """
  if isinstance(relevance, jax.Array):
    maps = jnp.sum(relevance, -1)
    if normalize:
      scale = jnp.abs(maps).max((-2, -1), keepdims=True)
      maps = jnp.where(scale > 0, maps / jnp.where(scale > 0, scale, 1), maps)
    return maps
  maps = np.asarray(relevance, np.float64).sum(-1)
  if normalize:
    scale = np.abs(maps).max((-2, -1), keepdims=True)
    maps = np.where(scale > 0, maps / np.where(scale > 0, scale, 1), maps)
  return maps


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
  fig = Figure(figsize=(1.6 * n, 3.4))
  axes = fig.subplots(2, n, squeeze=False)
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
  return str(path)


def curves(path: str | os.PathLike, rates, accuracies: dict, *,
           unpruned: float, xlabel: str, title: str,
           sems: dict | None = None) -> str:
  """Writes accuracy against pruning rate, one line per criterion, as PNG;
  ``sems``: name -> the standard error per rate, drawn as a band."""
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for name, accuracy in accuracies.items():
    _band(ax, np.asarray(rates) * 100, accuracy, (sems or {}).get(name),
          name, marker='.')
  ax.axhline(unpruned * 0.95, color='gray', ls=':', lw=1,
             label='95% of unpruned')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('top-1 accuracy')
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return str(path)


def _band(ax, x, mean, sem, label, **kwargs):
  """A line with its standard-error band (no band without ``sem``)."""
  mean = np.asarray(mean, float)
  line, = ax.plot(x, mean, label=label, **kwargs)
  if sem is not None:
    sem = np.asarray(sem, float)
    ax.fill_between(x, mean - sem, mean + sem, color=line.get_color(),
                    alpha=0.2, lw=0)


def perturbation_curves(path: str | os.PathLike, fractions, panels: dict, *,
                        title: str, sems: dict | None = None) -> str:
  """Writes region-perturbation curves as PNG: one panel per output (e.g.
  ``'logit'``, ``'probability'``: the y label), one line per heatmap.

  Args:
    path: the PNG file to write.
    fractions: (K + 1,) fraction of the image perturbed at each point.
    panels: output -> heatmap name -> (K + 1,) mean curve over images.
    title: a title over the figure.
    sems: the same structure with each curve's standard error (a band).

  Returns:
    ``path`` as a string.
  """
  fig = Figure(figsize=(5 * len(panels), 4))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  x = np.asarray(fractions, float) * 100
  for ax, (output, curves) in zip(axes, panels.items()):
    for name, curve in curves.items():
      sem = sems[output][name] if sems else None
      _band(ax, x, curve, sem, name, marker='.', ms=3)
    ax.set_xlabel('image perturbed (%)')
    ax.set_ylabel(output)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return str(path)


def stability(path: str | os.PathLike, rates, similarities: dict, *,
              xlabel: str, title: str) -> str:
  """Writes heatmap similarity against pruning rate as PNG, one line per
  measure with its standard-error band.

  Args:
    path: the PNG file to write.
    rates: pruning rates in [0, 1].
    similarities: measure name -> ``(mean, sem)`` per rate.
    xlabel, title: the axis label and the title.

  Returns:
    ``path`` as a string.
  """
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  x = np.asarray(rates, float) * 100
  for name, (mean, sem) in similarities.items():
    _band(ax, x, mean, sem, name, marker='.')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('similarity to the unpruned heatmap')
  ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return str(path)


def sizes(path: str | os.PathLike, curves: dict, *, dense, title: str) -> str:
  """Writes accuracy against parameters and against FLOPs of slim models as
  PNG, one line per criterion (one point per pruning rate).

  Args:
    path: the PNG file to write.
    curves: criterion -> ``(parameters, flops, accuracy)`` per rate.
    dense: ``(parameters, flops, accuracy)`` of the unpruned model (a star).
    title: a title over the figure.

  Returns:
    ``path`` as a string.
  """
  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2)
  for ax, i, label, scale in ((axes[0], 0, 'parameters (thousands)', 1e3),
                              (axes[1], 1, 'MFLOPs per batch', 1e6)):
    for name, values in curves.items():
      ax.plot(np.asarray(values[i], float) / scale, values[2], marker='.',
              label=name)
    ax.plot([dense[i] / scale], [dense[2]], marker='*', ms=10, ls='',
            color='black', label='unpruned')
    ax.axhline(dense[2] * 0.95, color='gray', ls=':', lw=1,
               label='95% of unpruned')
    ax.set_xlabel(label)
    ax.set_ylabel('top-1 accuracy')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return str(path)
