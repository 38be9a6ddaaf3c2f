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
  kept = rates[accuracy >= 0.95 * unpruned]
  return dict(rates=rates.tolist(), accuracy=accuracy.tolist(),
              a_pr=float(accuracy.mean()),
              auc=float(np.trapezoid(accuracy, rates)),
              top_pr=float(kept.max()) if kept.size else 0.0)


def stack(per_criterion: Mapping[str, Mapping[str, jax.Array]]) -> dict:
  """{criterion: {unit: (R, n)}} -> {unit: (C * R, n)} in criterion order."""
  names = list(per_criterion)
  keys = list(per_criterion[names[0]])
  return {k: jnp.concatenate([per_criterion[c][k] for c in names])
          for k in keys}
