"""Composites: which LRP rule applies to which module.

A composite is an ordered list of ``(name, Select, rule)``; a module gets the
rule of the first entry whose ``Select`` matches its class and path. The
selections are static, the rules are pytrees of arrays (``pxp_jax.rules``), so
a compiled attribution serves every value of every hyperparameter and every
choice among the linear-layer rules. Presets carry zennit's names and
meanings (Anders et al., 2021), AttnLRP's and CP-LRP's (Achtibat et al., ICML
2024) and the layer groups of "Pruning By Explaining Revisited" (Hatefi et
al., 2024).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax.numpy as jnp
import numpy as np

from pxp_jax import rules

LINEAR = ('Conv', 'Dense')


# Rules of the parameter-free operations (the linear ones are rules.LinearRule).

@flax.struct.dataclass
class Gradient:
  """The plain gradient: right as it is for ReLU and max-pooling (winner takes
  all), reshapes and softmax (AttnLRP Prop. 3.1) in gradient x input form."""


@flax.struct.dataclass
class Fold:
  """BatchNorm folded into the preceding conv or dense layer (zennit's
  canoniser): the layer then passes relevance through unchanged."""


@flax.struct.dataclass
class Norm:
  """Epsilon without parameters, for sums and average pooling."""
  eps: Any = 1e-6


@flax.struct.dataclass
class Identity:
  """``R_x = R_y`` for elementwise activations (GELU; AttnLRP Prop. 3.2)."""
  eps: Any = 1e-6


@flax.struct.dataclass
class LayerNormIdentity:
  """LayerNorm with ``1/std`` held constant and Epsilon on the rest (AttnLRP)."""
  eps: Any = 1e-6


@flax.struct.dataclass
class HalfMatMul:
  """AttnLRP's uniform rule for a product of two activations (Prop. 3.3)."""
  eps: Any = 1e-6


@flax.struct.dataclass
class StopRelevance:
  """No relevance to the inputs (CP-LRP: nothing flows through Q K^T)."""


RULE_TYPES = (rules.LinearRule, Gradient, Fold, Norm, Identity,
              LayerNormIdentity, HalfMatMul, StopRelevance)


@dataclasses.dataclass(frozen=True)
class Select:
  """Which modules an entry covers.

  Attributes:
    types: module class names (``'Conv'``, ``'Dense'``, ``'Sum'``, ...);
      empty for any.
    path: a regular expression that must match the whole dotted module path.
    first: only the first conv or dense layer the input meets.
    order: ``(start, stop)`` fractions of the call order among the modules of
      ``types``: the layer ``i`` of ``n`` is covered if
      ``start <= i / n < stop`` (``stop = 1`` includes the last).
  """

  types: tuple[str, ...] = ()
  path: str | None = None
  first: bool = False
  order: tuple[float, float] | None = None

  def covers(self, path: str, kind: str, *, is_first: bool,
             position: tuple[int, int] | None) -> bool:
    if self.types and kind not in self.types:
      return False
    if self.path is not None and not re.fullmatch(self.path, path):
      return False
    if self.first and not is_first:
      return False
    if self.order is not None:
      if position is None:
        return False
      index, count = position
      start, stop = self.order
      return start <= index / count < stop or (stop >= 1 and index == count - 1)
    return True


@flax.struct.dataclass
class Composite:
  """An ordered list of named entries ``(Select, rule)``; first match wins."""

  rules: tuple
  names: tuple[str, ...] = flax.struct.field(pytree_node=False)
  selects: tuple[Select, ...] = flax.struct.field(pytree_node=False)

  @classmethod
  def of(cls, entries: Sequence[tuple[str, Select, Any]]) -> 'Composite':
    """Builds a composite from ``(name, Select, rule)`` entries."""
    names = tuple(name for name, _, _ in entries)
    if len(set(names)) != len(names):
      raise ValueError(f'composite entry names must be unique, got {names}')
    for name, select, rule in entries:
      if not isinstance(select, Select):
        raise TypeError(f'entry {name!r}: expected a Select, got {select!r}')
      if not isinstance(rule, RULE_TYPES):
        raise TypeError(f'entry {name!r}: {rule!r} is not a rule; use '
                        'pxp_jax.rules (linear layers) or the rule classes '
                        'of pxp_jax.composites')
    return cls(rules=tuple(_as_arrays(r) for _, _, r in entries), names=names,
               selects=tuple(s for _, s, _ in entries))

  def entry_for(self, path: str, kind: str, *, is_first: bool = False,
                position: tuple[int, int] | None = None) -> int | None:
    """Index of the entry covering a module, or None."""
    for i, select in enumerate(self.selects):
      if select.covers(path, kind, is_first=is_first, position=position):
        return i
    return None

  def __getitem__(self, name: str):
    return self.rules[self._index(name)]

  def with_rule(self, name: str, rule) -> 'Composite':
    """A copy with the rule of entry ``name`` replaced (same compiled code as
    long as the rule has the same type)."""
    new = list(self.rules)
    new[self._index(name)] = _as_arrays(rule)
    return self.replace(rules=tuple(new))

  def _index(self, name: str) -> int:
    if name not in self.names:
      raise KeyError(f'no entry {name!r} in this composite; entries: '
                     f'{", ".join(self.names)}')
    return self.names.index(name)


