"""Every LRP rule by name: the Dense / Conv rules (``linear_rules``) and the
rules of parameter-free operations (``op_rules``), with their JSON form.

  rules.epsilon(1e-6), rules.zplus(), rules.gamma(0.25), rules.alpha_beta(2, 1),
  rules.zbox(low, high), rules.flat(), rules.wsquare()      # Dense / Conv
  rules.Gradient(), rules.Fold(), rules.Norm(eps), rules.Identity(eps),
  rules.LayerNormIdentity(eps), rules.HalfMatMul(eps), rules.StopRelevance(),
  rules.SoftmaxZPlus(virtual_bias, eps)
"""

import dataclasses

import jax

from pxp_jax.lrp.linear_rules import (LinearRule, alpha_beta,
                                      check_hyperparameters, definition,
                                      epsilon, flat, gamma, linear_rule, names,
                                      searchable, stabilize, wsquare, zbox,
                                      zplus)
from pxp_jax.lrp.linear_vjp import linear
from pxp_jax.lrp.op_rules import (REGISTRY, Fold, Gradient, HalfMatMul,
                                  Identity, LayerNormIdentity, Norm,
                                  SoftmaxZPlus, StopRelevance)

RULE_TYPES = (LinearRule, *REGISTRY.values())


def to_json(rule) -> dict:
  """A rule as ``{"rule": name, hyperparameter: value, ...}``."""
  return rule.to_json()


def from_json(spec: dict):
  """The rule of ``to_json``: a linear-layer rule name (``names()``) or a
  parameter-free one (``REGISTRY``)."""
  if not isinstance(spec, dict):
    raise ValueError(f'a rule in JSON is {{"rule": name, hyperparameter: '
                     f'value, ...}}, got {spec!r}')
  spec = dict(spec)
  name = spec.pop('rule', None)
  if name is None:
    raise ValueError(f'a rule needs a "rule" name, got {spec}')
  if name in REGISTRY:
    fields = [f.name for f in dataclasses.fields(REGISTRY[name])]
  elif isinstance(name, str) and name in names():
    fields = list(definition(name).hyperparameters)
  else:
    raise ValueError(f'unknown rule {name!r}; rules: '
                     f'{", ".join([*names(), *REGISTRY])}')
  unknown = sorted(set(spec) - set(fields))
  if unknown:
    raise ValueError(f'rule {name!r} has no hyperparameter(s) {unknown}; it '
                     f'takes {fields}')
  if name in REGISTRY:
    return REGISTRY[name](**spec)
  return linear_rule(name, **spec)


def check(rule):
  """A ValueError naming the first hyperparameter of ``rule`` out of its
  range (concrete values; traced ones pass), a TypeError if ``rule`` is
  not a rule."""
  if not isinstance(rule, RULE_TYPES):
    raise TypeError(f'{rule!r} is not a rule; use pxp_jax.rules (e.g. '
                    'rules.epsilon(1e-6))')
  if not isinstance(rule, LinearRule):
    rule.check()
    return
  traced = isinstance(rule.rule, jax.core.Tracer)
  if not traced and not 0 <= int(rule.rule) < len(names()):
    raise ValueError(f'LinearRule.rule must be an id in [0, {len(names())}), '
                     f'got {rule.rule}')
  check_hyperparameters(
      None if traced else names()[int(rule.rule)], eps=rule.eps,
      gamma=rule.gamma, alpha=rule.alpha, beta=rule.beta, low=rule.low,
      high=rule.high, zero_bias=rule.zero_bias)


__all__ = [
    'Fold', 'Gradient', 'HalfMatMul', 'Identity', 'LayerNormIdentity',
    'LinearRule', 'Norm', 'REGISTRY', 'RULE_TYPES', 'SoftmaxZPlus',
    'StopRelevance',
    'alpha_beta', 'check', 'epsilon', 'flat', 'from_json', 'gamma', 'linear',
    'linear_rule', 'names', 'searchable', 'stabilize', 'to_json', 'wsquare',
    'zbox', 'zplus',
]
