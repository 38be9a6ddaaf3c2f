"""Criteria -> masks -> accuracy curves -> summaries, tables and plots: the
one evaluation the prune job and the search share."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from pxp_jax import plot
from pxp_jax.prune import metrics, ranking

REPORTED_RATES = (0.3, 0.5, 0.7)


def evaluate(task, scores: Mapping[str, Sequence[Mapping]], rates, split: str,
             *, per_layer: bool = False, keep_one: bool = False,
             cached: bool = False) -> tuple[dict, dict]:
  """Prunes by every criterion at every rate and evaluates on ``split``.

  Args:
    task: the ``Task``.
    scores: criterion name -> its scores, one per seed (the curves of
      several seeds are averaged, e.g. ``random``).
    rates: pruning rates.
    split: the evaluation split.
    per_layer, keep_one: see ``pxp_jax.prune.ranking``.
    cached: hold the split in memory (a search evaluates it every trial).

  Returns:
    ``(results, masks)``: ``{'unpruned_accuracy', 'split', 'criteria':
    {name: summary}}`` (``accuracy_per_seed`` where several seeds) and
    ``{name: [masks per seed]}``.
  """
  rates = list(rates)
  masks = {name: [ranking.masks(s, rates, per_layer=per_layer,
                                  keep_one=keep_one) for s in runs]
           for name, runs in scores.items()}
  flat = {(name, i): m for name, runs in masks.items()
          for i, m in enumerate(runs)}
  accuracy = task.accuracy({f'{n}#{i}': m for (n, i), m in flat.items()},
                           split, cached=cached)
  curves = {name: np.stack([accuracy[f'{name}#{i}'] for i in range(len(runs))])
            for name, runs in masks.items()}
  unpruned = float(next(iter(curves.values()))[0, 0])  # rate 0 prunes nothing
  results = {'unpruned_accuracy': unpruned, 'split': split, 'criteria': {}}
  for name, runs in curves.items():
    summary = metrics.summarize(rates, runs.mean(0), unpruned)
    if len(runs) > 1:
      summary['accuracy_per_seed'] = runs.tolist()
    results['criteria'][name] = summary
  return results, masks


def table(results) -> str:
  """Criteria x (A_PR, AUC, Top-PR, accuracy at 30/50/70% pruned)."""
  head = ['criterion', 'A_PR', 'AUC', 'Top-PR'] + [
      f'acc@{int(r * 100)}%' for r in REPORTED_RATES]
  lines = []
  for name, c in results['criteria'].items():
    at = dict(zip(np.round(c['rates'], 4), c['accuracy']))
    lines.append([name, f"{c['a_pr']:.4f}", f"{c['auc']:.4f}",
                  f"{c['top_pr']:.2f}"] + [
                      f'{at[r]:.4f}' if r in at else '-'
                      for r in REPORTED_RATES])
  widths = [max(len(h), *(len(l[i]) for l in lines))
            for i, h in enumerate(head)]
  fmt = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
  return '\n'.join([f"unpruned accuracy {results['unpruned_accuracy']:.4f} "
                    f"({results['split']} split)", fmt(head),
                    *map(fmt, lines)])


def write(workdir: pathlib.Path, stem: str, results, *, title: str,
          xlabel: str) -> None:
  """``stem.json``, ``stem.csv`` (criterion, rate, accuracy) and the curves
  as ``<png>``: ``curve.png`` for ``results``, else ``stem.png``."""
  workdir = pathlib.Path(workdir)
  (workdir / f'{stem}.json').write_text(json.dumps(results, indent=2) + '\n')
  with open(workdir / f'{stem}.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['criterion', 'rate', 'accuracy'])
    for name, c in results['criteria'].items():
      for rate, acc in zip(c['rates'], c['accuracy']):
        writer.writerow([name, rate, acc])
  png = 'curve.png' if stem == 'results' else f'{stem}.png'
  plot.curves(workdir / png, next(iter(results['criteria'].values()))['rates'],
              {f"{n} (A_PR {c['a_pr']:.3f})": c['accuracy']
               for n, c in results['criteria'].items()},
              unpruned=results['unpruned_accuracy'], xlabel=xlabel,
              title=title)
