"""LRP rules of Dense / Conv layers, each registered once.

Gradient x input convention: the cotangent ``g`` at a tensor ``a`` carries
relevance ``R_a = a * g`` (LXT's efficient AttnLRP, Achtibat et al., ICML
2024), so a rule only says what cotangent to send to the layer input.
Every rule is one registered backward function (``_register``: its name,
the hyperparameters it reads, whether the search may choose it); a
``LinearRule`` pytree holds the rule id and every hyperparameter as array
leaves, so changing them, or switching the rule with ``dynamic_rules``,
never recompiles. Definitions are zennit's (Anders et al., 2021) with
``stab(z) = z + eps * sign(z)``, ``sign(0) = +1``; see ``LinearRule``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp


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

  def apply(self, call, proceed, context):
    """The layer's output, with this rule as its backward pass."""
    del proceed
    return _apply_to_module(call, self, context)

  def as_arrays(self) -> 'LinearRule':
    return self


def linear_rule(rule: str | int, *, eps=1e-6, gamma=0.25, alpha=2.0, beta=1.0,
                low=0.0, high=0.0, zero_bias=False) -> LinearRule:
  """A ``LinearRule`` by name (``names()``) with its hyperparameters."""
  if isinstance(rule, str):
    definition(rule)  # a clear error for an unknown name
    rule = names().index(rule)
  return LinearRule(
      rule=jnp.asarray(rule, jnp.int32), eps=_float(eps), gamma=_float(gamma),
      alpha=_float(alpha), beta=_float(beta), low=_float(low), high=_float(high),
      zero_bias=jnp.asarray(zero_bias, jnp.bool_))


