"""Masked evaluation: a pruned model's logits and one compiled program for a
whole sweep of criteria x rates.

A mask multiplies its units' outputs at their site (``structure.Unit``): a
conv filter after its BatchNorm (the channel outputs exactly 0, as zeroing
the filter and its BatchNorm does in the PXP reference), a dense neuron's
output, a head's attention weights (its softmax output).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import structure, taps


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
  sites = found.sites(unit_masks)
  factors = {site: units[key].broadcast(unit_masks[key])
             for site, key in sites.items()}
  return taps.apply(model, variables, x, taps=[taps.scale(factors)])


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
