"""What a model computes, read off one abstract call: its operations in call
order, which BatchNorm follows which linear layer, and where the units are.

Every LRP rule and pruning mask is attached by module path; this is the map
they use. It costs one ``jax.eval_shape`` of the model (no FLOPs) and is
computed at trace time, so it never enters a compiled program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Op:
  """One module the input flows through.

  Attributes:
    path: dotted module path, e.g. ``layer1.0.conv1``.
    kind: its class name (``Conv``, ``Dense``, ``BatchNorm``, ``Sum``, ...).
    leaf: True if it calls no other module (an operation, not a container).
    takes_input: its first argument is the model input itself.
    follows: for a BatchNorm, the path of the linear layer whose output it
      normalises (None if its input comes from elsewhere).
    shape: the shape of its (first) output.
    epsilon: the module's ``epsilon`` attribute (norms), else None.
  """

  path: str
  kind: str
  leaf: bool
  takes_input: bool
  follows: str | None
  shape: tuple[int, ...]
  epsilon: float | None = None


@dataclasses.dataclass(frozen=True)
class Structure:
  """The operations of a model on inputs of a given shape, in call order."""

  ops: tuple[Op, ...]

  @property
  def leaves(self) -> tuple[Op, ...]:
    return tuple(op for op in self.ops if op.leaf)

  def of_kind(self, *kinds: str) -> tuple[Op, ...]:
    return tuple(op for op in self.leaves if op.kind in kinds)

  @property
  def folds(self) -> Mapping[str, str]:
    """BatchNorm path -> the linear layer it folds into."""
    return {op.path: op.follows for op in self.of_kind('BatchNorm')
            if op.follows is not None}

  @property
  def first_linear(self) -> str | None:
    """The first conv or dense layer, if it reads the model input."""
    linear = self.of_kind('Conv', 'Dense')
    return linear[0].path if linear and linear[0].takes_input else None

  def mask_sites(self, keys) -> dict[str, str]:
    """Module path -> unit key, for the module whose output a unit's mask
    multiplies: a conv's BatchNorm if one follows it, else the unit's own
    operation (a conv, a dense layer, an attention softmax)."""
    units = self.units()
    followed = {layer: bn for bn, layer in self.folds.items()}
    return {followed.get(units[k].path, units[k].path): k for k in keys}

  def shape_of(self, path: str) -> tuple[int, ...]:
    return next(op.shape for op in self.ops if op.path == path)

  def units(self) -> dict[str, Op]:
    """Prunable units by key: conv filters and dense neurons (key: the
    layer's path) and attention heads (key: the attention module's path,
    measured at its softmax)."""
    out = {}
    for op in self.leaves:
      if op.kind in ('Conv', 'Dense'):
        out[op.path] = op
      elif op.kind == 'Softmax' and len(op.shape) == 4:
        out[op.path.rpartition('.')[0]] = op
    return out


def trace(model: nn.Module, variables, input_shape, dtype=jnp.float32
          ) -> Structure:
  """The ``Structure`` of ``model`` on inputs of ``input_shape``."""
  ops: dict[str, dict] = {}
  stack: list[str] = []
  # id(output) -> (linear layer path, output); the output is kept so that its
  # id is not reused by another array during the trace.
  producers: dict[int, tuple[str, object]] = {}

  def record(f, args, kwargs, context):
    if context.method_name != '__call__':
      return f(*args, **kwargs)
    path = '.'.join(context.module.path)
    kind = type(context.module).__name__
    if stack and stack[-1] != path:  # not a method calling its own super()
      ops[stack[-1]]['leaf'] = False
    first_call = path not in ops
    if first_call:
      follows = None
      if kind == 'BatchNorm' and args:
        follows = producers.get(id(args[0]), (None,))[0]
      ops[path] = dict(path=path, kind=kind, leaf=True, follows=follows,
                       takes_input=bool(args) and args[0] is model_input[0],
                       epsilon=getattr(context.module, 'epsilon', None))
    stack.append(path)
    try:
      out = f(*args, **kwargs)
    finally:
      stack.pop()
    if first_call:
      ops[path]['shape'] = tuple(getattr(out, 'shape', ()))
    if kind in ('Conv', 'Dense'):
      producers[id(out)] = (path, out)
    return out

  model_input = []

  def run(variables, x):
    model_input.append(x)
    with nn.intercept_methods(record):
      return model.apply(variables, x)

  jax.eval_shape(run, variables, jax.ShapeDtypeStruct(tuple(input_shape),
                                                      dtype))
  ops.pop('', None)  # the model itself
  return Structure(tuple(Op(**o) for o in ops.values()))
