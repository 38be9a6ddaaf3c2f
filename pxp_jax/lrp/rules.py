"""Every LRP rule by name: the Dense / Conv rules (``linear_rules``) and the
rules of parameter-free operations (``op_rules``), with their JSON form.

  rules.epsilon(1e-6), rules.zplus(), rules.gamma(0.25), rules.alpha_beta(2, 1),
  rules.zbox(low, high), rules.flat(), rules.wsquare()      # Dense / Conv
  rules.Gradient(), rules.Fold(), rules.Norm(eps), rules.Identity(eps),
  rules.LayerNormIdentity(eps), rules.HalfMatMul(eps), rules.StopRelevance(),
  rules.SoftmaxZPlus(virtual_bias, eps)
"""

from pxp_jax.lrp.linear_rules import (LinearRule, alpha_beta, epsilon, flat,
                                      gamma, linear_rule, names, searchable,
                                      stabilize, wsquare, zbox, zplus)
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
  spec = dict(spec)
  name = spec.pop('rule', None)
  if name is None:
    raise ValueError(f'a rule needs a "rule" name, got {spec}')
  if name in REGISTRY:
    return REGISTRY[name](**spec)
  return linear_rule(name, **spec)


__all__ = [
    'Fold', 'Gradient', 'HalfMatMul', 'Identity', 'LayerNormIdentity',
    'LinearRule', 'Norm', 'REGISTRY', 'RULE_TYPES', 'SoftmaxZPlus',
    'StopRelevance',
    'alpha_beta', 'epsilon', 'flat', 'from_json', 'gamma', 'linear',
    'linear_rule', 'names', 'searchable', 'stabilize', 'to_json', 'wsquare',
    'zbox', 'zplus',
]
