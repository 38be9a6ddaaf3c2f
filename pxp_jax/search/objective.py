"""A search trial's score of a composite: how well its LRP ranking prunes.

``Objective(...)(composite)``: LRP unit scores on the reference samples
(``pxp_jax.prune.criteria.LRP`` with ``dynamic_rules=True``), nested masks
at the pruning rates and the accuracy at every rate in one compiled sweep
(``prune.evaluate``), and its A_PR (mean accuracy over the rates) or
trapezoid AUC (Hatefi et al., 2024).

Every trial reuses the same compiled programs: the rules, their
hyperparameters, their bias option and the ranking sign are array leaves of
the relevance program, padded batches serve any number of reference
samples, and the masks are arguments of the sweep.

Example::

  objective = search.Objective(model, variables, (images, labels),
                               batches, units, rates, num_classes=10)
  a_pr = objective(composites.get('pxp_groups'))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pxp_jax.prune import criteria, evaluation, ranking

METRICS = {'a_pr': 'A_PR', 'auc': 'AUC'}  # the objective -> its name


@dataclasses.dataclass
class Objective:
  """The objective of a search: the A_PR or AUC of a composite's ranking.

  Attributes:
    model, variables: the model (``variables`` as given: replicated over
      ``mesh`` if one is used).
    references: the reference samples ``(images, labels)``, or
      ``{n_per_class: (images, labels)}`` for a search over the samples per
      class (a trial names its count; the first entry serves the others).
    batches: the evaluation batches (``{'image', 'label'}`` dicts): a list
      read every trial, or a function returning a fresh iterable (streamed
      every trial).
    units: unit key -> ``structure.Unit``, the units to prune.
    rates: increasing pruning rates in [0, 1).
    num_classes: the model's classes.
    classes: the classes the argmax runs over (None: all).
    metric: ``'a_pr'`` or ``'auc'``.
    batch_size: reference samples per relevance pass.
    absolute_tokens, precision, remat: ``criteria.LRP``'s options.
    mesh, n_batches, eval_batch_size: ``prune.accuracy``'s (a device
      mesh, the batches and examples per batch every process runs).
  """

  model: Any
  variables: Any
  references: tuple | Mapping[int, tuple]
  batches: Sequence | Callable[[], Iterable]
  units: Mapping[str, Any]
  rates: Sequence[float]
  num_classes: int
  classes: Sequence[int] | None = None
  metric: str = 'a_pr'
  batch_size: int = 32
  absolute_tokens: bool = True
  precision: str = 'float32'
  remat: bool = False
  mesh: Any = None
  n_batches: int | None = None
  eval_batch_size: int | None = None

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f'metric must be one of {tuple(METRICS)}, got '
                       f'{self.metric!r}')
    self.rates = ranking.check_rates(self.rates)
    if not self.units:
      raise ValueError('units is empty: give the units to prune (unit key '
                       '-> structure.Unit)')

  @property
  def name(self) -> str:
    """The metric's name: ``A_PR`` or ``AUC``."""
    return METRICS[self.metric]

  def scores(self, composite, *, signed: bool = False,
             n_per_class: int | None = None) -> criteria.Scores:
    """unit key -> (units,) LRP scores under ``composite`` on the
    reference samples (those of ``n_per_class`` when ``references`` is a
    mapping); ``signed`` ranks by signed R rather than |R|."""
    images, labels = self._references(n_per_class)
    criterion = criteria.LRP(
        composite, signed=signed, absolute_tokens=self.absolute_tokens,
        dynamic_rules=True, precision=self.precision, remat=self.remat)
    return criterion.score(self.model, self.variables, images, labels,
                           self.units, batch_size=self.batch_size,
                           mesh=self.mesh)

  def summary(self, scores: Mapping[str, Any]) -> dict:
    """``prune.evaluate``'s summary of the masks of ``scores`` at every
    rate: ``rates``, ``accuracy``, ``a_pr``, ``auc``, ``top_pr``."""
    batches = self.batches() if callable(self.batches) else self.batches
    return evaluation.evaluate(
        self.model, self.variables, batches, {'lrp': scores}, self.rates,
        classes=self.classes, num_classes=self.num_classes, mesh=self.mesh,
        n_batches=self.n_batches, batch_size=self.eval_batch_size
    ).summary('lrp')

  def __call__(self, composite, *, signed: bool = False,
               n_per_class: int | None = None) -> float:
    """The objective (A_PR or AUC) of ``composite``'s ranking."""
    scores = self.scores(composite, signed=signed, n_per_class=n_per_class)
    return self.summary(scores)[self.metric]

  def _references(self, n_per_class):
    if not isinstance(self.references, Mapping):
      return self.references
    if n_per_class is None:
      return next(iter(self.references.values()))
    if n_per_class not in self.references:
      raise ValueError(f'no reference samples for n_per_class='
                       f'{n_per_class!r}; references has '
                       f'{sorted(self.references)}')
    return self.references[n_per_class]
