"""One way into a model's computation: taps on its operations.

``apply(model, variables, x, taps=[...])`` runs the model unchanged except
that every module call is handed to the taps as a ``Call`` (its path, its
kind, the module, its arguments). A tap is a function ``tap(call, proceed)``
that returns the call's output: ``proceed()`` computes it by the taps after
it (the last one: the module itself), and a tap may use it, change it or
compute the output another way. Every interception in pxp_jax is a tap:
reading the structure, LRP rules and unit probes, pruning masks, the
criteria's activations.

Attention modules of flax (``nn.MultiHeadDotProductAttention`` and
``nn.SelfAttention``) compute their scores, softmax and weighted values in a
plain function (``attention_fn``); their calls are opened up into three
operations of their own, ``<path>.qk`` (Q K^T), ``<path>.softmax`` and
``<path>.av`` (A V), in the layout of ``pxp_jax.models.vit``: heads before
tokens, ``(batch, heads, queries, keys)`` weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pxp_jax.models.kinds import Kind, is_transparent, kind_of


@dataclasses.dataclass(frozen=True)
class Call:
  """One operation call.

  Attributes:
    path: dotted module path (``layer1.0.conv1``; ``enc.attn.softmax`` for
      the parts of an opened flax attention).
    kind: what it computes, or None for containers and unknown modules.
    module: the bound flax module; None for the parts of an opened attention.
    args, kwargs: its arguments.
    function: for parameter-free operations, the operation as a pure
      function of ``args`` (None: built from the module on demand).
  """

  path: str
  kind: Kind | None
  module: nn.Module | None
  args: tuple
  kwargs: dict
  function: Callable | None = None

  def pure(self) -> Callable:
    """The operation as a pure function of its positional arguments (for
    operations without parameters)."""
    if self.function is not None:
      return self.function
    bare = self.module.clone(parent=None, name=None)
    return lambda *a: bare.apply({}, *a, **self.kwargs)

  @property
  def params(self) -> dict:
    return self.module.variables.get('params', {})


Tap = Callable[[Call, Callable[[], Any]], Any]


def apply(model: nn.Module, variables, *args, taps: Sequence[Tap],
          **kwargs):
  """``model.apply(variables, *args, **kwargs)`` with every operation call
  passed through ``taps`` (the first is the outermost)."""
  taps = tuple(taps)

  def dispatch(call: Call, compute: Callable[[], Any]):
    def step(i):
      if i == len(taps):
        return compute()
      return taps[i](call, lambda: step(i + 1))
    return step(0)

  active: list[nn.Module] = []

  def intercept(f, f_args, f_kwargs, context):
    module = context.module
    # Other methods, and a module's __call__ calling its superclass's, are
    # part of the call already handed to the taps; dropout is the identity.
    if (context.method_name != '__call__' or (active and active[-1] is module)
        or is_transparent(module)):
      return f(*f_args, **f_kwargs)
    call = Call('.'.join(module.path), kind_of(module), module, f_args,
                f_kwargs)
    if call.kind is Kind.ATTENTION:
      compute = lambda: _opened_attention(call, f, dispatch)  # noqa: E731
    else:
      compute = lambda: f(*f_args, **f_kwargs)  # noqa: E731
    active.append(module)
    try:
      return dispatch(call, compute)
    finally:
      active.pop()

  with nn.intercept_methods(intercept):
    return model.apply(variables, *args, **kwargs)


def scale(factors: Mapping[str, Any]) -> Tap:
  """A tap multiplying the output of each operation ``path`` in
  ``factors`` by ``factors[path]`` (pruning masks, relevance probes)."""

  def tap(call, proceed):
    out = proceed()
    factor = factors.get(call.path)
    return out if factor is None else out * factor
  return tap


def _opened_attention(call: Call, f, dispatch):
  """Runs a flax attention module with its ``attention_fn`` replaced by
  ``_attention`` for the duration of the call: Q K^T, the softmax and A V
  become operations that the taps see."""
  module = call.module
  original = module.attention_fn
  if original is not nn.dot_product_attention:
    raise NotImplementedError(
        f'{call.path}: a custom attention_fn ({original!r}) cannot be opened '
        'up for LRP; use the default nn.dot_product_attention')

  def attention_fn(query, key, value, mask=None, dropout_rate=0.0,
                   deterministic=True, precision=None,
                   force_fp32_for_softmax=False, qk_attn_weights_einsum=None,
                   attn_weights_value_einsum=None, module=None, **unused):
    # flax passes only the keyword arguments named here (and ``module`` when
    # the weights are sown).
    del unused
    if dropout_rate > 0 and not deterministic:
      raise NotImplementedError(f'{call.path}: attention dropout at '
                                'evaluation; pass deterministic=True')
    if qk_attn_weights_einsum or attn_weights_value_einsum:
      raise NotImplementedError(
          f'{call.path}: custom attention einsums (qk_attn_weights_einsum_cls,'
          ' attn_weights_value_einsum_cls) cannot be opened up for LRP')
    # (B, T, H, D) -> (B, H, T, D)
    q, k, v = (jnp.swapaxes(a, -2, -3) for a in (query, key, value))
    q = q / jnp.sqrt(q.shape[-1]).astype(q.dtype)  # as flax scales
    kt = jnp.swapaxes(k, -1, -2)
    matmul = functools.partial(jnp.matmul, precision=precision)
    part = lambda name, kind, fn, *a: dispatch(  # noqa: E731
        Call(f'{call.path}.{name}', kind, None, a, {}, fn), lambda: fn(*a))
    scores = part('qk', Kind.QUERY_KEY, matmul, q, kt)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)

    def softmax(s):
      if force_fp32_for_softmax and s.dtype != jnp.float32:
        return jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(s.dtype)
      return jax.nn.softmax(s, axis=-1)
    weights = part('softmax', Kind.SOFTMAX, softmax, scores)
    if module is not None:  # sow_weights=True: as flax sows them
      module.sow('intermediates', 'attention_weights', weights)
    out = part('av', Kind.ATTENTION_VALUE, matmul, weights, v)
    return jnp.swapaxes(out, -2, -3)  # back to (B, T, H, D)

  # The module is frozen; the swap lasts for this call only.
  object.__setattr__(module, 'attention_fn', attention_fn)
  try:
    return f(*call.args, **call.kwargs)
  finally:
    object.__setattr__(module, 'attention_fn', original)
