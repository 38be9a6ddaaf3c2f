"""Scores -> masks: pruning the least-scored units, nested across rates.

Scores and masks are dicts from a unit key (the layer path of conv filters
and dense neurons, the attention path of heads; ``pxp_jax.models.structure.Unit``)
to a vector over that layer's units; a mask multiplies the units' outputs at
their site (``pxp_jax.prune.sweep``). Yeom et al., Pattern Recognition 2021;
Hatefi et al., 2024.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax.checks import ArgumentError, is_real, show

DEFAULT_RATES = tuple(np.round(np.arange(0, 0.96, 0.05), 2).tolist())


def check_rates(rates, name: str = 'rates') -> list[float]:
  """``rates`` as floats: a non-empty, strictly increasing sequence in
  [0, 1) (rate 0 is the unpruned model), or an ``ArgumentError``."""
  if isinstance(rates, (str, bytes, Mapping)) or np.ndim(rates) != 1:
    raise ArgumentError(name, rates, ' must be a sequence of rates, e.g. '
                        "'(0.0, 0.2, 0.4)'")
  values = list(rates)
  if not values:
    raise ArgumentError(name, values, ' names no rate; give increasing rates '
                        "in [0, 1), e.g. '(0.0, 0.05, 0.1)'")
  for value in values:
    if not is_real(value) or not 0 <= value < 1:
      raise ArgumentError(name, values, f': {show(value)} is not a pruning '
                          'rate; rates must be increasing and lie in [0, 1) '
                          '(a share of the units each)')
  out = [float(v) for v in values]
  if any(b <= a for a, b in zip(out, out[1:])):
    raise ArgumentError(name, values, ': rates must be increasing and lie in '
                        '[0, 1), each rate once; write '
                        f'{show(tuple(sorted(set(out))))}')
  return out


def normalize(scores: Mapping[str, jax.Array], order: int) -> dict:
  """Per-layer normalisation: each layer's scores divided by their L``order``
  norm (L1 for weight magnitude, L2 for gradient and Taylor; Molchanov et al.)."""
  return {k: v / jnp.maximum(jnp.linalg.norm(v, ord=order), 1e-30)
          for k, v in scores.items()}


def masks(scores: Mapping[str, jax.Array], rates: Sequence[float], *,
          per_layer: bool = False, keep_one: bool = False) -> dict:
  """Binary masks pruning the least-scored units, one row per rate.

  Args:
    scores: unit key -> (units,) scores (higher = more important).
    rates: pruning rates in [0, 1).
    per_layer: rank within each layer (``int(n_layer * rate)`` pruned per
      layer) instead of one global ranking over all units (the reference).
    keep_one: never prune the last unit of a layer (a layer pruned to nothing
      silences the network).

  Returns:
    unit key -> (len(rates), units) float32 masks, 0 = pruned. The pruned sets
    are nested: a unit pruned at a rate stays pruned at every higher rate.
  """
  rates = np.asarray(check_rates(rates), np.float64)
  keys = list(scores)
  if not keys or not sum(np.size(scores[k]) for k in keys):
    raise ValueError('scores name no unit; pass unit key -> (units,) scores '
                     '(a criterion\'s score)')
  nan = [k for k in keys if np.any(np.isnan(np.asarray(scores[k], float)))]
  if nan:
    raise ValueError(f'scores of {nan[:5]} are NaN: a NaN ranks nowhere; '
                     'score the units again (a pruned unit may score -inf)')
  if per_layer:
    return {k: _rank_masks(np.asarray(scores[k])[None], rates, keep_one)[0]
            for k in keys}
  flat = np.concatenate([np.asarray(scores[k], np.float64) for k in keys])
  owner = np.concatenate([np.full(np.size(scores[k]), i)
                          for i, k in enumerate(keys)])
  order = np.lexsort((np.arange(flat.size), flat))  # ties: earlier unit first
  rows = np.ones((rates.size, flat.size), np.float32)
  for r, rate in enumerate(rates):
    count = int(flat.size * rate)
    pruned, left = [], {i: np.size(scores[k]) for i, k in enumerate(keys)}
    for unit in order:
      if len(pruned) == count:
        break
      if keep_one and left[owner[unit]] == 1:
        continue
      pruned.append(unit)
      left[owner[unit]] -= 1
    rows[r, pruned] = 0
  out, start = {}, 0
  for k in keys:
    n = np.size(scores[k])
    out[k] = jnp.asarray(rows[:, start:start + n])
    start += n
  return out


def _rank_masks(scores, rates, keep_one):
  order = np.argsort(scores[0], kind='stable')
  n = order.size
  rows = np.ones((1, rates.size, n), np.float32)
  for r, rate in enumerate(rates):
    count = min(int(n * rate), n - 1 if keep_one else n)
    rows[0, r, order[:count]] = 0
  return rows
