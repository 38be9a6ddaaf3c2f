"""Model-family specs: what pxp_jax needs to know about a family beyond the
operations it calls (``kinds``) and its units (``pxp_jax.models.structure``).

A spec says which model names the family registers, how its layers split
into PXP's layer groups, its default composites and unit type, the rules of
operation kinds its presets may leave open, which parameters each unit owns
(masks, slim and the weight criterion read one table), how to slim it, the
range of its raw inputs, and how its checkpoints name things and which it
exports. Each family declares its spec beside its model (``register``);
any other flax model gets ``GENERIC``, which reads all of it off the
model's structure. The spec names presets and rules by string and holds
the family's own functions, so ``models`` imports neither ``lrp`` nor
``prune``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from pxp_jax.models.kinds import Kind

GroupFn = Callable[..., dict[str, list[str]]]


BY_ORDER = (1 / 3, 2 / 3)  # where a model without stages is cut


def split_by_order(paths: list[str], boundaries) -> dict[str, list[str]]:
  """``paths`` in call order cut at fractions ``(b1, b2)``: path ``i`` of
  ``n`` is low if ``i/n < b1``, middle if ``b1 <= i/n < b2``, else high
  (None: ``BY_ORDER``)."""
  b1, b2 = BY_ORDER if boundaries is None else boundaries
  n = len(paths)
  out = {'low': [], 'middle': [], 'high': []}
  for i, path in enumerate(paths):
    at = i / n
    out['low' if at < b1 else 'middle' if at < b2 else 'high'].append(path)
  return out


def split_by_stage(stages: list[list[str]], first: int, last: int
                   ) -> dict[str, list[str]]:
  """Layer groups by stage: ``stages[:first]`` low, ``stages[last:]`` high,
  the stages between middle."""
  flat = lambda groups: [p for g in groups for p in g]  # noqa: E731
  return {'low': flat(stages[:first]), 'middle': flat(stages[first:last]),
          'high': flat(stages[last:])}


def groups_by_order(found, boundaries) -> dict[str, list[str]]:
  """Layer groups read off the structure of a model without stages: without
  attention (a CNN) the convs in call order split into low, middle and high
  at ``boundaries`` (None: ``BY_ORDER``) and every dense layer is ``fc``;
  with attention every linear layer but the output layer is split in call
  order and the output layer is ``fc``."""
  linear = [op.path for op in found.of_kind(Kind.CONV, Kind.DENSE)]
  if has_attention(found):
    output = found.output_layer
    return {**split_by_order([p for p in linear if p != output], boundaries),
            'fc': [output] if output else []}
  convs = [op.path for op in found.of_kind(Kind.CONV)]
  return {**split_by_order(convs, boundaries),
          'fc': [op.path for op in found.of_kind(Kind.DENSE)]}


def has_attention(found) -> bool:
  return any(u.type == 'heads' for u in found.units().values())


ROLES = ('weights', 'bias', 'norm', 'stats', 'reads')


@dataclasses.dataclass(frozen=True)
class Share:
  """The entries of one variable array that belong to a layer's units.

  Along ``axis`` the entries are laid out ``(tile, units, repeat)``: unit
  ``i`` owns entries ``t * units * repeat + i * repeat + r`` (``tile=3,
  repeat=head_dim`` for a head's columns of a fused ``qkv``; 1 and 1 for a
  filter's kernel column).

  Attributes:
    collection: ``'params'`` or ``'batch_stats'``.
    name: the array's dotted path, e.g. ``layer1.0.conv1.kernel``.
    axis: the units' axis in the array.
    role: ``'weights'`` (the unit's own kernel entries: masked, scored by
      the weight criterion, removed by slim), ``'bias'`` and ``'norm'`` (its
      bias, the scale and shift of the BatchNorm at its site: masked and
      removed), ``'stats'`` (that BatchNorm's statistics: removed) or
      ``'reads'`` (the rows of the layer that reads the units alone, e.g. a
      head's rows of the attention's output projection: removed with the
      unit, never masked).
    tile, repeat: the layout above.
  """

  collection: str
  name: str
  axis: int
  role: str
  tile: int = 1
  repeat: int = 1

  def index(self, units) -> np.ndarray:
    """A ``(units,)`` array as one entry per array entry along ``axis``."""
    return np.tile(np.repeat(np.asarray(units), self.repeat), self.tile)


Shapes = Mapping[tuple[str, str], tuple[int, ...]]


def layer_params(unit, found, shapes: Shapes) -> tuple[Share, ...]:
  """The parameters of conv filters and dense neurons: the layer's kernel
  column and bias (output axis -1) and, where a BatchNorm follows, its
  scale, shift and statistics."""
  del found
  out = [Share('params', f'{unit.layer}.kernel', -1, 'weights'),
         Share('params', f'{unit.layer}.bias', -1, 'bias')]
  if unit.site != unit.layer:
    out += [Share('params', f'{unit.site}.scale', -1, 'norm'),
            Share('params', f'{unit.site}.bias', -1, 'norm'),
            Share('batch_stats', f'{unit.site}.mean', -1, 'stats'),
            Share('batch_stats', f'{unit.site}.var', -1, 'stats')]
  return tuple(s for s in out if (s.collection, s.name) in shapes)


def mlp_params(unit, found, shapes: Shapes, first: str = '.mlp.fc1',
               second: str = '.mlp.fc2') -> tuple[Share, ...]:
  """``layer_params``, and for a neuron of an MLP's ``first`` layer also its
  row of ``second``, the only layer that reads it (timm's ViT and ConvNeXt
  blocks)."""
  own = layer_params(unit, found, shapes)
  if unit.type == 'neurons' and unit.layer.endswith(first):
    reader = unit.layer[:-len(first)] + second
    own += (Share('params', f'{reader}.kernel', -2, 'reads'),)
  return own


def fused_qkv(unit, shapes: Shapes, proj: str | None = None
              ) -> tuple[Share, ...]:
  """A head's columns of a fused ``{unit.key}.qkv`` (kernel ``(width, 3 *
  heads * head_dim)``, columns laid out ``(3, heads, head_dim)``: timm's
  and our ViT's) and, with ``proj``, its rows of that output projection."""
  width = shapes['params', f'{unit.key}.qkv.kernel'][-1]
  dim = width // 3 // unit.size if unit.size else 0
  out = [Share('params', f'{unit.key}.qkv.kernel', -1, 'weights', 3, dim),
         Share('params', f'{unit.key}.qkv.bias', -1, 'bias', 3, dim)]
  if proj is not None:
    out.append(Share('params', f'{unit.key}.{proj}.kernel', -2, 'reads', 1,
                     dim))
  return tuple(s for s in out if (s.collection, s.name) in shapes)


def head_params(unit, found, shapes: Shapes) -> tuple[Share, ...]:
  """A head's query, key and value weights: a fused ``qkv`` (``fused_qkv``),
  or projections with a heads axis (flax's ``MultiHeadDotProductAttention``:
  ``DenseGeneral`` kernels ``(width, heads, head_dim)``, biases ``(heads,
  head_dim)``), the dense layers of the attention called before its
  softmax."""
  if ('params', f'{unit.key}.qkv.kernel') in shapes:
    return fused_qkv(unit, shapes)
  softmax = found.op(unit.layer)
  before = [op for op in found.leaves[:found.leaves.index(softmax)]
            if op.kind is Kind.DENSE and op.parent == unit.key]
  out = []
  for op in before:
    kernel = shapes.get(('params', f'{op.path}.kernel'))
    if kernel is None or len(kernel) != 3 or kernel[1] != unit.size:
      raise ValueError(f'{op.path}: cannot read {unit.size} heads off a '
                       f'kernel of shape {kernel}')
    out += [Share('params', f'{op.path}.kernel', -2, 'weights'),
            Share('params', f'{op.path}.bias', -2, 'bias')]
  if not out:
    raise NotImplementedError(
        f'{unit.key}: no qkv or query/key/value parameters to mask its '
        'heads; pxp_jax knows a fused qkv (pxp_jax.models.vit) and flax\'s '
        'MultiHeadDotProductAttention')
  return tuple(s for s in out if (s.collection, s.name) in shapes)


def unit_params(unit, found, shapes: Shapes) -> tuple[Share, ...]:
  """Which entries of which variables a unit owns (any flax model):
  ``layer_params`` for filters and neurons, ``head_params`` for heads."""
  if unit.type == 'heads':
    return head_params(unit, found, shapes)
  return layer_params(unit, found, shapes)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A model family: every fact about it that another module would
  otherwise hard-code.

  Attributes:
    name: the family's name.
    model_class: its flax module class (None for ``GENERIC``).
    variants: registered model names -> factories (``functools.partial``
      of ``model_class``), what ``models.create`` builds and
      ``models.describe`` names.
    transformer: whether it is a transformer (None: read off the structure,
      attention or not); the search chooses its space by it.
    units: the unit type the pruning job prunes by default (None: MLP
      neurons of a transformer, else filters).
    pruning_preset, heatmap_preset: names of ``pxp_jax.composites``
      presets, the default composites for ranking units and for input
      heatmaps (None: by ``transformer``).
    rules: operation kind -> the JSON form of its rule
      (``pxp_jax.rules.from_json``) for kinds the family uses that a preset
      may leave open (a ConvNeXt's LayerNorm, GELU and layer scale under a
      CNN preset); ``attribute`` appends them to a composite, after its
      own entries.
    layer_groups: ``(structure, boundaries) -> {'low', 'middle', 'high',
      'fc': [layer paths]}``: with ``boundaries=None`` the family's own
      split (by stage, as the PXP reference), with fractions ``(b1, b2)``
      a cut of the layers (or blocks) in call order.
    unit_params: ``(unit, structure, shapes) -> (Share, ...)``: which
      entries of which variables each unit owns; pruning masks
      (``prune.masking``), ``prune.slim`` and the weight criterion read it
      (``shapes``: ``(collection, dotted name) -> shape``).
    slim: ``(model, edit) -> narrower model``: how ``prune.slim`` removes
      the family's pruned units (None: a chain of convs and dense layers);
      ``edit`` is ``prune.slim.Edit``.
    input_range: the range of raw pixel values before normalisation.
    classifier: the output layer's module path.
    checkpoint_names: source (``'torchvision'``, ``'timm'``) -> a function
      from our parameter names to that source's (``same_names`` where they
      agree); ``convert.from_torchvision`` / ``from_timm`` read it.
    exports: the sources ``convert`` writes this family's variables for
      (``'torchvision'``, ``'timm'``: ``convert.to_torch``;
      ``'big_vision'``: ``convert.to_big_vision``).
    torch_layout: ``(model, torch name, array) -> array``: the family's own
      change of an exported torch array beyond the usual layouts (None:
      none).
  """

  name: str
  model_class: type | None = None
  variants: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
  transformer: bool | None = None
  units: str | None = None
  pruning_preset: str | None = None
  heatmap_preset: str | None = None
  rules: Mapping[Kind, Mapping] = dataclasses.field(default_factory=dict)
  layer_groups: GroupFn = groups_by_order
  unit_params: Callable[..., tuple[Share, ...]] = unit_params
  slim: Callable | None = None
  input_range: tuple[float, float] = (0.0, 1.0)
  classifier: str = ''
  checkpoint_names: Mapping[str, Callable[[str], str]] = dataclasses.field(
      default_factory=dict)
  exports: tuple[str, ...] = ()
  torch_layout: Callable | None = None

  def is_transformer(self, found) -> bool:
    return (has_attention(found) if self.transformer is None
            else self.transformer)

  def default_units(self, found) -> str:
    """What the pruning job prunes: ``units``, else MLP neurons of a
    transformer and filters of other models."""
    if self.units is not None:
      return self.units
    return 'neurons' if self.is_transformer(found) else 'filters'

  def pruning_composite(self, found) -> str:
    """The preset PXP ranks units with by default: ``pruning_preset``, else
    the 2021 layer groups (ZPlus on convs) for CNNs, AttnLRP's groups for
    transformers."""
    if self.pruning_preset is not None:
      return self.pruning_preset
    return 'vit_groups' if self.is_transformer(found) else 'pxp_groups'

  def heatmap_composite(self, found) -> str:
    """The preset for input heatmaps: ``heatmap_preset``, else
    EpsilonGammaBox for CNNs, AttnLRP for transformers."""
    if self.heatmap_preset is not None:
      return self.heatmap_preset
    return 'attn_lrp' if self.is_transformer(found) else 'epsilon_gamma_box'

  def params_of(self, unit, found, shapes: Shapes,
                roles=ROLES) -> tuple[Share, ...]:
    """``unit_params`` of ``unit``, those of ``roles`` only."""
    bad = set(roles) - set(ROLES)
    if bad:
      raise ValueError(f'unknown roles {sorted(bad)}; roles: {ROLES}')
    return tuple(s for s in self.unit_params(unit, found, shapes)
                 if s.role in roles)

  def input_bounds(self, mean, std) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest normalised input, per channel."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    low, high = self.input_range
    return (low - mean) / std, (high - mean) / std


def same_names(name: str) -> str:
  """Checkpoint names that are ours (torchvision's ResNets and VGGs)."""
  return name


def check_int(model, name: str, minimum: int = 1, value=None) -> int:
  """``model.<name>`` (or ``value``) as an int ``>= minimum``; a ValueError
  naming the model class, the attribute and the value otherwise (the
  hyper-parameter checks of the families' ``__post_init__``)."""
  value = getattr(model, name) if value is None else value
  if (isinstance(value, (bool, np.bool_))
      or not isinstance(value, (int, np.integer)) or value < minimum):
    raise ValueError(f'{type(model).__name__}: {name} must be an integer '
                     f'>= {minimum}, got {value!r}')
  return int(value)


def check_sizes(model, name: str, minimum: int = 1, length=None) -> tuple:
  """``model.<name>``, a tuple or list of ints ``>= minimum`` (of
  ``length`` entries if given), as a tuple."""
  sizes = getattr(model, name)
  if not isinstance(sizes, (tuple, list)) or (
      length is not None and len(sizes) != length):
    raise ValueError(
        f'{type(model).__name__}: {name} must be a tuple of '
        + (f'{length} ' if length is not None else '')
        + f'integers >= {minimum}, got {sizes!r}')
  for i, v in enumerate(sizes):
    check_int(model, f'{name}[{i}]', minimum, value=v)
  return tuple(sizes)


def check_bool(model, *names: str):
  """``model.<name>`` is True or False for each of ``names``."""
  for name in names:
    if not isinstance(getattr(model, name), (bool, np.bool_)):
      raise ValueError(f'{type(model).__name__}: {name} must be True or '
                       f'False, got {getattr(model, name)!r}')


GENERIC = Spec('flax')
_SPECS: list[Spec] = []


def register(spec: Spec) -> Spec:
  """Makes ``spec`` the spec of models of ``spec.model_class`` and its
  ``variants`` registered model names (``models.create``)."""
  taken = {n: s.name for s in _SPECS if s.name != spec.name
           for n in s.variants}
  clash = sorted(set(spec.variants) & set(taken))
  if clash:
    raise ValueError(f'family {spec.name!r}: model names {clash} are '
                     f'registered by {sorted({taken[n] for n in clash})}')
  _SPECS[:] = [s for s in _SPECS if s.name != spec.name]
  _SPECS.insert(0, spec)
  return spec


def registered() -> tuple[Spec, ...]:
  """Every registered family's spec, the latest first."""
  return tuple(_SPECS)


def spec_for(model) -> Spec:
  """The spec of ``model``'s family, ``GENERIC`` for other flax models."""
  return next((s for s in _SPECS if isinstance(model, s.model_class)),
              GENERIC)
