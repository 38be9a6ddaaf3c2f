"""The few-class task and the seeded draws of a pruning experiment.

PXP restricts a model's task to a few of its classes (3, 100 or all 1000 of
ImageNet), drawn with the run's seed; the same seed draws the reference
samples the criteria score on, ``n_per_class`` of each class; a search's
validation images can be held out of the same split, disjoint from them
(Hatefi et al., 2024). Every function takes plain sources and labels; bad
arguments raise ``pxp_jax.checks.ArgumentError`` when an object is built.

  task = FewClass.drawn(num_classes=1000, count=3, seed=0)
  draw = Draw(n_per_class=10, seed=0)
  refs = draw.references(source, task.classes)       # indices into source
  test = task.restrict(load('imagenet2012', 'validation'))
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence

import numpy as np

from pxp_jax import checks
from pxp_jax.checks import ArgumentError
from pxp_jax.data.pipeline import Subset, labels_of, reference_samples

# How a few-class task drops the other classes: their logits are -inf (the
# argmax runs over the chosen classes), or the classifier's rows of them are
# zero (the PXP reference: their logits are 0, the argmax runs over all).
OTHER_CLASSES = ('excluded', 'zeroed')


def draw_classes(num_classes: int, count: int, seed: int) -> list[int]:
  """``count`` of ``num_classes`` classes drawn without replacement with
  ``np.random.default_rng(seed)``, sorted (the PXP reference draws its
  few-class tasks with the run's seed)."""
  if not 2 <= count <= num_classes:
    raise ArgumentError('count', count, f' must lie in [2, {num_classes}]: '
                        f'the model has {num_classes} classes')
  rng = np.random.default_rng(seed)
  return sorted(int(c) for c in rng.choice(num_classes, count, replace=False))


@dataclasses.dataclass(frozen=True)
class FewClass:
  """A model's task restricted to some of its classes.

  Attributes:
    classes: the classes kept, two or more different ones (None or (): all;
      held as a list, or None).
    num_classes: the model's classes (None: not known yet, the range is
      checked when it is).
    other_classes: ``'excluded'`` or ``'zeroed'`` (``OTHER_CLASSES``); a
      zeroed task's model is ``pxp_jax.prune.evaluation.zero_other_classes``.
  """

  classes: Sequence[int] | None = None
  num_classes: int | None = None
  other_classes: str = 'excluded'

  def __post_init__(self):
    classes = tuple(self.classes) if self.classes is not None else ()
    bad = [c for c in classes if not isinstance(c, numbers.Integral)
           or isinstance(c, bool) or c < 0]
    if bad:
      raise ArgumentError('classes', classes,
                          f': {bad} are not class indices (integers >= 0)')
    classes = tuple(int(c) for c in classes)
    if classes and self.num_classes is not None:
      out = [c for c in classes if c >= self.num_classes]
      if out:
        raise ArgumentError('classes', classes, f': {out} are not classes '
                            'of this model; its classes are 0 to '
                            f'{self.num_classes - 1}')
    if classes and len(set(classes)) < 2:
      raise ArgumentError('classes', classes, ' must name at least two '
                          'different classes: with one class every pruned '
                          'model is 100% accurate')
    if len(set(classes)) != len(classes):
      raise ArgumentError('classes', classes, ' names a class twice; write '
                          f'{checks.show(tuple(sorted(set(classes))))}')
    checks.choice('other_classes', self.other_classes, OTHER_CLASSES)
    object.__setattr__(self, 'classes', list(classes) or None)

  @classmethod
  def drawn(cls, num_classes: int, count: int, seed: int,
            other_classes: str = 'excluded') -> 'FewClass':
    """``count`` classes drawn with ``seed`` (``draw_classes``)."""
    return cls(draw_classes(num_classes, count, seed), num_classes,
               other_classes)

  @property
  def allowed(self) -> list[int] | None:
    """The classes an evaluation's argmax runs over (None: all)."""
    return self.classes if self.other_classes == 'excluded' else None

  def class_list(self, source) -> list[int]:
    """The task's classes, or every class of ``source``."""
    return _class_list(source, self.classes, self.num_classes)

  def keep(self, labels) -> np.ndarray:
    """Which of ``labels`` are of the task's classes (bool)."""
    return _keep(labels, self.classes)

  def restrict(self, source):
    """The examples of ``source`` of the task's classes (``source``
    itself when that is all of them)."""
    keep = self.keep(labels_of(source))
    return source if keep.all() else Subset(source, np.flatnonzero(keep))


@dataclasses.dataclass(frozen=True)
class Draw:
  """The seeded draws of a pruning task.

  Attributes:
    n_per_class: reference samples per class (``references``).
    seed: their seed; the holdout is drawn with ``seed + 1``.
    holdout_per_class: > 0 keeps that many examples of each class of the
      rest for evaluation (``holdout``); 0 keeps the whole rest.
  """

  n_per_class: int = 10
  seed: int = 0
  holdout_per_class: int = 0

  def __post_init__(self):
    checks.count('n_per_class', self.n_per_class, 1,
                 'reference samples per class')
    checks.count('seed', self.seed, 0,
                 'the seed of classes and reference samples')
    checks.count('holdout_per_class', self.holdout_per_class, 0,
                 'evaluation examples per class on the reference split, '
                 '0 = all')

  def references(self, source, classes: Sequence[int] | None = None,
                 n_per_class: int | None = None,
                 where: str = 'the source') -> np.ndarray:
    """Sorted indices into ``source`` of ``n_per_class`` (default: the
    draw's) examples of each of ``classes`` (None: all),
    ``data.reference_samples`` with the draw's seed; ``where`` names the
    source in the error of a class with too few examples."""
    n = self.n_per_class if n_per_class is None else checks.count(
        'n_per_class', n_per_class, 1, 'reference samples per class')
    _check_per_class(labels_of(source), _class_list(source, classes), n,
                     'n_per_class', where)
    return reference_samples(source, n, seed=self.seed, classes=classes)

  def holdout(self, source, classes: Sequence[int] | None = None,
              exclude=(), where: str = 'the source'):
    """The examples of ``source`` of ``classes`` that evaluation reads,
    none of the indices ``exclude`` (the reference samples): all of them,
    or ``holdout_per_class`` of each class drawn with ``seed + 1``; a
    ``Subset`` (or ``source`` itself when that is all of it)."""
    labels = labels_of(source)
    keep = _keep(labels, classes)
    keep[np.asarray(exclude, np.int64)] = False
    if not self.holdout_per_class:
      return source if keep.all() else Subset(source, np.flatnonzero(keep))
    rest = Subset(source, np.flatnonzero(keep))
    _check_per_class(labels[rest.indices], _class_list(source, classes),
                     self.holdout_per_class, 'holdout_per_class',
                     f'{where} without the reference samples')
    held = reference_samples(rest, self.holdout_per_class,
                             seed=self.seed + 1, classes=classes)
    return Subset(source, rest.indices[held])


def _class_list(source, classes, num_classes=None) -> list[int]:
  """``classes``, or every class of ``source``."""
  if classes is not None:
    return [int(c) for c in classes]
  num_classes = getattr(source, 'num_classes', None) or num_classes
  return (list(range(num_classes)) if num_classes
          else np.unique(labels_of(source)).tolist())


def _keep(labels, classes) -> np.ndarray:
  labels = np.asarray(labels)
  return (np.ones(len(labels), bool) if classes is None
          else np.isin(labels, list(classes)))


def _check_per_class(labels, classes, wanted: int, name: str,
                     where: str) -> None:
  """An ``ArgumentError`` when a class of ``classes`` has fewer than
  ``wanted`` examples in ``labels``."""
  counts = {int(c): int(np.sum(labels == c)) for c in classes}
  short = {c: n for c, n in counts.items() if n < wanted}
  if not short:
    return
  shown = ', '.join(f'class {c}: {n}' for c, n in sorted(short.items())[:5])
  empty = sorted(c for c, n in short.items() if n == 0)
  fix = (f'classes {empty} have none: choose classes the data has '
         '({classes})' if empty else
         f'set {{{name}}} to at most {min(counts.values())}')
  raise ArgumentError(name, wanted, f', but {where} has fewer examples of '
                      f'classes {sorted(short)} ({shown}); {fix}')
