"""LRP rules of Dense / Conv layers, each registered once.

Gradient x input convention: the cotangent ``g`` at a tensor ``a`` carries
relevance ``R_a = a * g`` (LXT's efficient AttnLRP, Achtibat et al., ICML
2024), so a rule only says what cotangent to send to the layer input.
Every rule is one registered backward function (``_register``: its name,
the hyperparameters it reads, whether the search may choose it); a
``LinearRule`` pytree holds the rule id and every hyperparameter as array
leaves, so changing them, or switching the rule with ``dynamic_rules``,
never recompiles (``linear_vjp`` runs a layer under a rule). Definitions
are zennit's (Anders et al., 2021) with
``stab(z) = z + eps * sign(z)``, ``sign(0) = +1``; see ``LinearRule``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Definition:
  """A registered linear rule: ``backward(layer, kernel, bias, rule, R)``
  returns ``(R_x, cotangent of x)``; ``hyperparameters`` are the fields of
  ``LinearRule`` it reads (its JSON form); ``searchable`` puts it among the
  rules a search over composites chooses from; ``input_space`` rules (ZBox,
  Flat, WSquare) give relevance that is not ``x * cotangent`` and so apply
  to the layer that reads the model input only."""

  name: str
  backward: Callable
  hyperparameters: tuple[str, ...]
  searchable: bool
  input_space: bool


_REGISTRY: dict[str, Definition] = {}


def _register(name: str, hyperparameters: tuple[str, ...],
              searchable: bool = False, input_space: bool = False):
  def register(backward):
    _REGISTRY[name] = Definition(name, backward, hyperparameters, searchable,
                                 input_space)
    return backward
  return register


def names() -> tuple[str, ...]:
  """Registered rule names; a rule's id is its index here."""
  return tuple(_REGISTRY)


def searchable() -> tuple[str, ...]:
  """The rules a search over composites chooses among."""
  return tuple(n for n, d in _REGISTRY.items() if d.searchable)


def definitions() -> tuple[Definition, ...]:
  """Every registered rule, in id order."""
  return tuple(_REGISTRY.values())


def definition(rule: str | int) -> Definition:
  if isinstance(rule, str):
    if rule not in _REGISTRY:
      raise ValueError(f'unknown linear-layer rule {rule!r}; known: '
                       f'{", ".join(_REGISTRY)}')
    return _REGISTRY[rule]
  return list(_REGISTRY.values())[int(rule)]


def stabilize(z, eps):
  """``z + eps * sign(z)`` with ``sign(0) = +1`` (zennit's stabiliser)."""
  return z + eps * jnp.where(z >= 0, 1, -1).astype(z.dtype)


def _float(v):
  """An array of the default float type (float64 when x64 is enabled)."""
  return jnp.asarray(v, jnp.result_type(float))


@flax.struct.dataclass
class LinearRule:
  """Hyperparameters of a Dense / Conv rule; every field is an array leaf.

  With ``y = W x + b``, ``x+ = max(x, 0)``, ``W+ = max(W, 0)`` (likewise
  ``-``), ``R`` the relevance at the output and ``k = 0`` if ``zero_bias``
  else 1 (zennit's ``zero_params='bias'``):

  - epsilon: ``R_x = x * W^T [R / stab(W x + k b)]`` (Bach et al., 2015).
  - zplus: ``R_x = x+ W+^T s + x- W-^T s``, ``s = R / stab(W+ x+ + W- x- + k b+)``.
  - alpha_beta: ``alpha`` times the zplus term minus ``beta`` times the same
    term with the weight signs swapped (``W- x+ + W+ x- + k b-``).
  - gamma (generalised, Andeol et al., 2021): ``W_g± = W + gamma W±``,
    ``b_g± = b + gamma b±``; where ``y > 0``: ``s = R / stab(W_g+ x+ + W_g- x- + k b_g+)``,
    ``R_x = x+ W_g+^T s + x- W_g-^T s``; where ``y < 0`` the roles swap.
  - zbox(low, high): ``R_x = x W^T s - low W+^T s - high W-^T s``,
    ``s = R / stab(W x - W+ low - W- high)`` (Montavon et al., 2017).
  - wsquare: ``R_x = (W^2)^T [R / stab(W^2 1 + k b^2)]``; flat: wsquare with
    ``W = 1`` and no bias.
  """

  rule: jax.Array
  eps: jax.Array
  gamma: jax.Array
  alpha: jax.Array
  beta: jax.Array
  low: jax.Array
  high: jax.Array
  zero_bias: jax.Array

  @property
  def name(self) -> str:
    return definition(self.rule).name

  def to_json(self) -> dict:
    """``{"rule": name, hyperparameter: value, ...}``."""
    out = {'rule': self.name}
    for field in definition(self.rule).hyperparameters:
      value = jax.device_get(getattr(self, field))
      out[field] = value.tolist()
    return out

  def as_arrays(self) -> 'LinearRule':
    return self


