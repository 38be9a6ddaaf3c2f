"""One training step and one optimiser for training, fine-tuning and
iterative pruning.

``optimizer`` is AdamW or SGD, at a constant learning rate with every numeric
hyperparameter in its state (``optax.inject_hyperparams``), and, given
parameter masks, wrapped in ``masking.masked`` so that pruned parameters
never move: the one way pruned units stay pruned. ``train_step(model, tx)`` is the jitted step

  ``(params, state, opt_state, batch[, masks]) -> (params, state, opt_state,
  metrics)``

of the cross-entropy of a flax classifier, with ``state`` the non-parameter
variables (BatchNorm statistics: updated from the batch in training mode,
frozen otherwise) and ``masks`` unit masks applied to the forward pass
(``sweep.masked_apply``). Hyperparameters and masks are array leaves, so one
compiled step serves every learning rate, mask and round.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pxp_jax import distribute
from pxp_jax.models import structure
from pxp_jax.prune import masking, sweep


def _sgd(learning_rate, momentum: float = 0.9, weight_decay: float = 0.0):
  """SGD with Nesterov momentum after L2 weight decay added to the
  gradient (the classic ImageNet recipe)."""
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum, nesterov=True))


_FACTORIES = {'adamw': optax.adamw, 'sgd': _sgd}
_INJECTED = {name: optax.inject_hyperparams(factory)
             for name, factory in _FACTORIES.items()}


def optimizer(name: str = 'adamw', learning_rate: float | optax.Schedule = 1e-3,
              *, weight_decay: float = 0.0, momentum: float = 0.9,
              masks: Any = None) -> optax.GradientTransformation:
  """AdamW (``optax.adamw``) or SGD (Nesterov momentum, weight decay added
  to the gradient), for a constant learning rate with its hyperparameters in
  its state.

  Args:
    name: ``'adamw'`` or ``'sgd'``.
    learning_rate: a number: it and every other numeric hyperparameter live
      in the state (``optax.inject_hyperparams``), so a step compiled once
      serves any value. An optax schedule of the step: optax's own
      optimiser with that schedule (a schedule is code, not a value).
    weight_decay: AdamW's decoupled decay; SGD's L2 term added to the
      gradient.
    momentum: SGD's momentum (AdamW ignores it).
    masks: parameter masks (``masking.param_masks``): the updates of pruned
      parameters are 0 (``masking.masked``; change them between rounds with
      ``masking.update_masks``). None: nothing is masked.

  Returns:
    An optax transformation.

  Example::

    tx = optimizer('adamw', 1e-3, masks=masking.param_masks(model,
                                                            variables, m))
    step = train_step(model, stateful('adamw'))  # one program for any lr
  """
  if name not in _FACTORIES:
    raise ValueError(f'unknown optimizer {name!r}; use sgd or adamw')
  factory = (_FACTORIES if callable(learning_rate) else _INJECTED)[name]
  if name == 'sgd':
    tx = factory(learning_rate, momentum, weight_decay)
  else:
    tx = factory(learning_rate=learning_rate, weight_decay=weight_decay)
  return tx if masks is None else masking.masked(tx, masks)


@functools.cache
def stateful(name: str = 'adamw', masked: bool = True
             ) -> optax.GradientTransformation:
  """An ``optimizer(name)`` for ``train_step`` whose update takes constant
  hyperparameters and masks from the state (those of the ``optimizer`` that
  initialised it): the one cached step of a model for every value."""
  tx = optimizer(name)
  return masking.masked(tx, None) if masked else tx


@functools.lru_cache(maxsize=16)
def train_step(model, tx: optax.GradientTransformation, *,
               train: bool = False,
               label_smoothing: float | None = None) -> Callable:
  """The jitted optimiser step of ``model``'s cross-entropy.

  Args:
    model: a flax classifier, ``model.apply(variables, images)`` -> logits.
    tx: the optimiser (``optimizer``; ``stateful(...)`` for one step that
      serves every constant learning rate and mask).
    train: apply the model with ``train=True``; its BatchNorm statistics
      (``state['batch_stats']``) are then the batch's and are updated. False:
      the model in evaluation mode, ``state`` unchanged.
    label_smoothing: None: the integer-label cross-entropy; a number:
      the cross-entropy against one-hot targets smoothed by it
      (``optax.smooth_labels``, also at 0).

  Returns:
    ``step(params, state, opt_state, batch, masks=None) -> (params, state,
    opt_state, metrics)``: ``state`` holds the non-parameter variables,
    ``batch`` is ``{'image': (N, H, W, C), 'label': (N,)}``, ``masks`` unit
    key -> (units,) masks multiplying the unit outputs
    (``sweep.masked_apply``; evaluation mode only); ``metrics`` are the
    batch's mean ``loss`` and the ``correct`` count.
  """

  @jax.jit
  def step(params, state, opt_state, batch, masks=None):
    images, labels = batch['image'], batch['label']
    found = None
    if masks is not None:
      if train:
        raise ValueError('train_step: unit masks need train=False')
      found = structure.trace(model, {**state, 'params': params},
                              images.shape, images.dtype)

    def loss_fn(p):
      variables = {**state, 'params': p}
      updates = {}
      if masks is not None:
        logits = sweep.masked_apply(model, variables, images, masks, found)
      elif not train:
        logits = model.apply(variables, images)
      elif 'batch_stats' in state:
        logits, updates = model.apply(variables, images, train=True,
                                      mutable=['batch_stats'])
      else:
        logits = model.apply(variables, images, train=True)
      if label_smoothing is None:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      else:
        targets = optax.smooth_labels(
            jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets)
      return loss.mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates_, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates_)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return params, {**state, **updates}, opt_state, dict(loss=loss,
                                                          correct=correct)

  return step


def run_steps(step: Callable, params, state, opt_state, batches: Iterator,
              steps: int, *, masks: Mapping | None = None, mesh=None):
  """``steps`` calls of ``step`` (``train_step``) on ``next(batches)``.

  With a ``mesh`` (``pxp_jax.distribute``) the parameters, state, optimiser
  state and masks are replicated and every batch is this process's part of
  the global batch. Returns ``(params, state, opt_state)``.
  """
  if mesh is not None:
    params, state, opt_state, masks = distribute.replicate(
        (params, state, opt_state, masks), mesh)
  for _ in range(steps):
    batch = distribute.on_devices(next(batches), mesh)
    params, state, opt_state, _ = step(params, state, opt_state, batch,
                                       masks)
  return params, state, opt_state


@jax.jit
def finite(params) -> jax.Array:
  """Whether every parameter is finite (a run that diverged is not)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                            for p in jax.tree.leaves(params)]))


@functools.partial(jax.jit, static_argnames='pixels')
def shift(images, key, pixels: int):
  """Random translation of each image by up to ``pixels`` in each
  direction (edge padding): the train job's augmentation."""
  if pixels == 0:
    return images
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pixels,) * 2, (pixels,) * 2, (0, 0)),
                   mode='edge')
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pixels + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(  # noqa: E731
      img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)
