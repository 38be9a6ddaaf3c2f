"""The PXP pruning job: score units by every criterion, prune, evaluate.

``prune(config, workdir)`` runs the whole experiment of
``experiments/prune.py`` (the config is described in
``experiments/configs/prune.py``) and writes into ``workdir``:
``config.json``, ``scores/<criterion>`` (orbax, reused by a re-run),
``results.json``, ``results.csv``, ``curve.png`` and ``heatmaps.png``.
"""

from __future__ import annotations

import csv
import json
import pathlib
import time
from typing import Any

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import pxp_jax
from pxp_jax import (checkpoints, composites, criteria, data, finetune, plot,
                     pruning, relevance, structure)
from pxp_jax import workdir as workdir_lib

REPORTED_RATES = (0.3, 0.5, 0.7)


def composite_for(config, model, preprocess
                  ) -> tuple[composites.Composite, bool]:
  """The LRP composite the config names (a preset, a JSON file, or the
  default: the 2021 paper's groups for CNNs, AttnLRP for ViTs), and whether
  units are ranked by signed relevance: ``config.signed``, or the JSON
  file's ``"signed"`` where it has one (the search's best_composite.json)."""
  if config.composite_json:
    path = pathlib.Path(config.composite_json)
    if not path.is_file():
      raise FileNotFoundError(f'--config.composite_json={path} does not exist')
    spec = json.loads(path.read_text())
    return composites.from_json(spec), bool(spec.get('signed', config.signed))
  return _named_composite(config, model, preprocess), config.signed


def _named_composite(config, model, preprocess) -> composites.Composite:
  if config.composite:
    kwargs = {}
    if config.composite == 'epsilon_gamma_box':
      mean, std = np.asarray(preprocess.mean), np.asarray(preprocess.std)
      kwargs = dict(low=(0 - mean) / std, high=(1 - mean) / std)
    elif config.composite == 'vit_groups':
      kwargs = dict(depth=model.depth)
    return composites.get(config.composite, **kwargs)
  if isinstance(model, pxp_jax.models.ViT):
    return composites.attn_lrp()
  return composites.pxp_groups()


