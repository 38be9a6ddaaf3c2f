"""Fine-tuning a pruned model, once (``fine_tune``) or between the rounds of
iterative pruning (``iterative``).

Both run ``training.train_step`` with AdamW masked by the pruned units'
parameters (``training.optimizer``, ``masking.masked``): a pruned parameter
never moves, whatever the weight decay. BatchNorm statistics stay frozen
(few-shot data would make them noisy).

Iterative pruning (Yeom et al., Pattern Recognition 2021): score the units
of the current model, prune the least scored up to the next rate, fine-tune,
and score again. Already pruned units score -inf, so the masks of
successive rounds nest; the pruned parameters are zero
(``masking.apply_masks``) and the optimiser state, masks included, carries
over from round to round.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from pxp_jax.models import structure
from pxp_jax.prune import masking, ranking, training


def _check(steps, learning_rate, weight_decay) -> None:
  if isinstance(steps, bool) or int(steps) != steps or steps < 0:
    raise ValueError(f'fine_tune: steps must be an integer >= 0, got {steps!r}')
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise ValueError(f'fine_tune: learning_rate must be finite and > 0, got '
                     f'{learning_rate!r}')
  if not (math.isfinite(weight_decay) and weight_decay >= 0):
    raise ValueError(f'fine_tune: weight_decay must be finite and >= 0, got '
                     f'{weight_decay!r}')


def _diverged(steps, learning_rate) -> FloatingPointError:
  return FloatingPointError(
      f'fine_tune: the parameters are NaN or infinite after {steps} steps '
      f'at learning rate {learning_rate}; lower it')


def fine_tune(model, variables, masks: Mapping[str, Any],
              batches: Iterator, *, steps: int, learning_rate: float = 1e-3,
              weight_decay: float = 0.0, mesh=None):
  """AdamW on the cross-entropy of the masked model.

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
    The fine-tuned variables: use them with the same masks (the pruned
    units' parameters are those of ``variables``). One compiled step serves
    every mask and learning rate.

  Example::

    tuned = prune.fine_tune(model, variables, {k: m[3] for k, m in
                            masks.items()}, batches, steps=100)
  """
  _check(steps, learning_rate, weight_decay)
  params = variables['params']
  frozen = {k: v for k, v in variables.items() if k != 'params'}
  masks = {k: jnp.asarray(v) for k, v in masks.items()}
  if not steps:
    return {**variables, 'params': params}
  first = next(batches)
  batches = itertools.chain([first], batches)
  found = structure.trace(model, variables, np.shape(first['image']),
                          jnp.asarray(first['image']).dtype)
  tx = training.optimizer(
      'adamw', learning_rate, weight_decay=weight_decay,
      masks=masking.param_masks(model, variables, masks, found))
  step = training.train_step(model, training.stateful('adamw'))
  params, _, _ = training.run_steps(step, params, frozen, tx.init(params),
                                    batches, steps, masks=masks, mesh=mesh)
  if not training.finite(params):  # a diverged run: read once at the end
    raise _diverged(steps, learning_rate)
  return {**variables, 'params': params}


class State(NamedTuple):
  """Iterative pruning between two rounds: what a resumed run restores."""

  params: Any     # pruned parameters at 0
  opt_state: Any  # masked AdamW's, the parameter masks in it
  masks: dict     # unit key -> (units,) 0/1, 0 = pruned


class Round(NamedTuple):
  """One round of ``iterative``."""

  round: int      # 1, 2, ...
  rate: float     # the share of the units pruned after it
  masks: dict     # unit key -> (units,) 0/1
  pruned: dict    # the variables pruned to ``rate``, before fine-tuning
  variables: dict  # after fine-tuning
  state: State    # to carry on (or to save: ``state._asdict()``)


def start(model, variables, found: structure.Structure | None = None, *,
          units: str | Sequence[str] | None = None,
          learning_rate: float = 1e-3, weight_decay: float = 0.0) -> State:
  """The unpruned ``State`` of ``iterative``: every unit kept and a fresh
  masked AdamW state.

  Args:
    model, variables: the model.
    found: its structure (traced on one image if not given).
    units: the units to prune: a unit type (``'filters'``, ``'neurons'``,
      ``'heads'``), unit keys, or None for every unit of ``found``.
    learning_rate, weight_decay: AdamW's, kept in the state for every round.
  """
  _check(0, learning_rate, weight_decay)
  if found is None:
    found = structure.trace(model, variables, (1, *_image_shape(model)))
  every = found.units()
  keys = (found.units(units) if isinstance(units, str)
          else every if units is None else units)
  ones = {k: np.ones(every[k].size, np.float32) for k in keys}
  params = variables['params']
  tx = training.optimizer(
      'adamw', learning_rate, weight_decay=weight_decay,
      masks=masking.param_masks(model, variables, ones, found))
  return State(params=params, opt_state=tx.init(params), masks=ones)


def _image_shape(model):
  size = getattr(model, 'image_size', 32)
  return (size, size, 3)


def iterative(model, variables, score: Callable[[dict], Mapping[str, Any]],
              rates: Sequence[float], batches: Callable[[int], Iterator], *,
              steps: int, state: State, first: int = 0,
              found: structure.Structure | None = None,
              per_layer: bool = False, keep_one: bool = False,
              mesh=None) -> Iterator[Round]:
  """Iterative pruning: for each rate, score, prune, fine-tune.

  Round ``k`` (from 0) scores the current model (``score(variables)`` ->
  unit key -> (units,) scores; already pruned units rank first), prunes the
  least scored units up to ``rates[k]`` (``ranking.masks``), zeroes their
  parameters, and runs ``steps`` masked AdamW steps on ``batches(k)``.

  Args:
    model, variables: the unpruned model (its parameter shapes and frozen
      BatchNorm statistics).
    score: the criterion, e.g. ``lambda v: criteria.LRP(...).score(model,
      v, images, labels, units)``.
    rates: the cumulative rate after each round (increasing).
    batches: round -> an endless iterator of ``{'image', 'label'}``.
    steps: fine-tuning steps per round.
    state: the state before round ``first`` (``start(...)`` for the unpruned
      model; a saved ``Round.state`` to resume); its optimiser state holds
      the learning rate and weight decay.
    first: the round to start at (a resumed run's next).
    found: the model's structure (traced if not given).
    per_layer, keep_one: ``ranking.masks``' options.
    mesh: data-parallel fine-tuning (``pxp_jax.distribute``).

  Yields:
    A ``Round`` per rate from ``rates[first]`` on.
  """
  _check(steps, 1.0, 0.0)
  if found is None:
    found = structure.trace(model, variables, (1, *_image_shape(model)))
  frozen = {k: v for k, v in variables.items() if k != 'params'}
  step = training.train_step(model, training.stateful('adamw'))
  for k in range(first, len(rates)):
    scores = score({**frozen, 'params': state.params})
    # Pruned units rank first, so the new masks contain the old ones.
    scores = {key: np.where(np.asarray(state.masks[key]) == 0, -np.inf,
                            np.asarray(v, np.float64))
              for key, v in scores.items()}
    rows = ranking.masks(scores, [rates[k]], per_layer=per_layer,
                         keep_one=keep_one)
    masks = {key: np.asarray(m[0]) for key, m in rows.items()}
    pmasks = masking.param_masks(model, variables, masks, found)
    params = masking.apply_masks(state.params, pmasks)
    opt_state = masking.update_masks(state.opt_state, pmasks)
    pruned = {**frozen, 'params': params}
    if steps:
      params, _, opt_state = training.run_steps(
          step, params, frozen, opt_state, batches(k), steps, mesh=mesh)
      if not training.finite(params):  # one read per round
        raise _diverged(steps, _learning_rate(opt_state))
    state = State(params=params, opt_state=opt_state, masks=masks)
    yield Round(round=k + 1, rate=rates[k], masks=masks, pruned=pruned,
                variables={**frozen, 'params': params}, state=state)


def _learning_rate(opt_state) -> float:
  inner = opt_state.inner_state if isinstance(
      opt_state, masking.MaskedState) else opt_state
  return float(inner.hyperparams['learning_rate'])
