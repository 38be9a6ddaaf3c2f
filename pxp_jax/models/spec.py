"""Model-family specs: what pxp_jax needs to know about a family beyond the
operations it calls (``kinds``) and its units (``pxp_jax.models.structure``).

A spec says how the family's layers split into PXP's layer groups, its
default composites and unit type, the range of its raw inputs, where a
head's weights are (weight-magnitude criterion), and how its checkpoints
name things. Each family declares its spec beside its model; any other flax
model gets ``GENERIC``, which reads all of it off the model's structure.
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


def heads_of_projections(params: Mapping[str, np.ndarray], unit,
                         found) -> np.ndarray:
  """L1 norm of each head's query, key and value weights, for attention
  modules whose projections have a heads axis (flax's ``DenseGeneral``
  kernels ``(width, heads, head_dim)``): the projections called before the
  softmax."""
  softmax = found.op(unit.layer)
  before = [op for op in found.leaves[:found.leaves.index(softmax)]
            if op.kind is Kind.DENSE and op.parent == unit.key]
  total = np.zeros(unit.size)
  for op in before:
    kernel = np.abs(np.asarray(params[f'{op.path}.kernel']))
    if kernel.ndim != 3 or kernel.shape[1] != unit.size:
      raise ValueError(f'{op.path}: cannot read {unit.size} heads off a '
                       f'kernel of shape {kernel.shape}')
    total += kernel.sum(axis=(0, 2))
  return total


@dataclasses.dataclass(frozen=True)
class Spec:
  """A model family.

  Attributes:
    name: the family's name.
    model_class: its flax module class (None for ``GENERIC``).
    transformer: whether it is a transformer (None: read off the structure,
      attention or not).
    layer_groups: ``(structure, boundaries) -> {'low', 'middle', 'high',
      'fc': [layer paths]}``: with ``boundaries=None`` the family's own
      split (by stage, as the PXP reference), with fractions ``(b1, b2)``
      a cut of the layers (or blocks) in call order.
    head_weights: ``(flat params, heads Unit, structure) -> (heads,)`` L1
      norms of each head's weights.
    input_range: the range of raw pixel values before normalisation.
    classifier: the output layer's module path.
    checkpoint_names: source (``'torchvision'``, ...) -> a function from our
      parameter names to that source's (``same_names`` where they agree).
  """

  name: str
  model_class: type | None = None
  transformer: bool | None = None
  layer_groups: GroupFn = groups_by_order
  head_weights: Callable = heads_of_projections
  input_range: tuple[float, float] = (0.0, 1.0)
  classifier: str = ''
  checkpoint_names: Mapping[str, Callable[[str], str]] = dataclasses.field(
      default_factory=dict)

  def is_transformer(self, found) -> bool:
    return (has_attention(found) if self.transformer is None
            else self.transformer)

  def default_units(self, found) -> str:
    """What the pruning job prunes: MLP neurons of a transformer, else
    filters."""
    return 'neurons' if self.is_transformer(found) else 'filters'

  def pruning_composite(self, found) -> str:
    """The preset PXP ranks units with by default: the 2021 layer groups
    (ZPlus on convs) for CNNs, AttnLRP's groups for transformers."""
    return 'vit_groups' if self.is_transformer(found) else 'pxp_groups'

  def heatmap_composite(self, found) -> str:
    """The preset for input heatmaps: EpsilonGammaBox for CNNs, AttnLRP for
    transformers."""
    return 'attn_lrp' if self.is_transformer(found) else 'epsilon_gamma_box'

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
  """Makes ``spec`` the spec of models of ``spec.model_class``."""
  _SPECS.insert(0, spec)
  return spec


def spec_for(model) -> Spec:
  """The spec of ``model``'s family, ``GENERIC`` for other flax models."""
  return next((s for s in _SPECS if isinstance(model, s.model_class)),
              GENERIC)
