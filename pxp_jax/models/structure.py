"""What a model computes, read off one abstract call: its operations in call
order, which BatchNorm follows which linear layer, and its units.

Every LRP rule, probe and pruning mask is attached by module path; this is
the map they use. It costs one ``jax.eval_shape`` of the model through a
recording tap (``pxp_jax.models.taps``), no FLOPs, and is computed at trace time, so
it never enters a compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from pxp_jax.models import taps
from pxp_jax.models.kinds import Kind

UNIT_TYPES = ('filters', 'neurons', 'heads')


@dataclasses.dataclass(frozen=True)
class Op:
  """One module the input flows through.

  Attributes:
    path: dotted module path, e.g. ``layer1.0.conv1``.
    kind: what it computes (``pxp_jax.models.kinds``), None for containers
      and modules of unknown classes.
    leaf: True if it calls no other module (an operation, not a container).
    takes_input: its first argument is the model input itself.
    follows: for a BatchNorm, the path of the linear layer whose output it
      normalises (None if its input comes from elsewhere).
    shape: the shape of its (first) output.
    epsilon: the module's ``epsilon`` attribute (norms), else None.
    type_name: the module's class name (for messages only).
  """

  path: str
  kind: Kind | None
  leaf: bool
  takes_input: bool
  follows: str | None
  shape: tuple[int, ...]
  epsilon: float | None = None
  type_name: str = ''

  @property
  def parent(self) -> str:
    return self.path.rpartition('.')[0]


@dataclasses.dataclass(frozen=True)
class Unit:
  """The units of one layer: conv filters, dense neurons or attention heads.

  Attributes:
    key: the layer's path (filters, neurons) or the attention's (heads).
    type: ``filters``, ``neurons`` or ``heads``; ``output`` for the output
      layer and ``projection`` for attention projections, which are read
      but never pruned.
    layer: the operation that makes the units (a conv, a dense layer, an
      attention softmax).
    site: the operation whose output a mask multiplies and a probe reads:
      the BatchNorm after a conv if there is one, else ``layer``.
    axis: the units' axis in the site's output (-1 channels, 1 heads).
    size: how many units.
    spans: how the other axes of the site's output are summed into a
      unit's relevance: ``space`` (conv maps and dense layers over maps,
      ConvNeXt's MLPs: summed), ``tokens`` (dense layers over tokens),
      ``queries`` (heads; keys are summed).
  """

  key: str
  type: str
  layer: str
  site: str
  axis: int
  size: int
  spans: str

  def broadcast(self, mask):
    """A (units,) mask shaped to multiply the site's output."""
    return mask[:, None, None] if self.axis == 1 else mask