def linear_rule(rule: str | int, *, eps=1e-6, gamma=0.25, alpha=2.0, beta=1.0,
                low=0.0, high=0.0, zero_bias=False) -> LinearRule:
  """A ``LinearRule`` by name (``names()``) with its hyperparameters.

  Raises:
    ValueError: for an unknown rule, or a hyperparameter out of its range:
      ``eps``, ``gamma`` and ``beta`` finite and >= 0, ``alpha - beta = 1``
      (alpha_beta), ``low < high`` everywhere (zbox). Traced values (inside
      ``jit``) are not checked.
  """
  if isinstance(rule, str):
    definition(rule)  # a clear error for an unknown name
    rule = names().index(rule)
  elif not _traced(rule):
    if (isinstance(rule, bool) or np.ndim(rule) != 0
        or not np.issubdtype(np.asarray(rule).dtype, np.integer)
        or not 0 <= int(rule) < len(_REGISTRY)):
      raise ValueError(f'rule must be a name ({", ".join(_REGISTRY)}) or an '
                       f'id in [0, {len(_REGISTRY)}), got {rule!r}')
  check_hyperparameters(names()[int(rule)] if not _traced(rule) else None,
                        eps=eps, gamma=gamma, alpha=alpha, beta=beta, low=low,
                        high=high, zero_bias=zero_bias)
  return LinearRule(
      rule=jnp.asarray(rule, jnp.int32), eps=_float(eps), gamma=_float(gamma),
      alpha=_float(alpha), beta=_float(beta), low=_float(low), high=_float(high),
      zero_bias=jnp.asarray(zero_bias, jnp.bool_))


def _traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def number(value, name: str, where: str) -> np.ndarray | None:
  """``value`` as a float64 numpy array, or None if it is traced; a
  ValueError naming ``name`` for strings, booleans, None, and NaN or
  infinite values."""
  if _traced(value):
    return None
  if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
    raise ValueError(f'{where}: {name} must be a number, got {value!r}')
  try:
    array = np.asarray(jax.device_get(value))
  except (TypeError, ValueError) as error:
    raise ValueError(f'{where}: {name} must be a number, got '
                     f'{value!r}') from error
  if array.dtype.kind in 'OSUbMm':  # objects, text, booleans, dates
    raise ValueError(f'{where}: {name} must be a number, got {value!r}')
  try:
    array = array.astype(np.float64)  # also bfloat16 (kind 'V')
  except (TypeError, ValueError) as error:
    raise ValueError(f'{where}: {name} must be a number, got '
                     f'{value!r}') from error
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{where}: {name} must be finite, got {value!r}')
  return array


