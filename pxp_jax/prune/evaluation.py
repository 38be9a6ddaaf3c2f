"""Evaluating pruned models: accuracy with masks, and scores at rates.

``accuracy`` is a model's top-1 accuracy over batches, masked or not;
``evaluate`` prunes by each criterion's scores at every rate
(``ranking.masks``) and measures every pruned model with one compiled
program (``sweep.sweep_accuracy``: masks are arguments), returning the
accuracy per criterion and rate with the summaries of the curves (A_PR, AUC,
Top-PR; ``metrics``) and their standard errors over seeds.

  result = evaluate(model, variables, batches,
                    {'lrp': lrp_scores, 'random': [seed0, seed1]},
                    rates=(0.0, 0.2, 0.4))
  result.accuracy['lrp']        # (seeds, rates)
  result.summaries()['lrp']     # {'a_pr': ..., 'auc': ..., 'top_pr': ...}
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import distribute
from pxp_jax.prune import metrics, ranking, sweep


def accuracy(model, variables, batches: Iterable[Mapping[str, np.ndarray]],
             masks: Mapping | None = None,
             classes: Sequence[int] | None = None, *,
             num_classes: int | None = None, mesh=None,
             n_batches: int | None = None, batch_size: int | None = None):
  """Fraction of examples whose arg-max logit is the label.

  Args:
    model: a flax module returning logits.
    variables: its variables.
    batches: dicts with ``image`` (N, H, W, C) float and ``label`` (N,) int
      (label -1 marks padding).
    masks: None (the model as it is), unit key -> (units,) masks of one
      pruned model, or unit key -> (rows, units): one model per row
      (``ranking.masks``), all evaluated by one compiled program.
    classes: the argmax runs over these classes only (a few-class task;
      None: all).
    num_classes: the model's classes (None: read from its output on the
      first batch).
    mesh: split every batch over this mesh's data axis
      (``pxp_jax.distribute.global_batches``: ``batches`` are this
      process's, padded to ``batch_size``; on several processes each passes
      the same ``n_batches``).

  Returns:
    Top-1 accuracy in [0, 1]: a float, or a (rows,) array for masks with
    rows.
  """
  if masks is None:
    return _plain_accuracy(model, variables, batches, classes, mesh,
                           n_batches, batch_size)
  rows = np.ndim(next(iter(masks.values()), ())) == 2
  stacked = {k: jnp.asarray(v) if rows else jnp.asarray(v)[None]
             for k, v in masks.items()}
  result = _sweep(model, variables, batches, stacked, classes, num_classes,
                  mesh, n_batches, batch_size)
  return result if rows else float(result[0])


def accuracies(model, variables, batches: Iterable,
               masks: Mapping[str, Mapping[str, jax.Array]],
               classes: Sequence[int] | None = None, *,
               num_classes: int | None = None, mesh=None,
               n_batches: int | None = None,
               batch_size: int | None = None) -> dict[str, np.ndarray]:
  """name -> accuracy of each row of ``masks[name]`` (unit key -> (rows,
  units)), every row of every name evaluated by one compiled program in
  one pass over ``batches``."""
  names = list(masks)
  flat = _sweep(model, variables, batches, metrics.stack(masks), classes,
                num_classes, mesh, n_batches, batch_size)
  rows = [len(next(iter(masks[n].values()))) for n in names]
  starts = np.cumsum([0, *rows])
  return {n: flat[starts[i]:starts[i + 1]] for i, n in enumerate(names)}


@dataclasses.dataclass(frozen=True, eq=False)
class Evaluation:
  """Accuracy of the models pruned by each criterion at each rate.

  Attributes:
    rates: the pruning rates, (R,).
    accuracy: criterion -> (seeds, R) accuracy, one row per scores given.
    unpruned: the unpruned model's accuracy.
    masks: criterion -> [unit key -> (R, units) masks, per seed].
  """

  rates: np.ndarray
  accuracy: dict[str, np.ndarray]
  unpruned: float
  masks: dict[str, list[dict]]

  def curve(self, criterion: str) -> np.ndarray:
    """The criterion's accuracy per rate, the mean over seeds."""
    return self.accuracy[criterion].mean(0)

  def summary(self, criterion: str) -> dict:
    """``metrics.summarize`` of the mean curve (rates, accuracy, A_PR, AUC,
    Top-PR); with several seeds also the standard errors of the mean over
    seeds (``a_pr_sem``, ``auc_sem``, ``accuracy_sem`` per rate, as the PXP
    paper reports random pruning) and ``accuracy_per_seed``."""
    runs = self.accuracy[criterion]
    out = metrics.summarize(self.rates, runs.mean(0), self.unpruned)
    if len(runs) > 1:
      out.update(metrics.standard_errors(self.rates, runs))
      out['accuracy_per_seed'] = runs.tolist()
    return out

  def summaries(self) -> dict[str, dict]:
    """criterion -> ``summary``."""
    return {name: self.summary(name) for name in self.accuracy}


