"""The search space over a model's layer groups (Hatefi et al., 2024).

Per layer group (``composites.GROUPS``: low, middle and high convs or ViT
blocks, and the classifier ``fc``) a trial chooses the LRP rule among
``rules``, with its eps and gamma on log scales; then whether biases take
relevance, whether units are ranked by |R| or by signed R, a ViT's attention
rule (``composites.ATTENTION_RULES``) and optionally the reference samples
per class. ``Space.suggest(trial)`` draws a trial's parameters,
``Space.to_composite(params)`` builds its composite through the preset
(``pxp_groups`` for a CNN, ``vit_groups`` for a transformer) and
``Space.usual()`` gives the usual composites as parameters, the trials a
search starts with.

Example::

  space = search.Space.for_model(model, rules=('epsilon', 'gamma'))
  composite = space.to_composite(space.usual()[0])

A bad argument is a ``ValueError`` when the space is built; its message
starts with the field's name (``eps must be a range ...``), so a job can
prefix it with its own name for the field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pxp_jax.lrp import composites, rules
from pxp_jax.models import spec as spec_lib
from pxp_jax.models import structure

PRESETS = ('pxp_groups', 'vit_groups')  # a CNN's groups, a transformer's


@dataclasses.dataclass(frozen=True)
class Space:
  """The choices of a search over composites.

  Attributes:
    preset: ``'pxp_groups'`` (a CNN) or ``'vit_groups'`` (a transformer,
      which also searches ``attention``); ``for_model`` reads it from the
      model's family spec.
    groups: the layer groups whose rule is searched (the others keep the
      preset's).
    rules: the rules a group chooses among (``rules.searchable()``).
    eps, gamma: log-scale ranges ``(low, high)``, ``0 < low <= high``.
    signed: rank by |R| (False) and/or by signed R (True).
    zero_bias: whether biases take relevance (False) and/or not (True).
    boundaries: ``()`` for the family's stages or ``(b1, b2)``, fractions
      of the layers where the middle and high groups start.
    attention: a transformer's attention rules (``ATTENTION_RULES``).
    n_per_class: reference samples per class to search (``()``: not
      searched).
  """

  preset: str = 'pxp_groups'
  groups: tuple[str, ...] = composites.GROUPS
  rules: tuple[str, ...] = ('epsilon', 'gamma', 'zplus', 'alpha_beta')
  eps: tuple[float, float] = (1e-9, 1.0)
  gamma: tuple[float, float] = (1e-3, 10.0)
  signed: tuple[bool, ...] = (False, True)
  zero_bias: tuple[bool, ...] = (False, True)
  boundaries: tuple[float, ...] = ()
  attention: tuple[str, ...] = composites.ATTENTION_RULES
  n_per_class: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ('groups', 'rules', 'eps', 'gamma', 'signed', 'zero_bias',
                 'boundaries', 'attention', 'n_per_class'):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if self.preset not in PRESETS:
      raise ValueError(f'preset={self.preset!r} must be one of {PRESETS}')
    if not self.groups:
      raise ValueError('groups is empty: the search space has no layer '
                       'groups')
    if not self.rules:
      raise ValueError('rules is empty: the search space has no rules to '
                       'choose')
    _choices(self, 'rules', rules.searchable(), "the layer groups' LRP rules")
    _choices(self, 'groups', composites.GROUPS, 'the layer groups searched')
    _choices(self, 'attention', composites.ATTENTION_RULES,
             "a transformer's attention rules")
    _choices(self, 'signed', (False, True), 'rank by |R| or by signed R')
    _choices(self, 'zero_bias', (False, True), 'biases take relevance or not')
    _range(self, 'eps')
    _range(self, 'gamma')
    for n in self.n_per_class:
      if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'n_per_class={n!r} must be a whole number >= 1')
    if len(set(self.n_per_class)) != len(self.n_per_class):
      raise ValueError(f'n_per_class={self.n_per_class} names a value twice; '
                       'give each once')
    bounds = self.boundaries
    if bounds and (len(bounds) != 2 or not all(
        isinstance(b, (int, float)) and not isinstance(b, bool)
        for b in bounds) or not 0 <= bounds[0] <= bounds[1] <= 1):
      raise ValueError('boundaries must be () for the stages or (b1, b2) '
                       f'with 0 <= b1 <= b2 <= 1, got {bounds}')

  @classmethod
  def for_model(cls, model, found: structure.Structure | None = None,
                **fields) -> 'Space':
    """The space of ``model``: its family's preset (``vit_groups`` for a
    transformer) with ``fields`` (the other attributes)."""
    found = found or structure.trace_model(model)
    preset = spec_lib.spec_for(model).pruning_composite(found)
    return cls(preset=preset, **fields)

  @property
  def transformer(self) -> bool:
    """Whether trials choose an attention rule."""
    return self.preset == 'vit_groups'

  def suggest(self, trial) -> dict[str, Any]:
    """A trial's parameters (``optuna.Trial``): ``{group}.rule``,
    ``{group}.eps``, ``{group}.gamma`` per group, ``attention`` (a
    transformer), ``zero_bias``, ``signed`` and ``n_per_class`` (if
    searched)."""
    for group in self.groups:
      trial.suggest_categorical(f'{group}.rule', list(self.rules))
      trial.suggest_float(f'{group}.eps', *self.eps, log=True)
      trial.suggest_float(f'{group}.gamma', *self.gamma, log=True)
    if self.transformer:
      trial.suggest_categorical('attention', list(self.attention))
    trial.suggest_categorical('zero_bias', list(self.zero_bias))
    trial.suggest_categorical('signed', list(self.signed))
    if self.n_per_class:
      trial.suggest_categorical('n_per_class', list(self.n_per_class))
    return trial.params

  def composite(self, **chosen) -> composites.Composite:
    """The preset with ``chosen`` rules per group (and, for a transformer,
    ``attention``), at the space's boundaries."""
    return composites.get(self.preset, **chosen,
                          boundaries=self.boundaries or None)

  def to_composite(self, params: Mapping[str, Any]) -> composites.Composite:
    """The composite of a trial's parameters: the chosen rule of each group
    in the space (the others keep the preset's defaults) and, for a
    transformer, the chosen attention rule. AlphaBeta is (2, 1)."""
    chosen = {}
    for group in self.groups:
      chosen[group] = rules.linear_rule(
          params[f'{group}.rule'], eps=params[f'{group}.eps'],
          gamma=params[f'{group}.gamma'], alpha=2.0, beta=1.0,
          zero_bias=params.get('zero_bias', False))
    if 'attention' in params:
      chosen['attention'] = params['attention']
    return self.composite(**chosen)

  def usual(self) -> list[dict[str, Any]]:
    """The usual composites as trial parameters, those the space contains
    (a search starts with them, so its best trial is never worse on its
    objective): for a CNN the 2021 paper's (ZPlus without bias everywhere)
    and Epsilon everywhere; for a ViT AttnLRP (Epsilon everywhere) and
    CP-LRP. All rank by |R|, at eps 1e-6 and gamma 0.25 (clipped to the
    ranges), with the most reference samples searched."""
    usual = ([('epsilon', 'attn_lrp', False), ('epsilon', 'cp_lrp', False)]
             if self.transformer else
             [('zplus', None, True), ('epsilon', None, False)])
    out = []
    for rule, attention, zero_bias in usual:
      if (rule not in self.rules or zero_bias not in self.zero_bias
          or False not in self.signed
          or (self.transformer and attention not in self.attention)):
        continue
      params = {}
      for group in self.groups:
        params.update({f'{group}.rule': rule,
                       f'{group}.eps': float(np.clip(1e-6, *self.eps)),
                       f'{group}.gamma': float(np.clip(0.25, *self.gamma))})
      if self.transformer:
        params['attention'] = attention
      params.update(zero_bias=zero_bias, signed=False)
      if self.n_per_class:
        params['n_per_class'] = max(self.n_per_class)
      out.append(params)
    return out

  def to_json(self, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"preset", "args"}`` of the composite of ``params``: what
    ``composites.from_json`` reads back."""
    composite = self.to_composite(params)
    args = {g: rules.to_json(composite[g]) for g in composites.GROUPS}
    args['boundaries'] = list(self.boundaries)
    if self.transformer:
      args['attention'] = params['attention']
    return {'preset': self.preset, 'args': args}


def _range(space: Space, name: str) -> None:
  """``space.<name>``: a log-scale range (low, high) with 0 < low <= high."""
  value = getattr(space, name)
  if (len(value) != 2 or
      any(isinstance(v, bool) or not isinstance(v, (int, float)) or
          not math.isfinite(v) for v in value) or
      not 0 < value[0] <= value[1]):
    raise ValueError(f'{name} must be a range (low, high) of finite numbers '
                     'with 0 < low <= high (searched on a log scale), got '
                     f'{value}')


def _choices(space: Space, name: str, known, what: str) -> None:
  """``space.<name>``: one or more distinct values among ``known``."""
  value = getattr(space, name)
  if not value:
    raise ValueError(f'{name} is empty: give one or more of {known} ({what})')
  unknown = [v for v in value if v not in known or
             (isinstance(v, bool) != isinstance(known[0], bool))]
  if unknown:
    raise ValueError(f'{name} has {unknown}; choose among {known} ({what})')
  if len(set(value)) != len(value):
    raise ValueError(f'{name}={value} names a value twice; give each once')