@dataclasses.dataclass(frozen=True)
class Structure:
  """The operations of a model on inputs of a given shape, in call order."""

  ops: tuple[Op, ...]

  @functools.cached_property
  def leaves(self) -> tuple[Op, ...]:
    return tuple(op for op in self.ops if op.leaf)

  def of_kind(self, *kinds: Kind) -> tuple[Op, ...]:
    return tuple(op for op in self.leaves if op.kind in kinds)

  def op(self, path: str) -> Op:
    return self._by_path[path]

  @functools.cached_property
  def _by_path(self) -> dict[str, Op]:
    return {op.path: op for op in self.ops}

  @property
  def folds(self) -> Mapping[str, str]:
    """BatchNorm path -> the linear layer it folds into."""
    return {op.path: op.follows for op in self.of_kind(Kind.BATCH_NORM)
            if op.follows is not None}

  @property
  def first_linear(self) -> str | None:
    """The first conv or dense layer, if it reads the model input."""
    linear = self.of_kind(Kind.CONV, Kind.DENSE)
    return linear[0].path if linear and linear[0].takes_input else None

  @property
  def output_layer(self) -> str | None:
    """The last dense layer (the classifier)."""
    dense = self.of_kind(Kind.DENSE)
    return dense[-1].path if dense else None

  def shape_of(self, path: str) -> tuple[int, ...]:
    return self.op(path).shape

  @functools.cached_property
  def _units(self) -> dict[str, Unit]:
    attention = {op.parent for op in self.of_kind(Kind.SOFTMAX)
                 if len(op.shape) == 4}
    followed = {layer: bn for bn, layer in self.folds.items()}
    out = {}
    for op in self.leaves:
      if op.kind is Kind.CONV:
        unit_type, spans = 'filters', 'space'
      elif op.kind is Kind.DENSE:
        # over a map (NHWC, a 1x1 conv's work) its positions are space
        spans = 'space' if len(op.shape) == 4 else 'tokens'
        unit_type = ('projection' if op.parent in attention else
                     'output' if op.path == self.output_layer else 'neurons')
      elif op.kind is Kind.SOFTMAX and op.parent in attention:
        out[op.parent] = Unit(op.parent, 'heads', op.path, op.path, 1,
                              op.shape[1], 'queries')
        continue
      else:
        continue
      site = followed.get(op.path, op.path)
      out[op.path] = Unit(op.path, unit_type, op.path, site, -1,
                          op.shape[-1], spans)
    return out

  def units(self, unit_type: str | None = None) -> dict[str, Unit]:
    """Units by key: every conv and dense layer and every attention's heads,
    or only those of ``unit_type`` (``UNIT_TYPES``):

    - filters: every conv (downsample convs and a ViT's patch embedding
      included);
    - neurons: dense layers except the output layer and the attention
      projections (a ViT's MLP layers, a VGG's hidden classifier layers);
    - heads: every attention's heads.
    """
    if unit_type is None:
      return dict(self._units)
    if unit_type not in UNIT_TYPES:
      raise ValueError(f'unknown unit type {unit_type!r}; use one of '
                       f'{UNIT_TYPES}')
    chosen = {k: u for k, u in self._units.items() if u.type == unit_type}
    if not chosen:
      raise ValueError(
          f'this model has no {unit_type} to prune; it has '
          f'{sorted({u.type for u in self._units.values()})}')
    return chosen

  def sites(self, keys) -> dict[str, str]:
    """Site path -> unit key, for the units ``keys``."""
    units = self._units
    unknown = set(keys) - set(units)
    if unknown:
      raise KeyError(f'no unit(s) {sorted(unknown)} in this model; units: '
                     f'{", ".join(units)}')
    return {units[k].site: k for k in keys}


def trace(model: nn.Module, variables, input_shape, dtype=jnp.float32
          ) -> Structure:
  """The ``Structure`` of ``model`` on inputs of ``input_shape``."""
  ops: dict[str, dict] = {}
  stack: list[str] = []
  # id(output) -> (linear layer path, output); the output is kept so that its
  # id is not reused by another array during the trace.
  producers: dict[int, tuple[str, object]] = {}
  model_input = []

  def record(call: taps.Call, proceed):
    path = call.path
    if stack:
      ops[stack[-1]]['leaf'] = False
    first_call = path not in ops
    if first_call:
      follows = None
      if call.kind is Kind.BATCH_NORM and call.args:
        follows = producers.get(id(call.args[0]), (None,))[0]
      module = call.module
      ops[path] = dict(
          path=path, kind=call.kind, leaf=True, follows=follows,
          takes_input=bool(call.args) and call.args[0] is model_input[0],
          epsilon=getattr(module, 'epsilon', None),
          type_name=type(module).__name__ if module is not None
          else call.kind.value)
    stack.append(path)
    try:
      out = proceed()
    finally:
      stack.pop()
    if first_call:
      ops[path]['shape'] = tuple(getattr(out, 'shape', ()))
    if call.kind in (Kind.CONV, Kind.DENSE):
      producers[id(out)] = (path, out)
    return out

  def run(variables, x):
    model_input.append(x)
    return taps.apply(model, variables, x, taps=[record])

  jax.eval_shape(run, variables, jax.ShapeDtypeStruct(tuple(input_shape),
                                                      dtype))
  ops.pop('', None)  # the model itself
  return Structure(tuple(Op(**o) for o in ops.values()))


def trace_model(model: nn.Module, size: int | None = None) -> Structure:
  """The ``Structure`` of ``model`` on one ``size`` x ``size`` RGB image
  (default: the model's ``image_size``, else 32, which suits models that
  take any size), from abstract variables."""
  size = size or getattr(model, 'image_size', 32)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return trace(model, variables, x.shape)
