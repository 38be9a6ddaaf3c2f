"""Composites: which LRP rule applies to which operation.

A composite is an ordered list of named entries ``(name, Select, rule)``
(first match wins) and the canonisers to run first (BatchNorm folding), as
in zennit. Selects are static; rules are pytrees whose hyperparameters are
array leaves, so ``with_rule`` swaps a rule without recompiling. Every leaf
operation of a model must be covered: a module left without a rule would
silently fall back to the gradient, so ``plan`` refuses it. A model
family's spec may name the rules of kinds its presets leave open
(``with_family_rules``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.struct

from pxp_jax.models import structure
from pxp_jax.lrp import rules
from pxp_jax.models import spec as spec_lib
from pxp_jax.models.kinds import Kind

GROUPS = ('low', 'middle', 'high', 'fc')


@dataclasses.dataclass(frozen=True)
class Select:
  """Which operations an entry covers (all conditions must hold).

  Attributes:
    kinds: operation kinds (``pxp_jax.models.kinds.Kind``); empty for any.
    path: a regular expression that must match the whole dotted path.
    first: only the first conv or dense layer of the model.
    group: only the layers of this layer group (``GROUPS``) as the model's
      family spec splits them (``pxp_jax.models.spec``): by stage, or at
      ``boundaries``.
    boundaries: None for the family's stages (the PXP reference's groups),
      or where the middle and high groups start, as fractions of the layers
      (a ViT's blocks) in call order.
  """

  kinds: tuple[Kind, ...] = ()
  path: str | None = None
  first: bool = False
  group: str | None = None
  boundaries: tuple[float, float] | None = None

  def __post_init__(self):
    bad = [k for k in self.kinds if not isinstance(k, Kind)]
    if bad:
      raise TypeError(f'Select kinds must be pxp_jax.models.kinds.Kind '
                      f'values, got {bad}')
    if self.path is not None:
      if not isinstance(self.path, str):
        raise TypeError(f'Select path must be a regular expression string, '
                        f'got {self.path!r}')
      try:
        re.compile(self.path)
      except re.error as error:
        raise ValueError(f'Select path {self.path!r} is not a regular '
                         f'expression: {error}') from error
    if self.group is not None and self.group not in GROUPS:
      raise ValueError(f'unknown layer group {self.group!r}; use one of '
                       f'{GROUPS}')
    if self.boundaries is not None and (
        len(self.boundaries) != 2
        or not 0 <= self.boundaries[0] <= self.boundaries[1] <= 1):
      raise ValueError(f'boundaries must be None (by stage) or (b1, b2) with '
                       f'0 <= b1 <= b2 <= 1, got {self.boundaries}')

  def covers(self, op: structure.Op, model_map: '_ModelMap') -> bool:
    if self.kinds and op.kind not in self.kinds:
      return False
    if self.path is not None and not re.fullmatch(self.path, op.path):
      return False
    if self.first and op.path != model_map.first_linear:
      return False
    if self.group is not None:
      return op.path in model_map.groups(self.boundaries)[self.group]
    return True


def _check_rule(name: str, rule):
  """A rule's type and hyperparameter ranges, errors naming the entry."""
  if not isinstance(rule, rules.RULE_TYPES):
    raise TypeError(f'entry {name!r}: {rule!r} is not a rule; use '
                    'pxp_jax.rules')
  try:
    rules.check(rule)
  except ValueError as error:
    raise ValueError(f'entry {name!r}: {error}') from error


class _ModelMap:
  """What selects ask of a model: its first layer and its layer groups."""

  def __init__(self, found: structure.Structure, spec: spec_lib.Spec):
    linear = found.of_kind(Kind.CONV, Kind.DENSE)
    self.first_linear = linear[0].path if linear else None
    self._found, self._spec, self._groups = found, spec, {}

  def groups(self, boundaries) -> dict[str, set[str]]:
    if boundaries not in self._groups:
      self._groups[boundaries] = {
          g: set(paths) for g, paths in
          self._spec.layer_groups(self._found, boundaries).items()}
    return self._groups[boundaries]


@flax.struct.dataclass
class Composite:
  """Named entries ``(Select, rule)``, first match wins, and canonisers."""

  rules: tuple
  names: tuple[str, ...] = flax.struct.field(pytree_node=False)
  selects: tuple[Select, ...] = flax.struct.field(pytree_node=False)
  canonizers: tuple = flax.struct.field(pytree_node=False, default=())

  @classmethod
  def of(cls, entries: Sequence[tuple[str, Select, Any]],
         canonizers: Sequence = ()) -> 'Composite':
    """Builds a composite from ``(name, Select, rule)`` entries and
    canonisers (e.g. ``canonize.MergeBatchNorm()``)."""
    bad = [e for e in entries if not isinstance(e, (tuple, list)) or len(e) != 3
           or not isinstance(e[0], str)]
    if bad:
      raise ValueError(f'composite entries are (name, Select, rule) triples, '
                       f'got {bad[0]!r}')
    names = tuple(name for name, _, _ in entries)
    if len(set(names)) != len(names):
      raise ValueError(f'composite entry names must be unique, got {names}')
    for name, select, rule in entries:
      if not isinstance(select, Select):
        raise TypeError(f'entry {name!r}: expected a Select, got {select!r}')
      _check_rule(name, rule)
    return cls(rules=tuple(r.as_arrays() for _, _, r in entries), names=names,
               selects=tuple(s for _, s, _ in entries),
               canonizers=tuple(canonizers))

  def __getitem__(self, name: str):
    return self.rules[self._index(name)]

  def with_rule(self, name: str, rule) -> 'Composite':
    """A copy with the rule of entry ``name`` replaced (same compiled code as
    long as the rule has the same type)."""
    index = self._index(name)
    _check_rule(name, rule)
    new = list(self.rules)
    new[index] = rule.as_arrays()
    return self.replace(rules=tuple(new))

  def _index(self, name: str) -> int:
    if name not in self.names:
      raise KeyError(f'no entry {name!r} in this composite; entries: '
                     f'{", ".join(self.names)}')
    return self.names.index(name)

  def with_family_rules(self, spec: spec_lib.Spec) -> 'Composite':
    """This composite with an entry ``'<family>:<kind>'`` after its own for
    each operation kind whose rule the family's spec names (``Spec.rules``):
    first match wins, so they rule only what the composite's entries leave
    open (a ConvNeXt's LayerNorm, GELU and layer scale under a CNN preset).
    ``attribute`` plans with it; a composite that covers them is unchanged
    in effect."""
    entries = [(f'{spec.name}:{kind.value}', Select((kind,)),
                rules.from_json(dict(rule)))
               for kind, rule in spec.rules.items()
               if f'{spec.name}:{kind.value}' not in self.names]
    if not entries:
      return self
    for name, _, rule in entries:
      _check_rule(name, rule)
    return self.replace(
        rules=self.rules + tuple(r.as_arrays() for _, _, r in entries),
        names=self.names + tuple(n for n, _, _ in entries),
        selects=self.selects + tuple(s for _, s, _ in entries))

  def canonize(self, variables, found: structure.Structure):
    """The variables after every canoniser."""
    for canonizer in self.canonizers:
      variables = canonizer(variables, found)
    return variables

  def plan(self, found: structure.Structure,
           spec: spec_lib.Spec | None = None) -> dict[str, int]:
    """Operation path -> index of its entry; every leaf must have one.

    Raises:
      ValueError: naming every operation without a rule (and unknown module
        classes), or a ``Fold`` on a BatchNorm no canoniser folds.
    """
    model_map = _ModelMap(found, spec or spec_lib.GENERIC)
    folded = set()
    for canonizer in self.canonizers:
      folded |= set(canonizer.folds(found))
    plan, missing = {}, []
    for op in found.leaves:
      entry = next((i for i, select in enumerate(self.selects)
                    if select.covers(op, model_map)), None)
      if entry is None:
        what = (op.kind.value if op.kind is not None else
                f'{op.type_name}: unknown to pxp_jax; declare what it '
                'computes with pxp_jax.models.kinds.register')
        missing.append(f'{op.path} ({what})')
        continue
      if isinstance(self.rules[entry], rules.Fold) and op.path not in folded:
        raise ValueError(
            f'BatchNorm {op.path} takes the Fold rule but no canoniser of the '
            'composite folds it (it must follow a conv or dense layer, and '
            'the composite needs canonize.MergeBatchNorm()); give it another '
            'rule')
      plan[op.path] = entry
    if missing:
      raise ValueError(
          'the composite gives no rule to these operations (an operation '
          'without a rule would silently fall back to the plain gradient): '
          + ', '.join(missing) + '. Add entries that cover them, e.g. '
          "('name', Select((Kind.CONV,)), rules.epsilon()).")
    return plan
