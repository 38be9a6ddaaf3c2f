"""Criteria -> masks -> accuracy curves -> summaries, tables and plots: the
one evaluation the prune job and the search share."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from pxp_jax import distribute, plot
from pxp_jax.prune import evaluation, metrics

REPORTED_RATES = (0.3, 0.5, 0.7)


def evaluate(task, scores: Mapping[str, Sequence[Mapping]], rates, split: str,
             *, per_layer: bool = False, keep_one: bool = False,
             cached: bool = False) -> tuple[dict, dict]:
  """``prune.evaluate`` of a task's model on ``split``, as the results a job
  writes.

  Args:
    task: the ``Task``.
    scores: criterion name -> its scores, one per seed (the curves of
      several seeds are averaged, e.g. ``random``).
    rates: pruning rates.
    split: the evaluation split.
    per_layer, keep_one: see ``pxp_jax.prune.ranking``.
    cached: hold the split in memory (a search evaluates it every trial).

  Returns:
    ``(results, masks)``: ``{'unpruned_accuracy', 'split', 'classes',
    'criteria': {name: Evaluation.summary}}`` and ``{name: [masks per
    seed]}``.
  """
  result = evaluation.evaluate(
      task.model, task.variables, scores=scores, rates=rates,
      per_layer=per_layer, keep_one=keep_one,
      **task.evaluation_options(split, cached=cached))
  return {'unpruned_accuracy': result.unpruned, 'split': split,
          'classes': task.classes, 'criteria': result.summaries()}, result.masks


def over_draws(runs: Sequence[Mapping]) -> dict:
  """The results of several draws (each from ``evaluate``) summarised:
  every criterion's mean curve over draws, its summary, and the standard
  errors over draws (``a_pr_sem``, ``auc_sem``, ``accuracy_sem``), with
  ``accuracy_per_draw`` and each draw's ``classes``."""
  first = runs[0]
  unpruned = np.array([r['unpruned_accuracy'] for r in runs])
  out = {'unpruned_accuracy': float(unpruned.mean()),
         'unpruned_accuracy_sem': float(metrics.sem(unpruned)),
         'split': first['split'], 'draws': len(runs),
         'classes': [r.get('classes') for r in runs], 'criteria': {}}
  for name, c in first['criteria'].items():
    curves = np.array([r['criteria'][name]['accuracy'] for r in runs])
    summary = metrics.summarize(c['rates'], curves.mean(0),
                                out['unpruned_accuracy'])
    summary.update(metrics.standard_errors(c['rates'], curves))
    summary['accuracy_per_draw'] = curves.tolist()
    out['criteria'][name] = summary
  return out


def table(results) -> str:
  """Criteria x (A_PR, AUC, Top-PR, accuracy at 30/50/70% pruned); ``±``
  the standard error over seeds where there are several."""
  head = ['criterion', 'A_PR', 'AUC', 'Top-PR'] + [
      f'acc@{int(r * 100)}%' for r in REPORTED_RATES]
  lines = []
  for name, c in results['criteria'].items():
    at = dict(zip(np.round(c['rates'], 4), c['accuracy']))
    sem = lambda key: (f" ±{c[key + '_sem']:.4f}"  # noqa: E731
                       if key + '_sem' in c else '')
    lines.append([name, f"{c['a_pr']:.4f}{sem('a_pr')}",
                  f"{c['auc']:.4f}{sem('auc')}",
                  f"{c['top_pr']:.2f}"] + [
                      f'{at[r]:.4f}' if r in at else '-'
                      for r in REPORTED_RATES])
  widths = [max(len(h), *(len(l[i]) for l in lines))
            for i, h in enumerate(head)]
  fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
  over = (f", mean of {results['draws']} draws, ± standard error"
          if 'draws' in results else '')
  return '\n'.join([f"unpruned accuracy {results['unpruned_accuracy']:.4f} "
                    f"({results['split']} split{over})", fmt(head),
                    *map(fmt, lines)])


def write(workdir: pathlib.Path, stem: str, results, *, title: str,
          xlabel: str) -> None:
  """``stem.json``, ``stem.csv`` (criterion, rate, accuracy) and the curves
  as ``<png>``: ``curve.png`` for ``results``, else ``stem.png``; written
  by process 0 only."""
  if not distribute.is_primary():
    return
  workdir = pathlib.Path(workdir)
  (workdir / f'{stem}.json').write_text(json.dumps(results, indent=2) + '\n')
  with open(workdir / f'{stem}.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['criterion', 'rate', 'accuracy'])
    for name, c in results['criteria'].items():
      for rate, acc in zip(c['rates'], c['accuracy']):
        writer.writerow([name, rate, acc])
  png = 'curve.png' if stem == 'results' else f'{stem}.png'
  label = lambda n, c: f"{n} (A_PR {c['a_pr']:.3f})"  # noqa: E731
  plot.curves(workdir / png, next(iter(results['criteria'].values()))['rates'],
              {label(n, c): c['accuracy']
               for n, c in results['criteria'].items()},
              sems={label(n, c): c['accuracy_sem']
                    for n, c in results['criteria'].items()
                    if 'accuracy_sem' in c},
              unpruned=results['unpruned_accuracy'], xlabel=xlabel,
              title=title)
