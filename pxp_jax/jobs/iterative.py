"""Iterative PXP: prune a share, fine-tune, re-score, repeat.

Yeom et al. (Pattern Recognition 2021) prune iteratively: score the units
of the current model, prune the least scored up to the next rate, fine-tune,
and score again. ``iterative(config, workdir)`` runs that loop
(``pxp_jax.prune.iterative``) for each criterion of ``config.criteria``
(LRP, and the weight-magnitude baseline) up to ``config.target_rate`` in
steps of ``config.step`` of the units. The masks live in the optimiser
state (``prune.masking.masked``): pruned parameters are zero and stay zero
while fine-tuning; already pruned units score -inf, so the masks of
successive rounds nest.

Every round ``k`` is saved with orbax in ``workdir/rounds/<k>`` (each
criterion's variables, unit masks and optimiser state, and the results so
far); a killed run resumes after the last saved round and ends with the
same results. Writes (process 0) ``config.json``, ``results.json`` (per
criterion: rounds, rates, test accuracy before and after fine-tuning,
parameters and FLOPs of the slim model; and one-shot LRP without
fine-tuning at the same rates) and ``iterative.png`` (accuracy against
parameters).
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import pxp_jax
from pxp_jax import data, distribute
from pxp_jax.prune import slim as slim_lib
from pxp_jax.jobs import task as task_lib, validate
from pxp_jax.jobs import workdir as workdir_lib
from pxp_jax.prune import finetune, ranking

CRITERIA = validate.ITERATIVE_CRITERIA


def rates_of(target_rate: float, step: float) -> list[float]:
  """The cumulative pruning rate after each round: step, 2 step, ...,
  target_rate (the last round may prune less than ``step``)."""
  if not 0 < step <= target_rate < 1:
    raise ValueError(f'need 0 < step <= target_rate < 1; got step={step}, '
                     f'target_rate={target_rate}')
  rounds = math.ceil(target_rate / step - 1e-9)
  return [round(min((k + 1) * step, target_rate), 6) for k in range(rounds)]


@workdir_lib.exclusive(validate.iterative)
def iterative(config, workdir) -> dict[str, Any]:
  """Runs iterative pruning; returns the dict written to results.json."""
  rates = rates_of(float(config.target_rate), float(config.step))
  workdir_lib.claim(workdir, config)
  start = time.time()
  log = lambda message: _log(start, message)  # noqa: E731
  task = task_lib.Task.from_config(config)
  composite, extra = task.composite(config.composite, config.composite_json)
  signed = bool(extra.get('signed', config.signed))
  images, labels = task.references()
  size = task.preprocess.crop_size
  shape = (1, size, size, 3)
  total = sum(u.size for u in task.units.values())
  log(f'{config.model}: {total} {task.units_type} in {len(task.units)} '
      f'layers; rounds to {rates}')

  criteria = {name: task.criterion(name, composite=composite, signed=signed)
              for name in config.criteria}
  params0 = task.variables['params']
  frozen = {k: v for k, v in task.variables.items() if k != 'params'}
  ones = {k: np.ones(u.size, np.float32) for k, u in task.units.items()}
  state = {name: finetune.start(
      task.model, task.variables, task.found, units=list(task.units),
      learning_rate=config.fine_tune_lr,
      weight_decay=config.weight_decay)._asdict() for name in criteria}

  manager = ocp.CheckpointManager(
      workdir / 'rounds',
      options=ocp.CheckpointManagerOptions(create=True))
  done = manager.latest_step()
  if done is None:
    unpruned = _evaluate(task, params0, frozen, ones, config.eval_split,
                         shape)
    log(f'unpruned: accuracy {unpruned["accuracy"]:.4f}, '
        f'{unpruned["parameters"]} parameters')
    history = {name: _first_round(unpruned) for name in criteria}
    manager.save(0, args=_save_args(state, history))
    done = 0
  else:
    restored = manager.restore(done, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(_abstract, state)),
        results=ocp.args.JsonRestore()))
    state, history = restored['state'], restored['results']
    if task.device_mesh is not None:
      state = distribute.replicate(state, task.device_mesh)
    log(f'resuming after round {done} of {len(rates)}')

  rounds = {name: finetune.iterative(
      task.model, task.variables,
      functools.partial(_score, task, criterion, images, labels), rates,
      functools.partial(_batches, config, task), steps=config.fine_tune_steps,
      state=finetune.State(**state[name]), first=done, found=task.found,
      per_layer=config.per_layer, keep_one=config.keep_one,
      mesh=task.device_mesh) for name, criterion in criteria.items()}
  for k in range(done, len(rates)):
    for name in criteria:
      try:
        r = next(rounds[name])
      except FloatingPointError:
        raise FloatingPointError(
            f'the parameters are NaN or infinite after '
            f'{config.fine_tune_steps} fine-tuning steps; this round was not '
            f'saved. Lower --config.fine_tune_lr={config.fine_tune_lr} and '
            'run in a new --workdir') from None
      before = _accuracy(task, r.pruned['params'], frozen, r.masks,
                         config.eval_split)
      after = _evaluate(task, r.state.params, frozen, r.masks,
                        config.eval_split, shape)
      entry = history[name]
      entry['rounds'].append(r.round)
      entry['rates'].append(r.rate)
      entry['pruned_units'].append(
          int(sum(np.sum(m == 0) for m in r.masks.values())))
      entry['accuracy_before_fine_tuning'].append(before)
      for field in ('accuracy', 'parameters', 'flops'):
        entry[field].append(after[field])
      state[name] = r.state._asdict()
      log(f'round {r.round} {name}: {r.rate:.0%} pruned, accuracy '
          f'{before:.4f} -> {after["accuracy"]:.4f} after '
          f'{config.fine_tune_steps} steps, {after["parameters"]} parameters')
    manager.save(k + 1, args=_save_args(state, history))
  manager.wait_until_finished()
  manager.close()

  one_shot = dict(rates=[], accuracy=[], parameters=[], flops=[])
  if config.one_shot:
    one_shot = _one_shot(task, composite, signed, rates, config, frozen,
                         shape)
    log('one-shot lrp: ' + ', '.join(
        f'{r:.0%} {a:.4f}' for r, a in zip(one_shot['rates'],
                                           one_shot['accuracy'])))
  results = dict(
      model=config.model, units=task.units_type, total_units=total,
      eval_split=config.eval_split, fine_tune_steps=config.fine_tune_steps,
      criteria=history, one_shot={'lrp': one_shot},
      config=config.to_dict(), version=pxp_jax.__version__,
      **distribute.describe(task.device_mesh))
  results = json.loads(json.dumps(results))  # tuples -> lists, as written
  if distribute.is_primary():
    (workdir / 'results.json').write_text(
        json.dumps(results, indent=2) + '\n')
    _plot(results, workdir / 'iterative.png')
    print(table(results), flush=True)
  log(f'wrote results to {workdir}')
  return results


def table(results) -> str:
  """Rate, accuracy and parameters of every criterion, one line per rate."""
  names = list(results['criteria'])
  head = f'{"rate":>5}  ' + '  '.join(
      f'{n + " (iter.)":>22}' for n in names) + f'  {"lrp (one-shot)":>22}'
  lines = [head]
  shot = results['one_shot']['lrp']
  for i, rate in enumerate(results['criteria'][names[0]]['rates']):
    cells = []
    for n in names:
      e = results['criteria'][n]
      cells.append(f'{e["accuracy"][i]:.4f} {e["parameters"][i]:>9,}p')
    if rate in shot['rates']:
      j = shot['rates'].index(rate)
      cells.append(f'{shot["accuracy"][j]:.4f} {shot["parameters"][j]:>9,}p')
    else:  # round 0, the unpruned model, or no one-shot run
      cells.append(cells[0] if rate == 0 else '-')
    lines.append(f'{rate:>5.0%}  ' + '  '.join(f'{c:>22}' for c in cells))
  return '\n'.join(lines)


def _first_round(unpruned) -> dict:
  return dict(rounds=[0], rates=[0.0], pruned_units=[0],
              accuracy_before_fine_tuning=[unpruned['accuracy']],
              accuracy=[unpruned['accuracy']],
              parameters=[unpruned['parameters']], flops=[unpruned['flops']])


def _save_args(state, history):
  return ocp.args.Composite(state=ocp.args.StandardSave(state),
                            results=ocp.args.JsonSave(history))


def _abstract(x):
  return jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype)


def _score(task, criterion, images, labels, variables):
  return criterion.score(task.model, variables, images, labels, task.units,
                         batch_size=task.batch_size, mesh=task.device_mesh)


def _batches(config, task, k):
  """Round ``k``'s fine-tuning batches of the reference split (the train
  split), shuffled with their own seed: a resumed run sees the same."""
  return data.batches(
      distribute.process_part(task.split(config.reference_split)),
      task.preprocess, task.local_batch(config.fine_tune_batch),
      shuffle=True, seed=config.seed + k + 1, drop_remainder=True,
      classes=task.classes, num_epochs=None)


def _accuracy(task, params, frozen, unit_masks, split) -> float:
  rows = {'m': {k: np.asarray(v)[None] for k, v in unit_masks.items()}}
  return float(task.accuracy(rows, split,
                             variables={**frozen, 'params': params})['m'][0])


def _evaluate(task, params, frozen, unit_masks, split, shape) -> dict:
  """Test accuracy, and parameters and FLOPs of the slim model (pruned
  units removed where the family allows; ``pxp_jax.prune.slim``)."""
  variables = {**frozen, 'params': params}
  size = _size(task, variables, unit_masks, shape)
  return dict(accuracy=_accuracy(task, params, frozen, unit_masks, split),
              **size)


def _size(task, variables, unit_masks, shape) -> dict:
  small = slim_lib.slim(task.model, jax.device_get(variables),
                        {k: np.asarray(v) for k, v in unit_masks.items()},
                        shape)
  report = slim_lib.size_report(small.model, small.variables, shape,
                                repeats=1, warmup=0)
  return dict(parameters=int(report.parameters), flops=float(report.flops))


def _one_shot(task, composite, signed, rates, config, frozen, shape) -> dict:
  """LRP scores of the unpruned model, masks at ``rates``, no fine-tuning
  (the one-shot job's protocol)."""
  scores = task.score(task.criterion('lrp', composite=composite,
                                     signed=signed))
  rows = ranking.masks(scores, rates, per_layer=config.per_layer,
                       keep_one=config.keep_one)
  accuracy = task.accuracy({'lrp': rows}, config.eval_split)['lrp']
  out = dict(rates=list(rates), accuracy=[float(a) for a in accuracy],
             parameters=[], flops=[])
  for i in range(len(rates)):
    size = _size(task, {**frozen, 'params': task.variables['params']},
                 {k: np.asarray(m[i]) for k, m in rows.items()}, shape)
    out['parameters'].append(size['parameters'])
    out['flops'].append(size['flops'])
  return out


def _plot(results, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  labels = {'lrp': 'iterative LRP', 'weight': 'iterative weight (magnitude)'}
  for name, e in results['criteria'].items():
    ax.plot(e['parameters'], e['accuracy'], 'o-',
            label=labels.get(name, f'iterative {name}'))
  first = next(iter(results['criteria'].values()))
  shot = results['one_shot']['lrp']
  if shot['rates']:
    ax.plot([first['parameters'][0], *shot['parameters']],
            [first['accuracy'][0], *shot['accuracy']], 's--',
            label='one-shot LRP, no fine-tuning')
  ax.invert_xaxis()
  ax.set_xlabel('parameters (slim model)')
  ax.set_ylabel(f'{results["eval_split"]} accuracy')
  ax.set_title(f'{results["model"]}: iterative pruning of '
               f'{results["units"]}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _log(start, message):
  if distribute.is_primary():
    print(f'[{time.time() - start:6.1f}s] {message}', flush=True)