def check_non_negative(value, name: str, where: str):
  """A ValueError unless ``value`` is a finite number >= 0 (a stabiliser:
  a negative one can cancel a denominator, giving relevance of 1e11 that
  passes every finiteness check)."""
  array = number(value, name, where)
  if array is not None and array.ndim:
    raise ValueError(f'{where}: {name} must be one number, got shape '
                     f'{array.shape}')
  if array is not None and np.any(array < 0):
    raise ValueError(f'{where}: {name} must be >= 0, got {value!r}')


def check_hyperparameters(rule: str | None, *, eps, gamma, alpha, beta, low,
                          high, zero_bias):
  """The ranges of ``linear_rule``'s hyperparameters (``rule`` None: a
  traced rule id, the rule-specific checks skipped)."""
  where = f'rules.{rule or "linear_rule"}'
  for name, value in (('eps', eps), ('gamma', gamma), ('beta', beta)):
    check_non_negative(value, name, where)
  alpha_value = number(alpha, 'alpha', where)
  if alpha_value is not None and alpha_value.ndim:
    raise ValueError(f'{where}: alpha must be one number, got shape '
                     f'{alpha_value.shape}')
  low_value = number(low, 'low', where)
  high_value = number(high, 'high', where)
  if not (_traced(zero_bias) or isinstance(zero_bias, (bool, np.bool_))
          or (isinstance(zero_bias, (int, np.integer)) and zero_bias in (0, 1))
          or (isinstance(zero_bias, (np.ndarray, jax.Array))
              and zero_bias.shape == () and zero_bias.dtype == bool)):
    raise ValueError(f'{where}: zero_bias must be True or False, got '
                     f'{zero_bias!r}')
  beta_value = number(beta, 'beta', where)
  if (rule == 'alpha_beta' and alpha_value is not None
      and beta_value is not None
      and np.any(np.abs(alpha_value - beta_value - 1) > 1e-6)):
    raise ValueError(f'{where}: alpha - beta must be 1 to conserve '
                     f'relevance, got alpha={alpha!r}, beta={beta!r}')
  if rule == 'zbox' and low_value is not None and high_value is not None:
    if low_value.ndim > 1 or high_value.ndim > 1:
      raise ValueError(f'{where}: low and high are scalars or one value per '
                       f'input channel, got shapes {low_value.shape} and '
                       f'{high_value.shape}')
    try:
      ordered = np.all(low_value < high_value)
    except ValueError as error:
      raise ValueError(f'{where}: low and high must have the same number of '
                       f'channels, got shapes {low_value.shape} and '
                       f'{high_value.shape}') from error
    if not ordered:
      raise ValueError(f'{where}: the input bounds must satisfy low < high '
                       f'in every channel, got low={low!r}, high={high!r}')