def prune(config, workdir) -> dict[str, Any]:
  """Runs the pruning experiment; returns the dict written to results.json."""
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  workdir_lib.claim(workdir, config)
  start = time.time()
  _log(start, f'loading {config.model}')
  model, variables = checkpoints.load(config.model)
  recipe = checkpoints.recipe(config.model)
  preprocess = data.Preprocess(**recipe['preprocess'])
  dataset = config.dataset or recipe['dataset']
  split = lambda s: data.load(dataset, s, data_dir=config.data_dir or None)  # noqa: E731
  classes = list(config.classes) if config.classes else None
  references = split(config.reference_split)
  images, labels = data.reference_batch(
      references, preprocess, config.n_per_class, seed=config.seed,
      classes=classes)
  found = structure.trace(model, variables, images[:1].shape)
  units = pruning.prunable(found, config.units)
  composite, signed = composite_for(config, model, preprocess)
  _log(start, f'{len(labels)} reference samples, {config.units}: '
       f'{sum(pruning.sizes(units).values())} units in {len(units)} layers')

  scores = {}
  names = list(config.criteria)
  for name in names:
    seeds = range(config.random_seeds) if name == 'random' else [None]
    for seed in seeds:
      key = name if seed is None else f'random_{seed}'
      scores[key] = _cached_scores(workdir / 'scores' / key, lambda: criteria.score(
          name, model, variables, images, labels, units, composite=composite,
          batch_size=config.batch_size, signed=signed,
          absolute_tokens=config.absolute_tokens,
          seed=config.seed + (seed or 0), ig_steps=config.ig_steps))
      if config.normalize and name in ('weight', 'gradient', 'taylor'):
        scores[key] = pruning.normalize(scores[key],
                                        1 if name == 'weight' else 2)
      _log(start, f'scored {key}')

  rates = list(config.rates)
  per_criterion = {key: pruning.masks(s, rates, per_layer=config.per_layer,
                                      keep_one=config.keep_one)
                   for key, s in scores.items()}
  stacked = pruning.stack(per_criterion)
  test = split(config.eval_split)
  num_classes = recipe['num_classes']
  accuracy = pruning.sweep_accuracy(
      model, variables, data.batches(test, preprocess, config.eval_batch_size,
                                     classes=classes),
      stacked, num_classes, classes)
  _log(start, f'evaluated {len(scores)} criteria x {len(rates)} rates')
  unpruned = float(accuracy[0])  # rate 0 prunes nothing
  results = {'unpruned_accuracy': unpruned, 'config': config.to_dict(),
             'version': pxp_jax.__version__, 'criteria': {}}
  rows = {key: accuracy[i * len(rates):(i + 1) * len(rates)]
          for i, key in enumerate(scores)}
  for name in names:
    if name == 'random':
      runs = np.stack([rows[f'random_{s}'] for s in range(config.random_seeds)])
      summary = pruning.summarize(rates, runs.mean(0), unpruned)
      summary['accuracy_per_seed'] = runs.tolist()
    else:
      summary = pruning.summarize(rates, rows[name], unpruned)
    results['criteria'][name] = summary
  if config.fine_tune_steps:
    _fine_tune_all(config, model, variables, preprocess, split, classes,
                   num_classes, per_criterion, rates, rows, results, start)
  (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
  _write_csv(workdir / 'results.csv', results)
  _plot_curve(workdir / 'curve.png', results, config)
  if config.heatmaps:
    count = min(config.heatmaps, len(labels))
    chosen = np.linspace(0, len(labels) - 1, count).astype(int)
    result = relevance.attribute(model, variables, jnp.asarray(images[chosen]),
                                 jnp.asarray(labels[chosen]), composite)
    plot.heatmaps(images[chosen], np.asarray(result.input),
                  workdir / 'heatmaps.png', mean=preprocess.mean,
                  std=preprocess.std,
                  titles=[f'label {int(t)}' for t in labels[chosen]],
                  suptitle=f'{config.model}: LRP input relevance')
  print(table(results), flush=True)
  _log(start, f'wrote results to {workdir}')
  return results


def _fine_tune_all(config, model, variables, preprocess, split, classes,
                   num_classes, per_criterion, rates, rows, results, start):
  """Fine-tunes the model pruned by each criterion at ``fine_tune_rate`` on
  the train split and records the test accuracy before and after."""
  rate = float(config.fine_tune_rate)
  if rate not in rates:
    raise ValueError(f'fine_tune_rate {rate} is not one of the rates {rates}')
  r = rates.index(rate)
  train_split = split(config.reference_split)
  test = split(config.eval_split)
  for name in results['criteria']:
    key = 'random_0' if name == 'random' else name
    masks_row = {k: v[r] for k, v in per_criterion[key].items()}
    tuned = finetune.fine_tune(
        model, variables, masks_row,
        data.batches(train_split, preprocess, config.fine_tune_batch,
                     shuffle=True, seed=config.seed, drop_remainder=True,
                     classes=classes, num_epochs=None),
        steps=config.fine_tune_steps, learning_rate=config.fine_tune_lr)
    after = pruning.sweep_accuracy(
        model, tuned, data.batches(test, preprocess, config.eval_batch_size,
                                   classes=classes),
        {k: v[None] for k, v in masks_row.items()}, num_classes, classes)[0]
    results['criteria'][name]['fine_tuned'] = dict(
        rate=rate, steps=config.fine_tune_steps,
        accuracy_before=float(rows[key][r]), accuracy_after=float(after))
    _log(start, f'fine-tuned {name} at {rate:.0%}: '
         f'{rows[key][r]:.4f} -> {after:.4f}')


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
  return '\n'.join([f"unpruned accuracy {results['unpruned_accuracy']:.4f}",
                    fmt(head), *map(fmt, lines)])


def _write_csv(path, results):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['criterion', 'rate', 'accuracy'])
    for name, c in results['criteria'].items():
      for rate, acc in zip(c['rates'], c['accuracy']):
        writer.writerow([name, rate, acc])


def _plot_curve(path, results, config):
  plot.curves(path, next(iter(results['criteria'].values()))['rates'],
              {f"{n} (A_PR {c['a_pr']:.3f})": c['accuracy']
               for n, c in results['criteria'].items()},
              unpruned=results['unpruned_accuracy'],
              xlabel=f'pruned {config.units} (%)',
              title=f'{config.model}: pruning without fine-tuning')


def _cached_scores(path: pathlib.Path, compute) -> dict[str, np.ndarray]:
  """Scores saved with orbax at ``path``; computed once."""
  if path.exists():
    with ocp.StandardCheckpointer() as ckptr:
      return {k: np.asarray(v) for k, v in ckptr.restore(path).items()}
  scores = compute()
  path.parent.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {k: np.asarray(v) for k, v in scores.items()})
  return scores


def _log(start, message):
  print(f'[{time.time() - start:6.1f}s] {message}', flush=True)
