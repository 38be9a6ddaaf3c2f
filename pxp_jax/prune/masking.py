"""Masks in the optimiser: pruned parameters stay exactly zero in any optax
loop.

Unit masks (unit key -> (units,) 0/1, ``prune.ranking``) become parameter
masks, a pytree shaped like ``params`` (``param_masks``): a pruned conv
filter's kernel column and bias and the scale and shift of the BatchNorm
after it, a dense neuron's kernel column and bias, a head's query, key and
value columns. A model whose pruned parameters are zero (``apply_masks``)
computes the masked model's logits (``sweep.masked_apply``): the unit
outputs exactly 0 at its mask site.

``masked(inner, masks)`` wraps an optax transformation so that its state
carries the parameter masks ``m`` and every update is

  ``u = m * inner(m * g)``,

so that ``p + u`` stays 0 where ``m = 0`` once ``p`` was zeroed, whatever
``inner`` adds (weight decay, momentum of earlier steps). Masking the
gradient too keeps the inner moments of pruned entries at 0. Masks are
array leaves of the state: ``update_masks`` tightens them between rounds of
iterative pruning without a recompile. The idea of keeping masks in the
optimiser state is jaxpruner's ``wrap_optax`` (Lee et al., "JaxPruner",
2023); this is our own small version for current JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pxp_jax.models import spec as spec_lib, structure


class MaskedState(NamedTuple):
  """State of ``masked``: the inner state and the parameter masks."""

  inner_state: Any
  masks: Any


def param_masks(model, variables, unit_masks: Mapping[str, Any],
                found: structure.Structure | None = None,
                input_shape=None):
  """Parameter masks of ``unit_masks``: a pytree shaped like
  ``variables['params']``, 1 everywhere but at pruned units' parameters.

  Args:
    model, variables: the model.
    unit_masks: unit key -> (units,) 0/1 mask, 0 = pruned (one rate's row of
      ``ranking.masks``).
    found: the model's structure (traced here on ``input_shape``, default
      one image of the model's ``image_size`` or 32 x 32, if not given).

  Returns:
    float32 masks, one per parameter array: 0 at the weights, biases and
    BatchNorm scales and shifts the family spec says a pruned unit owns
    (``Spec.unit_params``): for a filter or neuron its layer's kernel column
    and bias (output axis -1) and, where a BatchNorm follows, that
    BatchNorm's scale and bias; for a head its query, key and value columns
    (``qkv`` of ``pxp_jax.models.vit``, or the ``query``/``key``/``value``
    kernels of flax's attention, heads on axis -2).
  """
  if found is None:
    size = getattr(model, 'image_size', 32)
    found = structure.trace(model, variables,
                            tuple(input_shape or (1, size, size, 3)))
  units = found.units()
  unknown = sorted(set(unit_masks) - set(units))
  if unknown:
    raise KeyError(f'unit masks name no unit(s) {unknown} of this model; its '
                   f'units: {", ".join(units)}')
  params = flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables['params']), sep='.')
  shapes = {('params', k): np.shape(v) for k, v in params.items()}
  out = {k: np.ones(np.shape(v), np.float32) for k, v in params.items()}
  spec = spec_lib.spec_for(model)
  for key, mask in unit_masks.items():
    unit = units[key]
    mask = np.asarray(mask)
    if mask.shape != (unit.size,):
      raise ValueError(
          f'unit mask {key!r} has shape {mask.shape}, the layer has '
          f'{unit.size} units; pass one rate\'s row of ranking.masks: '
          '{k: m[i] for k, m in masks.items()}')
    pruned = mask == 0
    if not pruned.any():
      continue
    for share in spec.params_of(unit, found, shapes,
                                ('weights', 'bias', 'norm')):
      index = [slice(None)] * out[share.name].ndim
      index[share.axis] = share.index(pruned)
      out[share.name][tuple(index)] = 0
  return flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in out.items()}, sep='.')


def apply_masks(params, masks):
  """``params`` with masked entries set to 0 (``where``, so a NaN or inf in
  a pruned entry is removed too). ``masks``: ``param_masks``' pytree."""
  return jax.tree.map(lambda p, m: jnp.where(m != 0, p, jnp.zeros_like(p)),
                      params, masks)


def masked(inner: optax.GradientTransformation,
           masks: Any | Callable[[Any], Any]) -> optax.GradientTransformation:
  """``inner`` with its updates zeroed at pruned parameters.

  ``u = m * inner(m * g)``: with ``params`` zeroed once where ``m = 0``
  (``apply_masks``), ``optax.apply_updates`` keeps them 0.

  Args:
    inner: any optax transformation (e.g. ``optax.adamw(1e-3)``, a chain).
    masks: a pytree of 0/1 arrays shaped like the parameters
      (``param_masks``), or a function params -> that pytree, called by
      ``init``.

  Returns:
    An ``optax.GradientTransformation`` whose state is ``MaskedState``
    (change its masks with ``update_masks``).

  Example::

    m = param_masks(model, variables, unit_masks)
    tx = masked(optax.adamw(1e-3), m)
    params = apply_masks(variables['params'], m)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)   # pruned entries stay 0
  """

  def init(params):
    m = masks(params) if callable(masks) else masks
    _check_like(m, params)
    return MaskedState(inner.init(params),
                       jax.tree.map(jnp.asarray, m))

  def update(updates, state, params=None):
    keep = lambda u, m: jnp.where(m != 0, u, jnp.zeros_like(u))  # noqa: E731
    updates = jax.tree.map(keep, updates, state.masks)
    updates, inner_state = inner.update(updates, state.inner_state, params)
    updates = jax.tree.map(keep, updates, state.masks)
    return updates, MaskedState(inner_state, state.masks)

  return optax.GradientTransformation(init, update)


def update_masks(state, new_masks):
  """``state`` (of ``masked``, alone or inside a chain) with its masks
  replaced by ``new_masks``, shaped like the old ones. Zero the parameters
  with ``apply_masks(params, new_masks)`` as well: the state only stops
  them from moving."""
  found = []

  def swap(node):
    if isinstance(node, MaskedState):
      _check_like(new_masks, node.masks)
      found.append(node)
      return MaskedState(node.inner_state,
                         jax.tree.map(jnp.asarray, new_masks))
    return node

  out = jax.tree.map(swap, state,
                     is_leaf=lambda n: isinstance(n, MaskedState))
  if not found:
    raise ValueError('update_masks: the state holds no MaskedState; pass the '
                     'state of a pxp_jax.prune.masking.masked transformation')
  return out


def _check_like(masks, params):
  a, b = jax.tree.structure(masks), jax.tree.structure(params)
  if a != b:
    raise ValueError(f'masks must be a pytree shaped like the parameters; '
                     f'got {a}, parameters {b}')
  bad = [f'{jax.tree_util.keystr(path)}: {np.shape(m)} vs {np.shape(p)}'
         for (path, m), p in zip(jax.tree_util.tree_leaves_with_path(masks),
                                 jax.tree.leaves(params))
         if np.shape(m) != np.shape(p)]
  if bad:
    raise ValueError(f'mask shapes differ from the parameters: {bad[:5]}')
