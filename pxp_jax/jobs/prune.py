"""The PXP pruning job: score units by every criterion, prune, evaluate.

``prune(config, workdir)`` runs the experiment of ``experiments/prune.py``
(the config is described in ``experiments/configs/prune.py``) and writes
into ``workdir``: ``config.json``, ``scores/<criterion>`` (orbax, reused by a
re-run), ``results.json``, ``results.csv``, ``curve.png`` and
``heatmaps.png``; with ``config.slim`` (default: lrp) a ``size`` entry
in results.json (per slimmed criterion, per-rate lists) and ``size.png`` (``jobs.sizes``);
with ``config.export_rate`` the slim LRP-pruned model in
``pruned_<rate>``; with ``config.stability`` ``stability.json`` and
``stability.png`` (heatmaps of the model pruned by LRP at each rate against
the unpruned model's), with ``config.faithfulness`` ``faithfulness.json``
and ``faithfulness.png`` (region perturbation of the heatmaps).
"""

from __future__ import annotations

import time
from typing import Any

import jax.numpy as jnp
import numpy as np

import pxp_jax
from pxp_jax import data, distribute, plot
from pxp_jax.jobs import analyses, logs, report, sizes, task as task_lib
from pxp_jax.jobs import validate
from pxp_jax.jobs import workdir as workdir_lib
from pxp_jax.lrp import attribution as attribute_lib
from pxp_jax.prune import finetune, ranking

# Per-layer normalisation (the 2021 reference's --norm): weight and LRP by
# their layer sum (L1), gradient and Taylor by their L2 norm.
NORMS = {'lrp': 1, 'weight': 1, 'gradient': 2, 'taylor': 2,
         'gradient_logit': 2, 'taylor_logit': 2}


@workdir_lib.exclusive(validate.prune)
def prune(config, workdir) -> dict[str, Any]:
  """Runs the pruning experiment; returns the dict written to results.json."""
  workdir_lib.claim(workdir, config)
  tb = logs.writer(workdir, config)  # TensorBoard: workdir/tensorboard
  start = time.time()
  log = lambda message: _log(start, message)  # noqa: E731
  log(f'loading {config.model}')
  task = task_lib.Task.from_config(config)
  task.split(config.eval_split, 'eval_split')  # an unknown split fails now
  if config.faithfulness:
    analyses.check_patch(task, config.perturbation.patch_size)
  composite, extra = task.composite(config.composite, config.composite_json)
  signed = bool(extra.get('signed', config.signed))
  # A searched composite comes with the sample count it was searched at.
  n_per_class = extra.get('n_per_class', config.n_per_class)
  if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or (
      n_per_class < 1):
    raise ValueError(f'{config.composite_json} gives n_per_class='
                     f'{n_per_class!r}; it must be an integer >= 1 (remove it '
                     'to use --config.n_per_class)')
  if n_per_class != config.n_per_class:
    log(f'{config.composite_json} was searched with n_per_class='
        f'{n_per_class}: using it')
  images, labels = task.references(n_per_class)
  log(f'{len(labels)} reference samples, {task.units_type}: '
      f'{sum(u.size for u in task.units.values())} units in '
      f'{len(task.units)} layers')

  scores = {}
  for name in config.criteria:
    seeds = range(config.random_seeds) if name == 'random' else [0]
    runs = []
    for seed in seeds:
      key = f'random_{seed}' if name == 'random' else name
      criterion = task.criterion(name, composite=composite, signed=signed,
                                 seed=seed, ig_steps=config.ig_steps,
                                 ig_form=config.ig_form)
      s = workdir_lib.cached_scores(
          workdir / 'scores' / key,
          lambda c=criterion: task.score(c, n_per_class),
          {k: u.size for k, u in task.units.items()})
      if config.normalize and name in NORMS:
        s = ranking.normalize(s, NORMS[name])
      runs.append(s)
      log(f'scored {key}')
    scores[name] = runs

  rates = list(config.rates)
  results, masks = report.evaluate(task, scores, rates, config.eval_split,
                                   per_layer=config.per_layer,
                                   keep_one=config.keep_one)
  log(f'evaluated {len(scores)} criteria x {len(rates)} rates')
  results.update(config=config.to_dict(), version=pxp_jax.__version__,
                 **distribute.describe(task.device_mesh))
  if config.fine_tune_steps:
    _fine_tune_all(config, task, masks, rates, results, log)
  sizes.measure(task, masks, rates, config, results, log)
  report.write(workdir, 'results', results, xlabel=f'pruned {task.units_type} (%)',
               title=f'{config.model}: pruning without fine-tuning')
  sizes.plot_sizes(workdir, results, f'{config.model}: slim models, '
                   f'{results["split"]} accuracy without fine-tuning')
  sizes.export(task, masks, rates, config, results, workdir, log)
  logs.write_pruning(tb, results)
  tb.close()
  if config.heatmaps:  # computed by every process, drawn by process 0
    count = min(config.heatmaps, len(labels))
    chosen = np.linspace(0, len(labels) - 1, count).astype(int)
    result = attribute_lib.attribute(
        task.model, task.variables, jnp.asarray(images[chosen]),
        jnp.asarray(labels[chosen]), composite)
    if distribute.is_primary():
      plot.heatmaps(images[chosen], np.asarray(result.input),
                    workdir / 'heatmaps.png', mean=task.preprocess.mean,
                    std=task.preprocess.std,
                    titles=[f'label {int(t)}' for t in labels[chosen]],
                    suptitle=f'{config.model}: LRP input relevance')
  if config.stability:
    analyses.write_stability(task, composite, masks['lrp'][0], rates, config,
                             workdir)
    log(f'heatmap stability of {config.stability} images')
  if config.faithfulness:
    analyses.write_faithfulness(
        task, {'pruning_composite': composite,
               'heatmap_composite': task.heatmap_composite()},
        config, config.eval_split, workdir,
        title=f'{config.model}: region perturbation')
    log(f'region perturbation of {config.faithfulness} images')
  if distribute.is_primary():
    print(report.table(results), flush=True)
  log(f'wrote results to {workdir}')
  return results


def _fine_tune_all(config, task, masks, rates, results, log):
  """Fine-tunes the model pruned by each criterion at ``fine_tune_rate`` on
  the train split and records the test accuracy before and after."""
  rate = float(config.fine_tune_rate)  # one of the rates (jobs.validate)
  r = [float(x) for x in rates].index(rate)
  for name, summary in results['criteria'].items():
    row = {k: v[r] for k, v in masks[name][0].items()}
    tuned = finetune.fine_tune(
        task.model, task.variables, row,
        data.batches(distribute.process_part(task.split(config.reference_split)),
                     task.preprocess,
                     task.local_batch(config.fine_tune_batch),
                     shuffle=True, seed=config.seed, drop_remainder=True,
                     classes=task.classes, num_epochs=None),
        steps=config.fine_tune_steps, learning_rate=config.fine_tune_lr,
        mesh=task.device_mesh)
    before = (summary['accuracy_per_seed'][0][r]
              if 'accuracy_per_seed' in summary else summary['accuracy'][r])
    after = task.accuracy({name: {k: v[None] for k, v in row.items()}},
                          config.eval_split, variables=tuned)[name][0]
    summary['fine_tuned'] = dict(
        rate=rate, steps=config.fine_tune_steps,
        accuracy_before=float(before), accuracy_after=float(after))
    log(f'fine-tuned {name} at {rate:.0%}: {before:.4f} -> {after:.4f}')


def _log(start, message):
  if distribute.is_primary():
    print(f'[{time.time() - start:6.1f}s] {message}', flush=True)
