"""From masks to a smaller network: pruned units removed physically.

``masked_apply`` (``pxp_jax.prune.sweep``) multiplies pruned units' outputs
by 0 and keeps the model's size. ``slim`` returns a narrower model of the
same family whose logits are the masked model's: a pruned conv filter loses
its kernel column and BatchNorm entries and the next layer loses the input
channel (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, the
structured pruning PXP's papers measure); a pruned dense neuron loses its
column and the next layer's row; a pruned head loses its query, key and
value columns and its rows of the output projection.

A unit whose output other layers add to cannot always go: a ResNet's
residual stream is written by a stage's stem or projection shortcut and by
every block's last conv, so one of its channels goes only when every writer
of it is pruned (the channel is then 0 all along the stream); else the
pruned writers keep the channel with a zero BatchNorm scale and shift, which
outputs exactly the masked model's 0. A ViT's token width is read by
LayerNorms, which mix every channel, so units writing it (the MLP's second
layer, the patch embedding, the attention projections) stay, zeroed.
``Slimmed`` says how many units of each layer went and how many stayed and
why.

How a family's units go is its spec's ``slim`` function (``pxp_jax.models.
spec``), beside its model, given an ``Edit``: the planned changes, whose
unit-level operations read the spec's one table of which parameters each
unit owns (``Spec.unit_params``). A plain flax model is slimmed when its
convs and dense layers form a chain (``Narrowed``); other plain models are a
NotImplementedError naming the layer.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import types
from collections.abc import Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax.models import spec as spec_lib, structure
from pxp_jax.models.kinds import Kind


@dataclasses.dataclass(frozen=True)
class Slimmed:
  """A slimmed model.

  Attributes:
    model: the narrower module, of the input model's family.
    variables: its variables.
    removed: unit key -> pruned units removed physically.
    kept_masked: unit key -> pruned units kept in the model with zero
      weights (their output is the masked model's 0).
    reasons: unit key -> why its ``kept_masked`` units could not go.
  """

  model: nn.Module
  variables: dict
  removed: dict[str, int]
  kept_masked: dict[str, int]
  reasons: dict[str, str]


def slim(model: nn.Module, variables, masks: Mapping,
         input_shape=None) -> Slimmed:
  """A narrower network computing ``masked_apply(model, variables, x,
  masks)``.

  Args:
    model, variables: a model of a family whose spec can slim it
      (``pxp_jax.models``' ResNet, VGG, ViT, ConvNeXt), or a
      plain flax model whose convs and dense layers form a chain (each read
      by the next alone, through activations, BatchNorm, pooling or a
      flatten; slimmed as ``Narrowed``, checked against the masked model
      on a random input, else NotImplementedError). BatchNorm statistics
      are used as at evaluation.
    masks: unit key -> (units,) 0/1 mask, 0 = pruned: one rate's row of
      ``prune.ranking.masks`` (``{k: m[i] for k, m in masks.items()}``).
    input_shape: the shape the model is traced at (default: one image of
      the model's ``image_size``, else 32 x 32 x 3).

  Returns:
    ``Slimmed``: ``.model.apply(.variables, x)`` equals the masked model's
    logits up to float32 rounding.

  Example::

    rows = prune.ranking.masks(scores, [0.3, 0.5])
    small = pxp_jax.prune.slim(model, variables, {k: m[0] for k, m in rows.items()})
    logits = small.model.apply(small.variables, images)
  """
  size = getattr(model, 'image_size', 32)
  input_shape = tuple(input_shape or (1, size, size, 3))
  found = structure.trace(model, variables, input_shape)
  pruned = _pruned(masks, found.units())
  flat = {c: dict(flax.traverse_util.flatten_dict(
      flax.core.unfreeze(v), sep='.')) for c, v in variables.items()}
  spec = spec_lib.spec_for(model)
  family = spec.slim or _chain
  edit = Edit(flat, found, pruned, spec)
  new_model = family(model, edit)
  for key in pruned:  # units the family does not remove: zeroed in place
    if key not in edit.handled:
      edit.zero_outputs(key, edit.mask(key), LOGITS
                        if edit.units[key].type == 'output'
                        else 'not removable in this family')
  out = {c: flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v) for k, v in edit.apply(c).items()}, sep='.')
         for c in flat}
  removed = {k: n for k, n in edit.removed.items() if n}
  if family is _chain:
    _check_chain(model, variables, masks, new_model, out, found, input_shape)
  return Slimmed(new_model, out, removed, dict(edit.kept),
                 {k: edit.reasons[k] for k in edit.kept})


def _pruned(masks: Mapping, units: Mapping[str, structure.Unit]
            ) -> dict[str, np.ndarray]:
  """unit key -> bool (units,) pruned, checked against the model."""
  unknown = sorted(set(masks) - set(units))
  if unknown:
    raise KeyError(f'masks name no unit(s) {unknown} of this model; its '
                   f'units: {", ".join(units)}')
  out = {}
  for key, mask in masks.items():
    mask = np.asarray(mask)
    if mask.shape != (units[key].size,):
      raise ValueError(
          f'mask {key!r} has shape {mask.shape}, the layer has '
          f'{units[key].size} units; pass one rate\'s row of '
          'ranking.masks: {k: m[i] for k, m in masks.items()}')
    if not np.all((mask == 0) | (mask == 1)):
      raise ValueError(f'mask {key!r} is not 0/1 ({np.unique(mask)[:5]}); '
                       'slim removes units, it does not rescale them')
    out[key] = mask == 0
  return out


class Edit:
  """Planned changes to flat variables: channels zeroed (on the full
  arrays), then channels kept along an axis of each array. A family's slim
  function (``Spec.slim``) plans with it; ``outputs``, ``remove``,
  ``zero_outputs`` and ``narrow`` act on a unit's parameters as its spec's
  ``unit_params`` lists them, ``keep`` and ``inputs`` on arrays by path.

  Attributes:
    found: the model's structure; units: its units by key.
    pruned: unit key -> bool (units,), True where pruned.
    removed, kept, reasons: what ``Slimmed`` reports.
    handled: unit keys whose pruned units the family dealt with.
  """

  def __init__(self, flat, found, pruned, spec=spec_lib.GENERIC):
    self.flat, self.found, self.pruned, self.spec = flat, found, pruned, spec
    self.units = found.units()
    self.shapes = {(c, n): np.shape(v) for c, arrays in flat.items()
                   for n, v in arrays.items()}
    self.keeps: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
    self.zeros: dict[tuple[str, str], list[tuple[int, np.ndarray]]] = {}
    self.removed: dict[str, int] = {}
    self.kept: dict[str, int] = {}
    self.reasons: dict[str, str] = {}
    self.handled: set[str] = set()

  def mask(self, key: str, size: int | None = None) -> np.ndarray:
    """bool pruned units of ``key`` (none pruned if it has no mask)."""
    if key in self.pruned:
      return self.pruned[key]
    return np.zeros(size if size is not None else self.units[key].size, bool)

  def params(self, key: str, *roles: str) -> tuple[spec_lib.Share, ...]:
    """The spec's shares of unit ``key`` of ``roles`` (default: all)."""
    return self.spec.params_of(self.units[key], self.found, self.shapes,
                               roles or spec_lib.ROLES)

  def _arrays(self, path: str, names) -> list[tuple[str, str]]:
    return [(c, f'{path}.{n}') for c in self.flat for n in names
            if f'{path}.{n}' in self.flat[c]]

  def keep(self, path: str, names, axis: int, keep: np.ndarray):
    for where in self._arrays(path, names):
      self.keeps.setdefault(where, []).append((axis, keep))

  def zero(self, path: str, names, axis: int, which: np.ndarray):
    for where in self._arrays(path, names):
      self.zeros.setdefault(where, []).append((axis, which))

  def _keep_shares(self, shares, keep):
    for share in shares:
      self.keeps.setdefault((share.collection, share.name), []).append(
          (share.axis, share.index(keep)))

  def outputs(self, layer: str, keep: np.ndarray):
    """Keep the units ``keep`` of unit ``layer`` in its own parameters (a
    layer's output channels and the BatchNorm after it)."""
    self._keep_shares(self.params(layer, 'weights', 'bias', 'norm', 'stats'),
                      keep)

  def inputs(self, layer: str, keep: np.ndarray):
    """Keep the input channels (kernel rows) ``keep`` of a layer."""
    self.keep(layer, ('kernel',), -2, keep)

  def remove(self, key: str, gone: np.ndarray):
    """Units ``gone`` of ``key`` removed from every parameter the spec says
    they own, the rows of the layer that reads them included, and counted."""
    self._keep_shares(self.params(key), ~gone)
    self.count(key, gone)

  def zero_outputs(self, key: str, which: np.ndarray, reason: str):
    """Units ``which`` of ``key`` output 0: the scale and shift of the
    BatchNorm at their site if there is one, else their weights and bias."""
    shares = (self.params(key, 'norm') or
              self.params(key, 'weights', 'bias'))
    if not shares and which.any():
      raise NotImplementedError(f'{key}: no parameters to zero its units')
    for share in shares:
      self.zeros.setdefault((share.collection, share.name), []).append(
          (share.axis, share.index(which)))
    if which.any():
      self.kept[key] = self.kept.get(key, 0) + int(which.sum())
      reasons = self.reasons.get(key, '')
      if reason not in reasons:
        self.reasons[key] = f'{reasons}; {reason}' if reasons else reason
    self.handled.add(key)

  @staticmethod
  def nonempty(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keep`` with its first unit kept if it keeps none, and that unit."""
    return nonempty(keep)

  def narrow(self, layer: str) -> np.ndarray:
    """Unit ``layer`` loses its pruned units (all but one zeroed unit if
    every one is pruned); returns the units kept, for its readers."""
    keep, last = nonempty(~self.mask(layer))
    self.zero_outputs(layer, last, EMPTY)
    self.count(layer, ~keep)
    self.outputs(layer, keep)
    return keep

  def count(self, key: str, removed: np.ndarray):
    if key in self.units:
      self.removed[key] = self.removed.get(key, 0) + int(removed.sum())
      self.handled.add(key)

  def apply(self, collection: str) -> dict:
    out = {}
    for name, value in self.flat[collection].items():
      value = np.array(value)
      for axis, which in self.zeros.get((collection, name), []):
        index = [slice(None)] * value.ndim
        index[axis] = which
        value[tuple(index)] = 0
      for axis, keep in self.keeps.get((collection, name), []):
        value = np.compress(keep, value, axis=axis)
      out[name] = value
    return out


Edit.EMPTY = EMPTY = (
    'the last unit of a layer pruned whole: a CNN layer keeps one (zero) '
    'channel, as layers of zero width cannot be initialised')
LOGITS = 'a logit: the output layer keeps every class'


def nonempty(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``keep`` with its first unit kept if it keeps none, and that unit."""
  if keep.any():
    return keep, np.zeros_like(keep)
  last = np.zeros_like(keep)
  last[0] = True
  return last, last


# Plain flax models -------------------------------------------------------------

_MIXING = (Kind.SUM, Kind.LAYER_NORM, Kind.ATTENTION, Kind.SOFTMAX,
           Kind.QUERY_KEY, Kind.ATTENTION_VALUE)


class Narrowed(nn.Module):
  """A plain flax ``model`` whose convs and dense layers ``features``
  (``((path, output channels), ...)``) are narrower; its variables are the
  model's, at the same paths, with those layers' arrays narrowed."""

  model: nn.Module
  features: tuple[tuple[str, int], ...] = ()

  def setup(self):
    nn.share_scope(self, self.model)  # the model's variables, not under 'model'

  def __call__(self, *args, **kwargs):
    features = dict(self.features)

    def narrow(f, f_args, f_kwargs, context):
      module = context.module
      path = '.'.join(module.path)
      if (context.method_name != '__call__' or path not in features
          or not isinstance(module, (nn.Conv, nn.Dense))):
        return f(*f_args, **f_kwargs)
      bare = module.clone(parent=None, name=None, features=features[path])
      if module.is_initializing() and not module.has_variable('params',
                                                             'kernel'):
        made = bare.init(module.make_rng('params'), *f_args, **f_kwargs)
        for name, value in made['params'].items():
          module.put_variable('params', name, value)
      params = {n: module.get_variable('params', n) for n in ('kernel', 'bias')
                if module.has_variable('params', n)}
      return bare.apply({'params': params}, *f_args, **f_kwargs)

    with nn.intercept_methods(narrow):
      return self.model(*args, **kwargs)


def _chain(model: nn.Module, edit: Edit) -> nn.Module:
  """A plain flax model whose convs and dense layers form a chain, each
  read by the next alone through elementwise operations, BatchNorm, pooling
  or a flatten: each loses its pruned units and the next its inputs."""
  name = type(model).__name__
  for op in edit.found.leaves:
    if op.kind in _MIXING:
      raise NotImplementedError(
          f'slim cannot remove units of a plain flax model through '
          f'{op.path!r} ({op.type_name}) of {name}: it removes them from a '
          'chain of convs and dense layers only; evaluate the model masked '
          '(prune.sweep.masked_apply)')
  linear = [op.path for op in edit.found.of_kind(Kind.CONV, Kind.DENSE)]
  params = edit.flat['params']
  features = []
  for layer, reader in zip(linear, linear[1:]):
    keep, last = nonempty(~edit.mask(layer))
    width, rows = (params[f'{layer}.kernel'].shape[-1],
                   params[f'{reader}.kernel'].shape[-2])
    if rows == width:
      read = keep
    elif rows % width == 0 and rows > width:
      between = edit.found.leaves[
          edit.found.leaves.index(edit.found.op(layer)):
          edit.found.leaves.index(edit.found.op(reader))]
      channel_major = any(op.kind is Kind.RESHAPE for op in between)
      # layers.Flatten is (C, H, W)-major as torch's; a jax reshape of NHWC
      # is (H, W, C)-major.
      read = (np.repeat(keep, rows // width) if channel_major
              else np.tile(keep, rows // width))
    else:
      raise NotImplementedError(
          f'slim cannot remove units of {layer!r} in {name}: {reader!r} reads '
          f'{rows} inputs of its {width} outputs (a grouped or depthwise '
          'conv, or another layer between them); evaluate the model masked '
          '(prune.sweep.masked_apply)')
    edit.zero_outputs(layer, last, EMPTY)
    edit.count(layer, ~keep)
    edit.outputs(layer, keep)
    edit.inputs(reader, read)
    if not keep.all():
      features.append((layer, int(keep.sum())))
  return Narrowed(model, tuple(features))


def _check_chain(model, variables, masks, small, small_variables, found,
                 input_shape):
  """Plain jax functions (a residual ``+``, a reshape) are invisible to
  the structure: the slim model must give the masked model's logits on a
  random input, or the chain was not one."""
  from pxp_jax.prune import sweep  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).normal(size=input_shape),
                  jnp.float32)
  ref = np.asarray(sweep.masked_apply(model, variables, x, masks, found))
  out = np.asarray(small.apply(small_variables, x))
  scale = max(float(np.max(np.abs(ref))), 1e-6)
  if out.shape != ref.shape or np.max(np.abs(out - ref)) / scale > 1e-4:
    raise NotImplementedError(
        f'slim cannot remove units of {sorted(masks)} in '
        f'{type(model).__name__}: its layers are not a chain (a residual sum '
        'or a reshape written as a jax function mixes their channels); '
        'evaluate the model masked (prune.sweep.masked_apply)')


# Size and speed -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Size:
  """What a model costs on inputs of one shape.

  Attributes:
    parameters: entries of its ``params`` (BatchNorm statistics excluded).
    flops: floating-point operations of one forward pass, from XLA's cost
      analysis of the compiled program (a multiply-add counts 2).
    latency_s: median wall time of one compiled forward pass.
    throughput: images per second at that latency.
    device: the device it ran on (``jax.devices()[0].device_kind``).
  """

  parameters: int
  flops: float
  latency_s: float
  throughput: float
  device: str


def size_report(model: nn.Module, variables, input_shape, *, repeats: int = 20,
                warmup: int = 3) -> Size:
  """Parameters, FLOPs and latency of ``model.apply(variables, x)`` for
  inputs ``x`` of ``input_shape`` (N, H, W, C).

  The forward pass is compiled once (``jax.jit``); FLOPs are
  ``compiled.cost_analysis()['flops']``; the latency is the median of
  ``repeats`` timed calls after ``warmup`` untimed ones, each waited for
  (``block_until_ready``). Compare a dense and a slim model with reports
  measured in the same process, on the same device.
  """
  if repeats < 1 or warmup < 0:
    raise ValueError(f'repeats must be >= 1 and warmup >= 0; got {repeats}, '
                     f'{warmup}')
  x = jnp.zeros(tuple(input_shape), jnp.float32)
  compiled = jax.jit(model.apply).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # one entry per program in older JAX
    cost = cost[0]
  for _ in range(warmup):
    compiled(variables, x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(variables, x).block_until_ready()
    times.append(time.perf_counter() - start)
  latency = float(np.median(times))
  parameters = sum(int(np.size(a)) for a in jax.tree_util.tree_leaves(
      variables['params']))
  return Size(parameters, float(cost.get('flops', float('nan'))), latency,
              x.shape[0] / latency, jax.devices()[0].device_kind)


class _Module(types.ModuleType):
  """This module, callable: ``pxp_jax.prune.slim(model, variables, masks)`` is
  ``pxp_jax.prune.slim.slim(...)``."""

  def __call__(self, model, variables, masks, input_shape=None) -> Slimmed:
    return slim(model, variables, masks, input_shape)


sys.modules[__name__].__class__ = _Module