def epsilon(eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('epsilon', eps=eps, zero_bias=zero_bias)


def zplus(eps=1e-6, zero_bias=False) -> LinearRule:
  return linear_rule('zplus', eps=eps, zero_bias=zero_bias)


def alpha_beta(alpha=2.0, beta=1.0, eps=1e-6, zero_bias=False) -> LinearRule:
  if not isinstance(alpha, jax.core.Tracer) and abs(alpha - beta - 1) > 1e-6:
    raise ValueError(f'alpha - beta must be 1 to conserve relevance, got '
                     f'alpha={alpha}, beta={beta}')
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


def linear(apply: Callable, x, kernel, bias, rule: LinearRule, probe=None,
           static_rule: int | None = None, signed: bool = True):
  """``apply(x, kernel) + bias`` whose backward pass is the LRP ``rule``.

  Args:
    apply: the layer's bias-free linear map ``(x, kernel) -> y`` (a dense
      product or a convolution with the layer's strides and padding).
    x: the layer input.
    kernel: its weights.
    bias: its bias (broadcast over the output), zeros for none.
    rule: the rule and its hyperparameters.
    probe: optional zeros shaped like ``x``; its cotangent is the input
      relevance ``R_x`` itself, which the input-space rules (zbox, flat,
      wsquare) cannot express as ``x * cotangent``.
    static_rule: the rule id fixed at trace time, or None to choose it at run
      time from ``rule.rule`` (a ``lax.switch``: one program for every rule,
      at about twice the cost of the fixed rule on CPU).
    signed: False when ``x >= 0`` is known at trace time (after a ReLU): the
      rules that treat ``x+`` and ``x-`` apart then skip the ``x-`` products.

  Returns:
    The layer output, identical to the forward pass without a rule.
  """
  return _linear(apply, static_rule, signed)(
      x, kernel, bias, rule, jnp.zeros_like(x) if probe is None else probe)


def _linear(apply, static_rule, signed):

  @jax.custom_vjp
  def f(x, kernel, bias, rule, probe):
    del rule, probe
    return apply(x, kernel) + bias

  def fwd(x, kernel, bias, rule, probe):
    y = f(x, kernel, bias, rule, probe)
    return y, (x, kernel, bias, rule, y)

  def bwd(res, g):
    x, kernel, bias, rule, y = res
    relevance = y * g
    input_relevance, cotangent = _linear_backward(
        apply, x, kernel, bias, rule, y, relevance, static_rule, signed)
    zeros = jax.tree.map(jnp.zeros_like, (kernel, bias, rule))
    return (cotangent, *zeros, input_relevance)

  f.defvjp(fwd, bwd)
  return f


def _linear_backward(apply, x, kernel, bias, rule, y, relevance, static_rule,
                     signed):
  """(R_x, cotangent of x) of a Dense/Conv layer under ``rule``."""
  rule = jax.tree.map(
      lambda a: a.astype(x.dtype) if jnp.issubdtype(a.dtype, jnp.floating)
      else a, rule)

  def branch(fn):
    return lambda x, kernel, bias, rule, y, relevance: fn(
        _Layer(apply, x, y, signed), kernel, bias, rule, relevance)

  if static_rule is not None:
    return branch(definition(static_rule).backward)(x, kernel, bias, rule, y,
                                                   relevance)
  branches = [branch(d.backward) for d in _REGISTRY.values()]
  # Every operand is passed explicitly and every derived array is made inside
  # its branch, so only the chosen rule's work is done.
  return jax.lax.switch(rule.rule, branches, x, kernel, bias, rule, y,
                        relevance)


class _Layer:
  """The products a rule needs, for one layer input ``x``.

  Products with several kernels run as one product with the kernels stacked
  along the output axis (forward) or the cotangents stacked likewise
  (transpose): the same arithmetic in one larger, faster convolution.
  Requires a layer without feature groups (all of the project's models).
  """

  def __init__(self, apply, x, y, signed=True):
    self.apply, self.x, self.y, self.signed = apply, x, y, signed

  def fwd(self, a, *kernels):
    """``[W_k a for k]`` in one product."""
    out = self.apply(a, jnp.concatenate(kernels, axis=-1))
    return jnp.split(out, len(kernels), axis=-1)

  def back(self, kernels, cotangents, a=None):
    """``sum_k W_k^T s_k`` in one transposed product (at inputs shaped like
    ``a``, by default ``x``)."""
    stacked = jnp.concatenate(kernels, axis=-1)
    _, transpose = jax.vjp(lambda a: self.apply(a, stacked),
                           self.x if a is None else a)
    return transpose(jnp.concatenate(cotangents, axis=-1))[0]

  def _split_input(self):
    """``[x+, x-]`` along the input channels: one product applies a kernel
    pair ``[W_pos; W_neg]`` stacked likewise."""
    return jnp.concatenate([_pos(self.x), _neg(self.x)], axis=-1)

  def fwd_signed(self, *pairs):
    """``[W_pos x+ + W_neg x- for (W_pos, W_neg) in pairs]``."""
    if not self.signed:
      return self.fwd(self.x, *[p for p, _ in pairs])
    return self.fwd(self._split_input(),
                    *[jnp.concatenate(pair, axis=-2) for pair in pairs])

  def back_signed(self, pairs, cotangents):
    """Cotangent ``sum_k 1[x>0] W_pos_k^T s_k + 1[x<0] W_neg_k^T s_k``, so
    that ``R_x = sum_k x+ W_pos_k^T s_k + x- W_neg_k^T s_k``."""
    if not self.signed:  # x >= 0: the x- products vanish
      return self.back([p for p, _ in pairs], cotangents)
    pos, neg = jnp.split(
        self.back([jnp.concatenate(pair, axis=-2) for pair in pairs],
                  cotangents, self._split_input()), 2, axis=-1)
    return jnp.where(self.x > 0, pos, 0) + jnp.where(self.x < 0, neg, 0)

  def as_relevance(self, cotangent):
    return self.x * cotangent, cotangent

  def from_relevance(self, r):
    x = self.x
    return r, jnp.where(x == 0, 0, r / jnp.where(x == 0, 1, x))


def _keep(rule, dtype):
  return jnp.where(rule.zero_bias, 0, 1).astype(dtype)


@_register('epsilon', ('eps', 'zero_bias'), searchable=True)
def _epsilon(layer, kernel, bias, rule, relevance):
  x, y = layer.x, layer.y
  z = y - bias + _keep(rule, x.dtype) * bias
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


def _apply_to_module(call, rule: LinearRule, context):
  """Runs a flax ``Conv``, ``Dense`` or ``DenseGeneral`` call under ``rule``.

  A ``DenseGeneral`` is the dense product of its flattened input axes and
  output features, which is how the rule sees it."""
  module, x = call.module, call.args[0]
  kernel = call.params['kernel']
  bias = call.params.get('bias')
  probe = context.input_probe if call.args[0] is context.inputs else None
  if isinstance(module, nn.DenseGeneral):
    axes = sorted(a % x.ndim for a in
                  (module.axis if isinstance(module.axis, tuple)
                   else (module.axis,)))
    if module.batch_dims or axes != list(range(x.ndim - len(axes), x.ndim)):
      raise NotImplementedError(
          f'{call.path}: DenseGeneral over non-trailing axes {module.axis} or '
          f'with batch_dims {module.batch_dims} has no LRP rule here')
    lead, inner = x.shape[:x.ndim - len(axes)], math.prod(x.shape[len(
        x.shape) - len(axes):])
    features = kernel.shape[len(axes):]
    flat_bias = (jnp.zeros(math.prod(features), x.dtype) if bias is None
                 else bias.reshape(-1))
    y = linear(lambda a, k: jnp.dot(a, k, precision=module.precision),
               x.reshape(*lead, inner), kernel.reshape(inner, -1), flat_bias,
               rule, None if probe is None else probe.reshape(*lead, inner),
               context.fixed_rule, signed=context.signed)
    return y.reshape(*lead, *features)
  if getattr(module, 'batch_group_count', 1) != 1:
    raise NotImplementedError(
        f'{call.path}: a conv with batch_group_count '
        f'{module.batch_group_count} has no LRP rule here')
  bare = module.clone(parent=None, use_bias=False, name=None)
  groups = getattr(module, 'feature_group_count', 1)
  apply = (_layer_map(bare) if groups == 1 else
           _grouped_map(bare, x.shape[-1], kernel.shape[-1], groups))
  if bias is None:
    bias = jnp.zeros((kernel.shape[-1],), x.dtype)
  return linear(apply, x, kernel, bias, rule, probe, context.fixed_rule,
                signed=context.signed)


def _layer_map(bare):
  """The layer's bias-free map for any in/out width of the kernel."""
  def apply(a, k):
    return bare.clone(features=k.shape[-1]).apply({'params': {'kernel': k}},
                                                  a)
  return apply


def _grouped_map(bare, width, features, groups):
  """The bias-free map of a grouped conv (e.g. depthwise) for the rules'
  stacks: inputs stacked along the channels ([x+, x-], [x, low, high]) with
  kernels stacked along their input axis (summed), and kernels along the
  output axis (outputs stacked likewise). One conv over such stacks would
  mix the groups, so each pair is its own conv."""
  per_group = width // groups

  def apply(a, k):
    outputs = []
    for j in range(k.shape[-1] // features):
      kj = k[..., j * features:(j + 1) * features]
      total = 0
      for i in range(a.shape[-1] // width):
        total = total + bare.apply(
            {'params': {'kernel': kj[..., i * per_group:(i + 1) * per_group,
                                     :]}},
            a[..., i * width:(i + 1) * width])
      outputs.append(total)
    return jnp.concatenate(outputs, axis=-1)
  return apply
