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

from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pxp_jax import distribute
from pxp_jax.models import structure, taps


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


@functools.cache  # one program per model and mesh, however many sweeps ask
def sweep_correct(model: nn.Module, mesh: Mesh | None = None) -> Callable:
  """A jitted ``(variables, images, labels, stacked_masks, classes) ->
  correct`` counting, for every row of the stacked masks (unit key ->
  (M, units)), the correctly classified images of the batch. One compiled
  program serves every criterion and rate: masks are arguments, not
  constants. ``classes``: bool (num_classes,) of the allowed classes (the
  reference's few-class task masks out the other logits).

  With a ``mesh`` (``pxp_jax.distribute``) the batch is split over its
  ``data`` axis and the mask rows over its ``rows`` axis (``shard_map``):
  the batch size must be a multiple of the data axis, M of the rows axis;
  the counts are summed over the data axis and gathered over the rows, so
  every device holds all M."""

  def correct(variables, images, labels, stacked, classes):
    found = structure.trace(model, variables, images.shape, images.dtype)

    def one(masks_row):
      logits = masked_apply(model, variables, images, masks_row, found)
      logits = jnp.where(classes, logits, -jnp.inf)
      return jnp.sum(jnp.argmax(logits, -1) == labels)

    return jax.lax.map(one, stacked)

  if mesh is None:
    return jax.jit(correct)

  def on_devices(variables, images, labels, stacked, classes):
    counts = jax.lax.psum(correct(variables, images, labels, stacked,
                                  classes), 'data')
    return jax.lax.all_gather(counts, 'rows', tiled=True)

  return jax.jit(jax.shard_map(
      on_devices, mesh=mesh, out_specs=P(), check_vma=False,
      in_specs=(P(), P('data'), P('data'), P('rows'), P())))


def sweep_accuracy(model, variables, batches: Iterable, stacked: Mapping,
                   num_classes: int, classes: Sequence[int] | None = None,
                   run: Callable | None = None, mesh: Mesh | None = None,
                   n_batches: int | None = None,
                   batch_size: int | None = None) -> np.ndarray:
  """Top-1 accuracy of each row of ``stacked`` over all ``batches``.

  With a ``mesh`` every batch is padded to ``batch_size`` rows per process
  (default: the first batch's, rounded up to the process's share of the
  data axis; padded labels are -1, never correct) and the mask rows to a
  multiple of the rows axis. On several processes ``batches`` are this
  process's own and every process passes the same ``n_batches`` and
  ``batch_size`` (a process out of batches contributes padding)."""
  _check_sweep(stacked, num_classes, classes)
  allowed = np.zeros(num_classes, bool)
  allowed[list(range(num_classes)) if classes is None else list(classes)] = True
  if mesh is not None:
    return _sharded_accuracy(model, variables, batches, stacked, allowed,
                             mesh, run, n_batches, batch_size)
  run = run or sweep_correct(model)
  correct, total = 0, 0
  for batch in batches:
    correct = correct + np.asarray(run(variables, jnp.asarray(batch['image']),
                                       jnp.asarray(batch['label']), stacked,
                                       jnp.asarray(allowed)))
    total += len(batch['label'])
  if total == 0:
    raise ValueError(_NO_EXAMPLES)
  return correct / total


_NO_EXAMPLES = ('no examples to evaluate: the batches are empty (an empty '
                'split, or none of its examples is of the chosen classes)')


def _check_sweep(stacked, num_classes, classes) -> None:
  """Clear errors for masks without rows and classes out of range."""
  if not stacked:
    raise ValueError('stacked masks name no unit; pass unit key -> (rows, '
                     'units) masks (metrics.stack of ranking.masks)')
  rows = {k: np.shape(v) for k, v in stacked.items()}
  if any(len(r) != 2 for r in rows.values()) or len(
      {r[0] for r in rows.values()}) != 1 or not next(iter(rows.values()))[0]:
    raise ValueError(f'stacked masks must be unit key -> (rows, units) with '
                     f'the same rows >= 1 for every unit, got shapes {rows}')
  if isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f'num_classes must be >= 1, got {num_classes!r}')
  if classes is not None:
    bad = [c for c in classes if not 0 <= int(c) < num_classes]
    if bad or not len(classes):
      raise ValueError(f'classes {list(classes)} must be one or more of the '
                       f'model\'s classes 0 to {num_classes - 1}')


def _sharded_accuracy(model, variables, batches, stacked, allowed, mesh, run,
                      n_batches, batch_size):
  run = run or sweep_correct(model, mesh)
  rows = len(next(iter(stacked.values())))
  spare = -rows % mesh.shape['rows']  # all-ones rows, dropped at the end
  stacked = {k: jax.device_put(
      np.concatenate([np.asarray(v), np.ones((spare, *np.shape(v)[1:]),
                                              np.asarray(v).dtype)]),
      NamedSharding(mesh, P('rows'))) for k, v in stacked.items()}
  allowed = jax.device_put(allowed, NamedSharding(mesh, P()))
  correct, total = 0, 0  # summed on the devices, read once at the end
  for batch in distribute.global_batches(batches, mesh, n_batches,
                                         batch_size):
    correct = correct + run(variables, batch['image'], batch['label'],
                            stacked, allowed)
    total = total + jnp.sum(batch['label'] >= 0)
  correct, total = distribute.to_host(correct), int(distribute.to_host(total))
  if total == 0:
    raise ValueError(_NO_EXAMPLES)
  return (correct / total)[:rows]