def epsilon(eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('epsilon', eps=eps, zero_bias=zero_bias)


def zplus(eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('zplus', eps=eps, zero_bias=zero_bias)


def alpha_beta(alpha=2.0, beta=1.0, eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('alpha_beta', alpha=alpha, beta=beta, eps=eps,
                     zero_bias=zero_bias)


def gamma(gamma=0.25, eps=1e-6, zero_bias=False) -> LinearRule:  # pylint: disable=redefined-outer-name
  return linear_rule('gamma', gamma=gamma, eps=eps, zero_bias=zero_bias)


def zbox(low, high, eps=1e-6) -> LinearRule:
  """ZBox for inputs bounded by ``low`` and ``high`` (scalars or per channel)."""
  return linear_rule('zbox', low=low, high=high, eps=eps)


def flat(eps=1e-6) -> LinearRule:
  return linear_rule('flat', eps=eps)


def wsquare(eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('wsquare', eps=eps, zero_bias=zero_bias)


def _pos(a):
  return jnp.maximum(a, 0)


def _neg(a):
  return jnp.minimum(a, 0)


def _keep(rule, dtype):
  return jnp.where(rule.zero_bias, 0, 1).astype(dtype)


@_register('epsilon', ('eps', 'zero_bias'), searchable=True)
def _epsilon(layer, kernel, bias, rule, relevance):
  x, y = layer.x, layer.y
  # y itself when the bias is kept: no rounding of y - b + b (bfloat16)
  z = y - (1 - _keep(rule, x.dtype)) * bias
  s = relevance / stabilize(z, rule.eps)
  return layer.as_relevance(layer.back([kernel], [s]))


@_register('zplus', ('eps', 'zero_bias'), searchable=True)
def _zplus(layer, kernel, bias, rule, relevance):
  x = layer.x
  pair = (_pos(kernel), _neg(kernel))
  z, = layer.fwd_signed(pair)
  s = relevance / stabilize(z + _keep(rule, x.dtype) * _pos(bias), rule.eps)
  return layer.as_relevance(layer.back_signed([pair], [s]))


@_register('alpha_beta', ('alpha', 'beta', 'eps', 'zero_bias'), searchable=True)
def _alpha_beta(layer, kernel, bias, rule, relevance):
  x = layer.x
  wp, wn = _pos(kernel), _neg(kernel)
  keep = _keep(rule, x.dtype)
  zp, zn = layer.fwd_signed((wp, wn), (wn, wp))
  sp = rule.alpha * relevance / stabilize(zp + keep * _pos(bias), rule.eps)
  sn = -rule.beta * relevance / stabilize(zn + keep * _neg(bias), rule.eps)
  return layer.as_relevance(layer.back_signed([(wp, wn), (wn, wp)], [sp, sn]))


@_register('gamma', ('gamma', 'eps', 'zero_bias'), searchable=True)
def _gamma(layer, kernel, bias, rule, relevance):
  x, y = layer.x, layer.y
  g, keep = rule.gamma, _keep(rule, x.dtype)
  wgp, wgn = kernel + g * _pos(kernel), kernel + g * _neg(kernel)
  zp, zn = layer.fwd_signed((wgp, wgn), (wgn, wgp))
  zp = zp + keep * (bias + g * _pos(bias))
  zn = zn + keep * (bias + g * _neg(bias))
  sp = jnp.where(y > 0, relevance / stabilize(zp, rule.eps), 0)
  sn = jnp.where(y < 0, relevance / stabilize(zn, rule.eps), 0)
  return layer.as_relevance(
      layer.back_signed([(wgp, wgn), (wgn, wgp)], [sp, sn]))


@_register('zbox', ('low', 'high', 'eps'), input_space=True)
def _zbox(layer, kernel, bias, rule, relevance):
  del bias  # it cancels: (b) - (b+) - (b-) = 0, as in zennit
  x = layer.x
  wp, wn = _pos(kernel), _neg(kernel)
  low = jnp.broadcast_to(rule.low, x.shape)
  high = jnp.broadcast_to(rule.high, x.shape)
  # The three products W x, W+ low, W- high as one product over the three
  # inputs stacked along the input channels.
  stacked = jnp.concatenate([x, low, high], axis=-1)
  kernels = [jnp.concatenate([kernel, -wp, -wn], axis=-2)]
  z, = layer.fwd(stacked, *kernels)
  s = relevance / stabilize(z, rule.eps)
  gx, gl, gh = jnp.split(layer.back(kernels, [s], stacked), 3, axis=-1)
  return layer.from_relevance(x * gx + low * gl + high * gh)


def _square(layer, w, b, relevance, eps):
  z, = layer.fwd(jnp.ones_like(layer.x), w)
  s = relevance / stabilize(z + b, eps)
  return layer.from_relevance(layer.back([w], [s]))


@_register('flat', ('eps',), input_space=True)
def _flat(layer, kernel, bias, rule, relevance):
  del bias
  return _square(layer, jnp.ones_like(kernel), 0, relevance, rule.eps)


@_register('wsquare', ('eps', 'zero_bias'), input_space=True)
def _wsquare(layer, kernel, bias, rule, relevance):
  return _square(layer, kernel**2, _keep(rule, layer.x.dtype) * bias**2,
                 relevance, rule.eps)