def _as_arrays(rule):
  """Rule hyperparameters as float arrays, so they are traced, not static."""
  if isinstance(rule, rules.LinearRule):
    return rule
  fields = {f.name: jnp.asarray(getattr(rule, f.name), jnp.result_type(float))
            for f in dataclasses.fields(rule)}
  return rule.replace(**fields) if fields else rule


# Presets ---------------------------------------------------------------------


def _cnn_base(stabilizer):
  """zennit's shared base: activations and max-pooling pass (gradient),
  BatchNorm folded, sums and average pooling Norm."""
  return [
      ('batch_norm', Select(('BatchNorm',)), Fold()),
      ('activation', Select(('ReLU',)), Gradient()),
      ('max_pool', Select(('MaxPool',)), Gradient()),
      ('flatten', Select(('Flatten',)), Gradient()),
      ('sum', Select(('Sum',)), Norm(stabilizer)),
      ('avg_pool', Select(('AdaptiveAvgPool', 'GlobalAvgPool')),
       Norm(stabilizer)),
  ]


def _conv_dense(conv_rule, eps, stabilizer, first=None, zero_bias=False):
  entries = _cnn_base(stabilizer)
  if first is not None:
    entries.append(('first', Select(('Conv',), first=True), first))
  entries += [('conv', Select(('Conv',)), conv_rule),
              ('dense', Select(('Dense',)), rules.epsilon(eps, zero_bias))]
  return Composite.of(entries)


def epsilon_plus(eps=1e-6, stabilizer=1e-6, zero_bias=False) -> Composite:
  """zennit's EpsilonPlus: ZPlus on convs, Epsilon on dense layers."""
  return _conv_dense(rules.zplus(stabilizer, zero_bias), eps, stabilizer,
                     zero_bias=zero_bias)


def epsilon_plus_flat(eps=1e-6, stabilizer=1e-6, zero_bias=False) -> Composite:
  """zennit's EpsilonPlusFlat: EpsilonPlus with Flat on the first conv."""
  return _conv_dense(rules.zplus(stabilizer, zero_bias), eps, stabilizer,
                     first=rules.flat(stabilizer), zero_bias=zero_bias)


def epsilon_alpha2_beta1(eps=1e-6, stabilizer=1e-6,
                         zero_bias=False) -> Composite:
  """zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on convs, Epsilon on dense."""
  return _conv_dense(rules.alpha_beta(2.0, 1.0, stabilizer, zero_bias), eps,
                     stabilizer, zero_bias=zero_bias)


def epsilon_alpha2_beta1_flat(eps=1e-6, stabilizer=1e-6,
                              zero_bias=False) -> Composite:
  """zennit's EpsilonAlpha2Beta1Flat: the above with Flat on the first conv."""
  return _conv_dense(rules.alpha_beta(2.0, 1.0, stabilizer, zero_bias), eps,
                     stabilizer, first=rules.flat(stabilizer),
                     zero_bias=zero_bias)


def epsilon_gamma_box(low, high, gamma=0.25, eps=1e-6, stabilizer=1e-6,
                      zero_bias=False) -> Composite:
  """zennit's EpsilonGammaBox: ZBox(low, high) on the first conv, Gamma on
  the other convs, Epsilon on dense layers. ``low``/``high`` are the bounds
  of the (normalised) input, scalars or per channel."""
  return _conv_dense(rules.gamma(gamma, stabilizer, zero_bias), eps,
                     stabilizer, first=rules.zbox(low, high, stabilizer),
                     zero_bias=zero_bias)