def evaluate(model, variables, batches: Iterable,
             scores: Mapping[str, Mapping | Sequence[Mapping]],
             rates: Sequence[float] = ranking.DEFAULT_RATES, *,
             classes: Sequence[int] | None = None, per_layer: bool = False,
             keep_one: bool = False, num_classes: int | None = None,
             mesh=None, n_batches: int | None = None,
             batch_size: int | None = None) -> Evaluation:
  """Prunes by every criterion's scores at every rate and measures each
  pruned model on ``batches``, all by one compiled program in one pass.

  Args:
    model, variables: the model (for a zeroed few-class task, the variables
      of ``zero_other_classes``).
    batches: the evaluation batches (``data.batches``), read once.
    scores: criterion name -> its scores (unit key -> (units,)), or a list
      of them, one per seed (e.g. ``random``; the curves are averaged).
    rates: increasing pruning rates in [0, 1); without rate 0 the unpruned
      model is measured apart.
    classes: the argmax runs over these classes only (None: all).
    per_layer, keep_one: see ``ranking.masks``.
    num_classes, mesh, n_batches, batch_size: see ``accuracy``.

  Returns:
    An ``Evaluation``.
  """
  rates = ranking.check_rates(rates)
  if not scores:
    raise ValueError('scores name no criterion; pass {criterion: scores} '
                     '(a criterion\'s score, or a list of them per seed)')
  runs = {name: [s] if isinstance(s, Mapping) else list(s)
          for name, s in scores.items()}
  masks = {name: [ranking.masks(s, rates, per_layer=per_layer,
                                keep_one=keep_one) for s in seeds]
           for name, seeds in runs.items()}
  flat = {f'{name}#{i}': m for name, seeds in masks.items()
          for i, m in enumerate(seeds)}
  if rates[0] != 0:  # the unpruned model is not among the rows: add it
    some = next(iter(flat.values()))
    flat['unpruned'] = {k: np.ones_like(v[:1]) for k, v in some.items()}
  measured = accuracies(model, variables, batches, flat, classes,
                        num_classes=num_classes, mesh=mesh,
                        n_batches=n_batches, batch_size=batch_size)
  curves = {name: np.stack([measured[f'{name}#{i}']
                            for i in range(len(seeds))])
            for name, seeds in masks.items()}
  unpruned = float(measured['unpruned'][0] if 'unpruned' in measured
                   else next(iter(curves.values()))[0, 0])
  return Evaluation(np.asarray(rates), curves, unpruned, masks)


def zero_other_classes(variables, classifier: str, classes: Sequence[int]):
  """``variables`` with the classifier's kernel columns and bias entries of
  every class not in ``classes`` set to zero (the PXP reference's few-class
  task: those logits are 0, the argmax still runs over all classes)."""
  flat = flax.traverse_util.flatten_dict(variables, sep='.')
  keep = np.zeros(np.shape(flat[f'params.{classifier}.kernel'])[-1], bool)
  keep[list(classes)] = True
  for name in ('kernel', 'bias'):
    key = f'params.{classifier}.{name}'
    if key in flat:
      flat[key] = flat[key] * keep.astype(np.asarray(flat[key]).dtype)
  return flax.traverse_util.unflatten_dict(flat, sep='.')


def _sweep(model, variables, batches, stacked, classes, num_classes, mesh,
           n_batches, batch_size) -> np.ndarray:
  """``sweep.sweep_accuracy``; without ``num_classes`` the model's class
  count is read from its output on the first batch."""
  if num_classes is None:
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
      return sweep.sweep_accuracy(model, variables, [], stacked, 1)
    num_classes = jax.eval_shape(
        model.apply, variables,
        jax.ShapeDtypeStruct(np.shape(first['image']), jnp.float32)
    ).shape[-1]
    batches = itertools.chain([first], batches)
  return sweep.sweep_accuracy(model, variables, batches, stacked, num_classes,
                              classes, mesh=mesh, n_batches=n_batches,
                              batch_size=batch_size)


def _plain_accuracy(model, variables, batches, classes, mesh, n_batches,
                    batch_size):
  if mesh is not None:
    batches = distribute.global_batches(batches, mesh, n_batches, batch_size)
    variables = distribute.replicate(variables, mesh)
  count = _count_correct(model, classes is not None)
  extra = () if classes is None else (jnp.asarray(list(classes), jnp.int32),)
  correct = total = 0
  for batch in batches:
    right, seen = count(variables, batch['image'], batch['label'], *extra)
    correct += int(right)
    total += int(seen)
  if total == 0:
    raise ValueError('no examples to evaluate: the split (or the class '
                     'subset) is empty')
  return correct / total


@functools.cache
def _count_correct(model, few_class: bool = False):
  """Correct and real examples of a batch (label -1 marks padding); with
  ``few_class`` the argmax runs over the classes passed."""

  @jax.jit
  def count(variables, images, labels, classes=None):
    logits = model.apply(variables, images)
    if few_class:
      allowed = jnp.zeros(logits.shape[-1], bool).at[classes].set(True)
      logits = jnp.where(allowed, logits, -jnp.inf)
    predicted = jnp.argmax(logits, axis=-1)
    return jnp.sum(predicted == labels), jnp.sum(labels >= 0)

  return count
