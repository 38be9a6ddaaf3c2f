"""LRP rules of the parameter-free operations, each registered once.

Every rule is a small pytree whose hyperparameters are array leaves, with
``apply(call, proceed, context)`` computing the operation's output with the
rule as its backward pass (gradient x input convention, see
``pxp_jax.lrp.linear_rules``). ``REGISTRY`` names them for JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax.lrp.linear_rules import number, stabilize

REGISTRY: dict[str, type] = {}


def _register(name: str):
  def register(cls):
    cls.rule_name = name
    REGISTRY[name] = cls
    return cls
  return register


class _OpRule:
  """What every parameter-free rule shares: JSON form, array leaves and the
  ranges of the hyperparameters (``RANGES``: name -> (low, high), checked
  on construction for the values a user writes, and by ``check`` for any
  concrete value when a composite takes the rule)."""

  rule_name = ''
  RANGES = {'eps': (0.0, np.inf)}

  def __post_init__(self):
    # Also runs when JAX rebuilds the pytree (tracers, device arrays or
    # placeholders as fields): only the values a user writes are checked
    # here, without a device transfer.
    self.check(lambda v: isinstance(v, (int, float, str, bytes, np.ndarray,
                                        np.generic)))

  def check(self, checked=lambda v: True):
    """A ValueError naming a hyperparameter that is not a finite number in
    its range (traced values are not checked)."""
    where = type(self).__name__
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not checked(value):
        continue
      low, high = self.RANGES.get(field.name, (-np.inf, np.inf))
      if isinstance(value, (bool, np.bool_)) and (low, high) == (0, 1):
        continue  # virtual_bias=True
      array = number(value, field.name, where)
      if array is not None and array.ndim:
        raise ValueError(f'{where}: {field.name} must be one number, got '
                         f'shape {array.shape}')
      if array is not None and np.any((array < low) | (array > high)):
        bound = (f'>= {low:g}' if high == np.inf
                 else f'in [{low:g}, {high:g}]')
        raise ValueError(f'{where}: {field.name} must be {bound}, got '
                         f'{value!r}')

  def to_json(self) -> dict:
    return {'rule': self.rule_name, **{
        f.name: np.asarray(jax.device_get(getattr(self, f.name))).tolist()
        for f in dataclasses.fields(self)}}

  def as_arrays(self):
    """Hyperparameters as float arrays, so they are traced, not static."""
    fields = {f.name: jnp.asarray(getattr(self, f.name),
                                  jnp.result_type(float))
              for f in dataclasses.fields(self)}
    return self.replace(**fields) if fields else self


@_register('gradient')
@flax.struct.dataclass
class Gradient(_OpRule):
  """The plain gradient: right as it is for ReLU and max-pooling (winner
  takes all), reshapes and softmax (AttnLRP Prop. 3.1) in gradient x input
  form."""

  def apply(self, call, proceed, context):
    del call, context
    return proceed()


@_register('fold')
@flax.struct.dataclass
class Fold(_OpRule):
  """A BatchNorm folded into the preceding conv or dense layer by the
  composite's ``MergeBatchNorm`` canoniser: the identity, so the layer before
  passes relevance through it unchanged."""

  def apply(self, call, proceed, context):
    del proceed, context
    return call.args[0]


@_register('norm')
@flax.struct.dataclass
class Norm(_OpRule):
  """Epsilon without parameters, for sums and average pooling (zennit's
  Norm): ``R_i = x_i * J_i^T [R / stab(op(x))]``."""
  eps: Any = 1e-6

  def apply(self, call, proceed, context):
    del proceed, context
    return norm(call.pure(), tuple(call.args), self.eps)


@_register('identity')
@flax.struct.dataclass
class Identity(_OpRule):
  """``R_x = R_y`` for elementwise activations (GELU; AttnLRP Prop. 3.2)."""
  eps: Any = 1e-6

  def apply(self, call, proceed, context):
    del proceed, context
    return identity(call.pure(), call.args[0], self.eps)


@_register('layer_norm_identity')
@flax.struct.dataclass
class LayerNormIdentity(_OpRule):
  """LayerNorm with ``1/std`` held constant and Epsilon on the rest
  (AttnLRP Prop. 3.4)."""
  eps: Any = 1e-6

  def apply(self, call, proceed, context):
    del proceed, context
    module = call.module
    if module.reduction_axes not in (-1, (-1,)) or module.feature_axes not in (
        -1, (-1,)):
      raise NotImplementedError(
          f'{call.path}: LayerNorm over axes {module.reduction_axes} (features '
          f'{module.feature_axes}) has no LRP rule here; only the last axis')
    return layer_norm(call.args[0], call.params.get('scale'),
                      call.params.get('bias'), epsilon=module.epsilon,
                      eps=self.eps)


@_register('half_matmul')
@flax.struct.dataclass
class HalfMatMul(_OpRule):
  """AttnLRP's uniform rule for a product of two activations (Prop. 3.3)."""
  eps: Any = 1e-6

  def apply(self, call, proceed, context):
    del proceed, context
    return matmul_half(call.args[0], call.args[1], self.eps)


