"""A Dense / Conv layer run under a linear LRP rule: the custom VJP.

``linear`` computes the layer's output and, in its backward pass, the
cotangent the rule sends to the input (``R_x = x * cotangent``), with the
rule fixed at trace time or switched at run time over every registered rule
(``linear_rules``). ``apply_to_module`` runs a flax ``Conv``, ``Dense`` or
``DenseGeneral`` call that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from pxp_jax.lrp.linear_rules import LinearRule, definition, definitions


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
  branches = [branch(d.backward) for d in definitions()]
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
    return jnp.concatenate([jnp.maximum(self.x, 0), jnp.minimum(self.x, 0)], axis=-1)

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


def apply_to_module(call, rule: LinearRule, context):
  """Runs a flax ``Conv``, ``Dense`` or ``DenseGeneral`` call under ``rule``.

  A ``DenseGeneral`` is the dense product of its flattened input axes and
  output features, which is how the rule sees it."""
  module, x = call.module, call.args[0]
  kernel = call.params['kernel']
  bias = call.params.get('bias')
  probe = context.input_probe if context.takes_input(call) else None
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
