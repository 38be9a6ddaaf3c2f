"""Summaries of accuracy-versus-rate curves: A_PR, AUC, Top-PR."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def summarize(rates: Sequence[float], accuracy: Sequence[float],
              unpruned: float) -> dict:
  """A_PR (mean accuracy over rates), trapezoid AUC over the rates, and
  Top-PR: the highest rate whose accuracy keeps 95% of the unpruned one."""
  rates, accuracy = np.asarray(rates, float), np.asarray(accuracy, float)
  if rates.ndim != 1 or not rates.size or accuracy.shape != rates.shape:
    raise ValueError(f'summarize needs one accuracy per rate, got rates of '
                     f'shape {rates.shape} and accuracy of shape '
                     f'{accuracy.shape}')
  kept = rates[accuracy >= 0.95 * unpruned]
  return dict(rates=rates.tolist(), accuracy=accuracy.tolist(),
              a_pr=float(accuracy.mean()),
              auc=float(np.trapezoid(accuracy, rates)),
              top_pr=float(kept.max()) if kept.size else 0.0)


def sem(values, axis: int = 0) -> np.ndarray:
  """The standard error of the mean along ``axis``: the sample standard
  deviation over sqrt(count)."""
  values = np.asarray(values, float)
  return np.std(values, axis, ddof=1) / np.sqrt(values.shape[axis])


def standard_errors(rates: Sequence[float], runs: np.ndarray) -> dict:
  """Standard errors of the mean over the rows of ``runs`` (seeds or draws
  x rates): of A_PR, of the AUC and of the accuracy at each rate."""
  runs = np.asarray(runs, float)
  return dict(a_pr_sem=float(sem(runs.mean(1))),
              auc_sem=float(sem(np.trapezoid(runs, np.asarray(rates, float),
                                             axis=1))),
              accuracy_sem=sem(runs).tolist())


def stack(per_criterion: Mapping[str, Mapping[str, jax.Array]]) -> dict:
  """{criterion: {unit: (R, n)}} -> {unit: (C * R, n)} in criterion order."""
  names = list(per_criterion)
  if not names:
    raise ValueError('stack needs the masks of at least one criterion')
  keys = list(per_criterion[names[0]])
  for c in names[1:]:
    if list(per_criterion[c]) != keys:
      raise ValueError(f'the masks of {c!r} name units {list(per_criterion[c])}'
                       f', those of {names[0]!r} name {keys}: stack masks of '
                       'the same units')
  return {k: jnp.concatenate([per_criterion[c][k] for c in names])
          for k in keys}