@_register('stop_relevance')
@flax.struct.dataclass
class StopRelevance(_OpRule):
  """No relevance to the inputs (CP-LRP: nothing flows through Q K^T)."""

  def apply(self, call, proceed, context):
    del proceed, context
    return call.pure()(*[jax.lax.stop_gradient(a) for a in call.args])


@_register('softmax_zplus')
@flax.struct.dataclass
class SoftmaxZPlus(_OpRule):
  """The z+ rule on the softmax's first-order expansion around 0, with or
  without the virtual bias (``virtual_bias`` 1 or 0): the PXP reference's
  ``ZPlus_vbias_T`` / ``ZPlus_vbias_F`` attention options (Hatefi et al.,
  2024). See ``softmax_zplus``."""
  virtual_bias: Any = 1.0
  eps: Any = 1e-6
  RANGES = {'virtual_bias': (0.0, 1.0), 'eps': (0.0, np.inf)}

  def apply(self, call, proceed, context):
    del proceed, context
    return softmax_zplus(call.args[0], self.virtual_bias, self.eps,
                         fn=call.pure())


def norm(op: Callable, xs: tuple, eps):
  """``op(*xs)`` for a linear ``op`` (residual sum, average pooling) with the
  Norm rule: ``R_i = x_i * J_i^T [R / stab(op(x))]`` (zennit's Norm: Epsilon
  without parameters)."""

  @jax.custom_vjp
  def f(xs, eps):
    return op(*xs)

  def fwd(xs, eps):
    y = op(*xs)
    return y, (xs, eps, y)

  def bwd(res, g):
    xs, eps, y = res
    s = y * g / stabilize(y, eps.astype(y.dtype))
    _, vjp = jax.vjp(op, *xs)
    return vjp(s), jnp.zeros_like(eps)

  f.defvjp(fwd, bwd)
  return f(tuple(xs), jnp.asarray(eps))


def _wide(dtype):
  """The dtype a rule's ratios are computed in: float32 for bfloat16 and
  float16 passes (their rounding of ``fn(x) / x`` near 0 is coarse),
  else ``dtype``."""
  return jnp.promote_types(dtype, jnp.float32)


def identity(fn: Callable, x, eps):
  """``fn(x)`` for an elementwise ``fn`` (GELU, SiLU) with the identity rule
  ``R_x = R_y`` (AttnLRP, Prop. 3.2): the cotangent is ``g * fn(x) / stab(x)``,
  computed in float32 or wider."""

  @jax.custom_vjp
  def f(x, eps):
    return fn(x)

  def fwd(x, eps):
    y = fn(x)
    return y, (x, eps, y)

  def bwd(res, g):
    x, eps, y = res
    wide = _wide(x.dtype)
    cotangent = (g.astype(wide) * y.astype(wide)
                 / stabilize(x.astype(wide), eps.astype(wide)))
    return cotangent.astype(x.dtype), jnp.zeros_like(eps)

  f.defvjp(fwd, bwd)
  return f(x, jnp.asarray(eps))


def layer_norm(x, scale, bias, *, epsilon: float, eps):
  """LayerNorm over the last axis with AttnLRP's rule: the identity rule on
  the division by the standard deviation (Prop. 3.4) and Epsilon on the rest,
  i.e. Epsilon on the layer with ``1/std`` held constant (as LXT does).
  Computed in float32 or wider, forward and backward, and returned in
  ``x``'s dtype (flax's LayerNorm likewise normalises a bfloat16 input in
  float32: the centring cancels). Every array the rule reads is an argument
  of its VJP, none closed over, so that it also runs inside ``jax.checkpoint``
  (rematerialised blocks)."""
  wide = _wide(x.dtype)
  width = x.shape[-1]
  scale = jnp.ones(width, wide) if scale is None else scale.astype(wide)
  bias = jnp.zeros(width, wide) if bias is None else bias.astype(wide)

  def affine(a, inv, scale, bias):
    return (a - jnp.mean(a, axis=-1, keepdims=True)) * inv * scale + bias

  def inverse_std(a):
    centred = a - jnp.mean(a, axis=-1, keepdims=True)
    return jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1,
                                  keepdims=True) + epsilon)

  def forward(x, scale, bias):
    xw = x.astype(wide)
    return affine(xw, inverse_std(xw), scale, bias)

  @jax.custom_vjp
  def f(x, scale, bias, eps):
    return forward(x, scale, bias).astype(x.dtype)

  def fwd(x, scale, bias, eps):
    y = forward(x, scale, bias)
    return y.astype(x.dtype), (x, scale, bias, eps, y)

  def bwd(res, g):
    x, scale, bias, eps, y = res
    xw = x.astype(wide)
    inv = inverse_std(xw)  # held constant: the identity rule
    _, vjp = jax.vjp(lambda a: affine(a, inv, scale, bias), xw)
    s = y * g.astype(wide) / stabilize(y, eps.astype(wide))
    return (vjp(s)[0].astype(x.dtype), jnp.zeros_like(scale),
            jnp.zeros_like(bias), jnp.zeros_like(eps))

  f.defvjp(fwd, bwd)
  return f(x, scale, bias, jnp.asarray(eps))