GROUPS = ('low', 'middle', 'high')


def _transformer(linear, eps, attention):
  """A ViT composite: ``linear`` the entries of the conv and dense layers,
  ``attention`` the name of the rules of the two attention products."""
  return Composite.of([
      ('layer_norm', Select(('LayerNorm',)), LayerNormIdentity(eps)),
      ('activation', Select(('GELU',)), Identity(eps)),
      ('softmax', Select(('Softmax',)), Gradient()),
      *_ATTENTION[attention](eps),
      ('sum', Select(('Sum',)), Norm(eps)),
      *linear,
  ])


_ATTENTION = {
    # AttnLRP: the uniform (50/50) rule on Q K^T and A V.
    'attn_lrp': lambda eps: [('matmul', Select(('MatMul',)), HalfMatMul(eps))],
    # CP-LRP: no relevance through the attention weights, only through V.
    'cp_lrp': lambda eps: [
        ('attention_scores', Select(('MatMul',), path=r'.*\.qk'),
         StopRelevance()),
        ('attention_values', Select(('MatMul',), path=r'.*\.av'), Gradient()),
    ],
}
ATTENTION_RULES = tuple(_ATTENTION)


def _vit_linear(eps, gamma):
  rule = rules.epsilon(eps) if gamma is None else rules.gamma(gamma, eps)
  return [('linear', Select(LINEAR), rule)]


def attn_lrp(eps=1e-6, gamma=None) -> Composite:
  """AttnLRP for ViTs (Achtibat et al., 2024): Epsilon (or Gamma(gamma)) on
  dense layers and the patch embedding, the identity rule on LayerNorm's
  normalisation and GELU, softmax by its gradient, the uniform rule on the
  two attention products, Norm on the residual sums."""
  return _transformer(_vit_linear(eps, gamma), eps, 'attn_lrp')


def cp_lrp(eps=1e-6, gamma=None) -> Composite:
  """CP-LRP (Ali et al., 2022) as in LXT: AttnLRP's rules, but no relevance
  through the attention weights; it flows through the values only."""
  return _transformer(_vit_linear(eps, gamma), eps, 'cp_lrp')


def vit_groups(low=None, middle=None, high=None, fc=None, *, depth: int,
               attention: str = 'attn_lrp',
               boundaries: tuple[float, float] = (1 / 3, 2 / 3),
               stabilizer=1e-6) -> Composite:
  """PXP's layer groups for a ViT (Hatefi et al., 2024): the linear layers of
  blocks ``i`` with ``b1 <= i / depth < b2`` form the middle group (low
  before, high after; the patch embedding is low), the classification head
  is ``fc``; each group has its own rule (Epsilon by default, as AttnLRP).
  ``attention`` is ``'attn_lrp'`` or ``'cp_lrp'``; the other rules are
  AttnLRP's, with ``stabilizer`` their eps."""
  if attention not in _ATTENTION:
    raise ValueError(f'unknown attention rule {attention!r}; choose among '
                     f'{ATTENTION_RULES}')
  b1, b2 = boundaries
  if not 0 <= b1 <= b2 <= 1:
    raise ValueError(f'boundaries must satisfy 0 <= b1 <= b2 <= 1, got '
                     f'{boundaries}')
  cuts = dict(low=(0.0, b1), middle=(b1, b2), high=(b2, 1.0))
  chosen = dict(low=low, middle=middle, high=high, fc=fc)
  chosen = {k: rules.epsilon() if v is None else v for k, v in chosen.items()}
  linear = [('fc', Select(('Dense',), path='head'), chosen['fc'])]
  for group in GROUPS:
    start, stop = cuts[group]
    paths = [rf'blocks\.{i}\..*' for i in range(depth)
             if start <= i / depth < stop]
    if group == 'low':
      paths.insert(0, r'patch_embed\..*')
    pattern = '|'.join(paths) or '(?!)'  # (?!) matches nothing
    linear.append((group, Select(LINEAR, path=pattern), chosen[group]))
  return _transformer(linear, stabilizer, attention)


