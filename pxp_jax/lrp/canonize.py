"""Canonisation: BatchNorm folded into the preceding conv or dense layer.

With eval statistics a BatchNorm is the affine map
``y = (x - mean) * scale + shift`` with ``scale = gamma / sqrt(var + eps)``;
folding it into the layer before it gives ``W' = W * scale`` (per output
unit) and ``b' = (b - mean) * scale + shift``, and leaves the BatchNorm as the
identity (zennit's ``MergeBatchNorm``; Anders et al., 2021). LRP rules then see
one linear layer with a bias, whose handling is the rule's choice. The
transform is pure: it returns new variables and the model computes the same
function with them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax
import jax.numpy as jnp

from pxp_jax.models import structure
from pxp_jax.models.kinds import Kind


@dataclasses.dataclass(frozen=True)
class MergeBatchNorm:
  """The canoniser a composite carries to fold every BatchNorm that follows
  a conv or dense layer (zennit's ``MergeBatchNorm``); such BatchNorms then
  take the ``Fold`` rule (the identity)."""

  def __call__(self, variables, found: structure.Structure):
    return fold_traced(variables, found)

  def folds(self, found: structure.Structure) -> Mapping[str, str]:
    """BatchNorm path -> the layer it is folded into."""
    return found.folds


def fold_batch_norms(variables, folds: Mapping[str, str],
                     epsilons: Mapping[str, float]):
  """Folds each BatchNorm ``bn`` into ``folds[bn]``.

  Args:
    variables: the model's variables (``params`` and ``batch_stats``).
    folds: BatchNorm path -> path of the linear layer it follows.
    epsilons: BatchNorm path -> its epsilon.

  Returns:
    New variables: folded kernels and biases (a bias is added where the layer
    had none), and BatchNorms that compute the identity.
  """
  params = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables['params']), sep='.')
  stats = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables.get('batch_stats', {})), sep='.')
  for bn, layer in folds.items():
    mean, var = stats[f'{bn}.mean'], stats[f'{bn}.var']
    # use_scale=False / use_bias=False: a unit scale, a zero shift
    gamma = params.get(f'{bn}.scale', jnp.ones_like(mean))
    shift = params.get(f'{bn}.bias', jnp.zeros_like(mean))
    eps = epsilons[bn]
    scale = gamma * jnp.reciprocal(jnp.sqrt(var + eps))
    kernel = params[f'{layer}.kernel']
    bias = params.get(f'{layer}.bias', jnp.zeros_like(mean))
    params[f'{layer}.kernel'] = kernel * scale
    params[f'{layer}.bias'] = (bias - mean) * scale + shift
    # The identity: scale * rsqrt(var + eps) == 1 with var = 1 - eps, up to
    # one rounding.
    for leaf, value in (('scale', jnp.ones_like(gamma)),
                        ('bias', jnp.zeros_like(shift))):
      if f'{bn}.{leaf}' in params:
        params[f'{bn}.{leaf}'] = value
    stats[f'{bn}.mean'] = jnp.zeros_like(mean)
    stats[f'{bn}.var'] = jnp.full_like(var, 1 - eps)
  out = dict(variables)
  out['params'] = flax.traverse_util.unflatten_dict(params, sep='.')
  if stats:
    out['batch_stats'] = flax.traverse_util.unflatten_dict(stats, sep='.')
  return out


def canonize(model, variables, input_shape):
  """Folds every BatchNorm of ``model`` that follows a conv or dense layer.

  Args:
    model: a flax model.
    variables: its variables.
    input_shape: the shape of its inputs, e.g. ``(1, 224, 224, 3)``.

  Returns:
    ``(variables, folds)``: the canonical variables and the map BatchNorm
    path -> the layer it was folded into.
  """
  found = structure.trace(model, variables, input_shape)
  return fold_traced(variables, found), found.folds


def fold_traced(variables, found: structure.Structure):
  """Folds the BatchNorms of a traced model (``structure.trace``)."""
  epsilons = {op.path: op.epsilon for op in found.of_kind(Kind.BATCH_NORM)}
  return fold_batch_norms(variables, found.folds, epsilons)