def matmul_half(a, b, eps):
  """``a @ b`` of two activations with AttnLRP's uniform rule (Prop. 3.3):
  ``R_a = a * ([R / stab(2 y)] b^T)``, ``R_b = b * (a^T [R / stab(2 y)])``,
  half of the relevance to each factor."""

  @jax.custom_vjp
  def f(a, b, eps):
    return jnp.matmul(a, b)

  def fwd(a, b, eps):
    y = jnp.matmul(a, b)
    return y, (a, b, eps, y)

  def bwd(res, g):
    a, b, eps, y = res
    s = y * g / stabilize(2 * y, eps.astype(y.dtype))
    return (jnp.matmul(s, jnp.swapaxes(b, -1, -2)),
            jnp.matmul(jnp.swapaxes(a, -1, -2), s), jnp.zeros_like(eps))

  f.defvjp(fwd, bwd)
  return f(a, b, jnp.asarray(eps))


def _leave_one_out(v):
  """``sum_{i != j} v_i`` for every j along the last axis, from an exclusive
  prefix and an exclusive suffix sum: no ``sum - v_j``, which loses the
  small remainder when one term dominates."""
  zero = jnp.zeros_like(v[..., :1])
  before = jnp.concatenate([zero, jnp.cumsum(v, -1)[..., :-1]], -1)
  after = jnp.concatenate(
      [jax.lax.cumsum(v, v.ndim - 1, reverse=True)[..., 1:], zero], -1)
  return before + after


def softmax_zplus(x, virtual_bias, eps, *, fn: Callable | None = None):
  """``softmax(x)`` over the last axis with the z+ rule on its first-order
  expansion around the reference point 0, as the PXP reference code does
  (Hatefi et al., 2024, ``IRefXGSoftmaxRuleVMAP``; the z+ rule of Montavon
  et al. applied to the softmax's linearisation).

  Per row ``S = softmax(x)`` with Jacobian ``J_ij = S_i (delta_ij - S_j)``,
  the contributions are ``Z_ij = x_i J_ij`` and

    den_j = sum_i max(Z_ij, 0) + virtual_bias * max(b_j, 0),
    b_j = S_j - sum_i Z_ij = S_j (1 - x_j + sum_i x_i S_i)  (what the
      linearisation misses, kept as a bias),
    R_i = sum_j max(Z_ij, 0) R_j / stab(den_j).

  In closed form, without the (K, K) Jacobian: with ``n_i = S_i max(-x_i, 0)``
  (off the diagonal ``max(Z_ij, 0) = n_i S_j``) and ``p_i = S_i (1 - S_i)
  max(x_i, 0)`` (the diagonal), ``den_j = S_j sum_{i != j} n_i + p_j
  (+ bias)`` and ``R_i = n_i sum_{j != i} S_j c_j + p_i c_i``, ``c_j = R_j /
  stab(den_j)``. In the gradient x input convention ``R_j = S_j g_j`` and the
  cotangent at ``x`` is ``R_i / x_i = -S_i [x_i < 0] sum_{j != i} S_j c_j +
  S_i (1 - S_i) [x_i > 0] c_i`` (no division by ``x``).

  Args:
    x: scores, softmax over the last axis.
    virtual_bias: 1 to keep the remainder ``b`` as a bias in the
      denominator, 0 to drop it (array leaf: both share one program).
    eps: the stabiliser of the denominator.
    fn: the forward computation (default ``jax.nn.softmax(x, axis=-1)``),
      e.g. the model's own softmax op; it must be the softmax over the last
      axis.
  """
  if fn is None:
    fn = lambda v: jax.nn.softmax(v, axis=-1)  # noqa: E731

  @jax.custom_vjp
  def f(x, virtual_bias, eps):
    return fn(x)

  def fwd(x, virtual_bias, eps):
    s = fn(x)
    return s, (x, s, virtual_bias, eps)

  def bwd(res, g):
    x_in, s_out, virtual_bias, eps = res
    dtype = jnp.promote_types(x_in.dtype, jnp.float32)
    s = s_out.astype(dtype)
    # Keys of weight 0 (masked scores, even -inf) contribute nothing.
    x = jnp.where(s > 0, x_in.astype(dtype), 0)
    r = s * g.astype(dtype)
    diagonal = s * (1 - s)
    n = s * jnp.maximum(-x, 0)
    den = s * _leave_one_out(n) + diagonal * jnp.maximum(x, 0)
    b = s * (1 - x + jnp.sum(x * s, -1, keepdims=True))
    den = den + virtual_bias.astype(dtype) * jnp.maximum(b, 0)
    c = r / stabilize(den, eps.astype(dtype))
    others = _leave_one_out(s * c)
    cotangent = (jnp.where(x < 0, -s * others, 0)
                 + jnp.where(x > 0, diagonal * c, 0))
    return (cotangent.astype(x_in.dtype), jnp.zeros_like(virtual_bias),
            jnp.zeros_like(eps))

  f.defvjp(fwd, bwd)
  leaf = lambda v: jnp.asarray(v, jnp.result_type(float))  # noqa: E731
  return f(x, leaf(virtual_bias), leaf(eps))
