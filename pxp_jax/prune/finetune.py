"""Fine-tuning a pruned model: pruned units stay pruned.

The masks multiply the units' outputs in every forward pass, so a pruned
unit's output and the gradient of its incoming weights are exactly zero: the
pruned structure survives any number of optimiser steps. BatchNorm
statistics stay frozen (few-shot data would make them noisy).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import optax

from pxp_jax import distribute
from pxp_jax.models import structure
from pxp_jax.prune import sweep


def fine_tune(model, variables, masks: Mapping[str, jax.Array],
              batches: Iterator, *, steps: int, learning_rate: float = 1e-3,
              weight_decay: float = 0.0, mesh=None):
  """Adam(W) on the cross-entropy of the masked model.

  Args:
    model, variables: the (unpruned) model.
    masks: unit key -> (units,) 0/1 mask.
    batches: an endless iterator of ``{'image', 'label'}`` batches.
    steps: optimiser steps.
    learning_rate, weight_decay: AdamW settings.
    mesh: data-parallel over this mesh's data axis (``pxp_jax.distribute``;
      every batch is this process's part of the global batch, parameters
      and optimiser state are replicated).

  Returns:
    The fine-tuned variables (use them with the same masks). One compiled
    step serves every mask and learning rate.
  """
  if isinstance(steps, bool) or int(steps) != steps or steps < 0:
    raise ValueError(f'fine_tune: steps must be an integer >= 0, got {steps!r}')
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise ValueError(f'fine_tune: learning_rate must be finite and > 0, got '
                     f'{learning_rate!r}')
  if not (math.isfinite(weight_decay) and weight_decay >= 0):
    raise ValueError(f'fine_tune: weight_decay must be finite and >= 0, got '
                     f'{weight_decay!r}')
  params = variables['params']
  # The hyperparameters live in the optimiser state: one step serves all.
  state = _ADAMW(learning_rate=learning_rate,
                 weight_decay=weight_decay).init(params)
  step = _step(model)
  frozen = {k: v for k, v in variables.items() if k != 'params'}
  masks = {k: jnp.asarray(v) for k, v in masks.items()}
  if mesh is not None:
    params, state, frozen, masks = distribute.replicate(
        (params, state, frozen, masks), mesh)
  for _ in range(steps):
    batch = distribute.on_devices(next(batches), mesh)
    params, state, _ = step(params, frozen, state, masks, batch['image'],
                            batch['label'])
  if steps and not finite(params):  # a diverged run: read once at the end
    raise FloatingPointError(
        f'fine_tune: the parameters are NaN or infinite after {steps} steps '
        f'at learning rate {learning_rate}; lower it')
  return {**variables, 'params': params}


@jax.jit
def finite(params) -> jax.Array:
  """Whether every parameter is finite (a run that diverged is not)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                            for p in jax.tree.leaves(params)]))


_ADAMW = optax.inject_hyperparams(optax.adamw)


@functools.lru_cache(maxsize=8)
def _step(model):
  """The jitted optimiser step of ``model`` (masks and data are arguments)."""
  update = _ADAMW(learning_rate=0.0, weight_decay=0.0).update

  @jax.jit
  def step(params, frozen, state, masks, images, labels):
    found = structure.trace(model, {**frozen, 'params': params},
                            images.shape, images.dtype)

    def loss_fn(p):
      logits = sweep.masked_apply(model, {**frozen, 'params': p}, images,
                                    masks, found)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  return step