def pxp_groups(low=None, middle=None, high=None, fc=None, *,
               boundaries: tuple[float, float] | dict[str, str] = (1 / 3, 2 / 3),
               stabilizer=1e-6) -> Composite:
  """The layer-group composite of PXP (Hatefi et al., 2024).

  Convs are split in call order into low, middle and high groups, each with
  its own rule; dense layers form the ``fc`` group. The defaults are the 2021
  paper's composite (ZPlus on convs, Epsilon on dense layers).

  Args:
    low, middle, high, fc: ``rules.LinearRule`` of each group.
    boundaries: fractions of the conv call order where middle and high start,
      or ``{'low': regex, 'middle': regex, 'high': regex}`` over conv paths.
    stabilizer: eps of the Norm rule on sums and average pooling.
  """
  chosen = dict(low=low, middle=middle, high=high)
  chosen = {k: rules.zplus() if v is None else v for k, v in chosen.items()}
  if isinstance(boundaries, dict):
    missing = set(GROUPS) - set(boundaries)
    if missing:
      raise ValueError(f'boundaries lacks group(s) {sorted(missing)}')
    selects = {g: Select(('Conv',), path=boundaries[g]) for g in GROUPS}
  else:
    b1, b2 = boundaries
    if not 0 <= b1 <= b2 <= 1:
      raise ValueError(f'boundaries must satisfy 0 <= b1 <= b2 <= 1, got '
                       f'{boundaries}')
    cuts = dict(low=(0.0, b1), middle=(b1, b2), high=(b2, 1.0))
    selects = {g: Select(('Conv',), order=cuts[g]) for g in GROUPS}
  return Composite.of([
      *_cnn_base(stabilizer),
      *[(g, selects[g], chosen[g]) for g in GROUPS],
      ('fc', Select(('Dense',)), rules.epsilon() if fc is None else fc),
  ])


PRESETS = {
    'epsilon_plus': epsilon_plus,
    'epsilon_plus_flat': epsilon_plus_flat,
    'epsilon_alpha2_beta1': epsilon_alpha2_beta1,
    'epsilon_alpha2_beta1_flat': epsilon_alpha2_beta1_flat,
    'epsilon_gamma_box': epsilon_gamma_box,
    'attn_lrp': attn_lrp,
    'cp_lrp': cp_lrp,
    'pxp_groups': pxp_groups,
    'vit_groups': vit_groups,
}


def get(name: str, **kwargs) -> Composite:
  """A preset by name with its keyword arguments."""
  if name not in PRESETS:
    raise ValueError(f'unknown composite {name!r}; presets: '
                     f'{", ".join(sorted(PRESETS))}')
  return PRESETS[name](**kwargs)


def for_model(model, low=None, high=None) -> Composite:
  """A sensible default: AttnLRP for ViTs; for CNNs EpsilonGammaBox when the
  input bounds ``low``/``high`` are known, else EpsilonPlus."""
  from pxp_jax import models  # pylint: disable=g-import-not-at-top
  if isinstance(model, models.ViT):
    return attn_lrp()
  if low is not None and high is not None:
    return epsilon_gamma_box(low, high)
  return epsilon_plus()


def rule_to_json(rule) -> dict:
  """A linear-layer rule as JSON: ``{"rule": name, hyperparameters...}``."""
  out = {'rule': rule.name}
  for field in ('eps', 'gamma', 'alpha', 'beta', 'low', 'high'):
    value = np.asarray(getattr(rule, field))
    out[field] = value.tolist()
  out['zero_bias'] = bool(rule.zero_bias)
  return out


def rule_from_json(spec: dict) -> rules.LinearRule:
  spec = dict(spec)
  name = spec.pop('rule', None)
  if name is None:
    raise ValueError(f'a rule needs a "rule" name, got {spec}')
  return rules.linear_rule(name, **spec)


def from_json(spec: dict) -> Composite:
  """A preset from ``{"preset": name, "args": {...}}``; arguments that are
  dicts with a ``"rule"`` key become linear-layer rules (e.g. the groups of
  ``pxp_groups``)."""
  if 'preset' not in spec:
    raise ValueError('a composite JSON needs "preset" (one of '
                     f'{", ".join(sorted(PRESETS))}) and optional "args"')
  args = {k: rule_from_json(v) if isinstance(v, dict) and 'rule' in v else v
          for k, v in spec.get('args', {}).items()}
  return get(spec['preset'], **args)
