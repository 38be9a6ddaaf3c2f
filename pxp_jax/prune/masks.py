"""Pruning by eXplaining: unit scores -> masks -> masked evaluation.

Pure functions over pytrees. Scores and masks are dicts from a unit key (the
layer path of conv filters and dense neurons, the attention path of heads; see
``pxp_jax.structure.Structure.units``) to a vector over that layer's units.
A mask multiplies the unit's output: a conv filter after its BatchNorm (the
channel outputs exactly 0, as zeroing the filter and its BatchNorm does in the
PXP reference), a dense neuron's output, a head's attention weights (its
softmax output). Yeom et al., Pattern Recognition 2021; Hatefi et al., 2024.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import structure

UNIT_TYPES = ('filters', 'neurons', 'heads')
DEFAULT_RATES = tuple(np.round(np.arange(0, 0.96, 0.05), 2).tolist())


def prunable(found: structure.Structure, unit_type: str) -> dict[str, structure.Op]:
  """The units of one type, by key.

  - filters: every conv (downsample convs included);
  - neurons: dense layers except the output layer and the attention
    projections (a ViT's MLP layers, a VGG's hidden classifier layers);
  - heads: every attention's heads.
  """
  if unit_type not in UNIT_TYPES:
    raise ValueError(f'unknown unit type {unit_type!r}; use one of '
                     f'{UNIT_TYPES}')
  units = found.units()
  dense = [k for k, op in units.items() if op.kind == 'Dense']
  last = dense[-1] if dense else None
  chosen = {}
  for key, op in units.items():
    if unit_type == 'filters' and op.kind == 'Conv':
      chosen[key] = op
    elif (unit_type == 'neurons' and op.kind == 'Dense' and key != last
          and '.attn.' not in f'.{key}.'):
      chosen[key] = op
    elif unit_type == 'heads' and op.kind == 'Softmax':
      chosen[key] = op
  if not chosen:
    raise ValueError(f'this model has no {unit_type} to prune; its units are '
                     f'{sorted({op.kind for op in units.values()})}')
  return chosen


def sizes(units: Mapping[str, structure.Op]) -> dict[str, int]:
  """Units per layer: output channels, or heads for attention."""
  return {k: op.shape[1] if op.kind == 'Softmax' else op.shape[-1]
          for k, op in units.items()}


# Scores -> masks ---------------------------------------------------------------


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
  rates = np.asarray(rates, np.float64)
  if rates.ndim != 1 or np.any(rates < 0) or np.any(rates >= 1):
    raise ValueError(f'rates must lie in [0, 1), got {rates.tolist()}')
  keys = list(scores)
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


# Masked evaluation -------------------------------------------------------------


def masked_apply(model: nn.Module, variables, x, unit_masks: Mapping,
                 found: structure.Structure | None = None):
  """``model.apply(variables, x)`` with unit outputs multiplied by masks.

  Args:
    model, variables: the model.
    x: inputs.
    unit_masks: unit key -> (units,) mask (any values; 0 prunes).
    found: the model's structure (traced here if not given).

  Returns:
    The logits of the masked model.
  """
  found = found or structure.trace(model, variables, x.shape, x.dtype)
  units = found.units()
  unknown = set(unit_masks) - set(units)
  if unknown:
    raise KeyError(f'no unit(s) {sorted(unknown)} in this model; units: '
                   f'{", ".join(units)}')
  at = found.mask_sites(unit_masks)

  def intercept(f, args, kwargs, context):
    out = f(*args, **kwargs)
    if context.method_name != '__call__':
      return out
    key = at.get('.'.join(context.module.path))
    if key is None:
      return out
    mask = unit_masks[key]
    if units[key].kind == 'Softmax':  # (B, heads, Q, K)
      return out * mask[:, None, None]
    return out * mask

  with nn.intercept_methods(intercept):
    return model.apply(variables, x)


@functools.cache  # one program per model, however many sweeps ask
def sweep_correct(model: nn.Module) -> Callable:
  """A jitted ``(variables, images, labels, stacked_masks, classes) ->
  correct`` counting, for every row of the stacked masks (unit key ->
  (M, units)), the correctly classified images of the batch. One compiled
  program serves every criterion and rate: masks are arguments, not
  constants. ``classes``: bool (num_classes,) of the allowed classes (the
  reference's few-class task masks out the other logits)."""

  @jax.jit
  def run(variables, images, labels, stacked, classes):
    found = structure.trace(model, variables, images.shape, images.dtype)

    def one(masks_row):
      logits = masked_apply(model, variables, images, masks_row, found)
      logits = jnp.where(classes, logits, -jnp.inf)
      return jnp.sum(jnp.argmax(logits, -1) == labels)

    return jax.lax.map(one, stacked)

  return run


def sweep_accuracy(model, variables, batches: Iterable, stacked: Mapping,
                   num_classes: int, classes: Sequence[int] | None = None,
                   run: Callable | None = None) -> np.ndarray:
  """Top-1 accuracy of each row of ``stacked`` over all ``batches``."""
  run = run or sweep_correct(model)
  allowed = np.zeros(num_classes, bool)
  allowed[list(range(num_classes)) if classes is None else list(classes)] = True
  correct, total = 0, 0
  for batch in batches:
    correct = correct + np.asarray(run(variables, jnp.asarray(batch['image']),
                                       jnp.asarray(batch['label']), stacked,
                                       jnp.asarray(allowed)))
    total += len(batch['label'])
  if total == 0:
    raise ValueError('no examples to evaluate')
  return correct / total


# Summaries ---------------------------------------------------------------------


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

