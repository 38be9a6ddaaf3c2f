"""The search job: a config -> the library search (``pxp_jax.search``) ->
files in the workdir.

Hatefi et al., "Pruning By Explaining Revisited" (2024): per layer group
choose the LRP rule (and its eps and gamma), whether biases take relevance,
the ranking sign and a ViT's attention rule to maximise A_PR or the AUC
(``config.objective``) on ``config.validation_split``; then the best
composite is compared with the usual ones on ``config.test_split``. The
space, the objective, the driver and the storage / worker protocol are the
library's (``pxp_jax.search``); the job checks its config, builds the task
(``jobs.task``), runs the study in the storage of ``config.storage`` (SQLite
in the workdir by default, so a killed search continues where it stopped)
and writes ``best_composite.json``, ``trials.csv``, ``history.png``,
``importance.png`` and ``comparison.json/.png``.

Everything a search reads is checked when it starts, before any data is
loaded or program compiled (``_check``): bad fields are errors naming
``--config.FIELD``, a study file that cannot be read an error naming it.

Several workers (processes of ``experiments.search``) share one study
through ``config.storage`` (``pxp_jax.search.workers``): the study records
the config of the worker that created it, and a worker of another config is
refused. When the study is complete every worker writes its outputs: each
into a folder of its own, then moved file by file into the workdir (one
rename each, whole files only) under the workdir's lock, unless the workdir
already holds the outputs of more complete trials.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import pathlib
import shutil
from typing import Any

import numpy as np
import optuna
from matplotlib.figure import Figure

from pxp_jax import composites, distribute, rules
from pxp_jax import search as search_lib
from pxp_jax.jobs import analyses, logs, report, task as task_lib, validate
from pxp_jax.jobs import workdir as workdir_lib
from pxp_jax.search import storage as storage_lib
from pxp_jax.search import workers

STUDY = search_lib.STUDY
OBJECTIVES = search_lib.METRICS  # config.objective -> its name


def _check(config, n_trials, timeout) -> search_lib.Space:
  """Every config field and argument the search reads, checked before
  anything is loaded or compiled: ``--n_trials`` and ``--timeout``, the
  objective, the sampler, the storage's form, the fields the prune job
  shares (``validate.pruning``), the splits' names and the search space
  (built here: the ``Space`` checks itself)."""
  if isinstance(n_trials, bool) or not isinstance(n_trials, int) or (
      n_trials < 1):
    raise ValueError(f'--n_trials={n_trials}: the trials the study reaches '
                     'must be a whole number >= 1 (e.g. --n_trials=20)')
  if timeout is not None and not (isinstance(timeout, (int, float)) and
                                  math.isfinite(timeout) and timeout > 0):
    raise ValueError(f'--timeout={timeout}: give a number of seconds > 0, '
                     'or leave it out to run all --n_trials')
  if config.objective not in OBJECTIVES:
    raise ValueError(f'--config.objective must be one of {OBJECTIVES}, got '
                     f'{config.objective!r}')
  if config.sampler not in search_lib.SAMPLERS:
    raise ValueError(f'--config.sampler={config.sampler!r} is unknown; use '
                     f'{" or ".join(search_lib.SAMPLERS)}')
  if config.sampler == 'gp' and importlib.util.find_spec('torch') is None:
    raise ImportError("optuna's Gaussian-process sampler needs PyTorch: "
                      "pip install torch (or the 'test' extra), or use "
                      '--config.sampler=tpe')
  if not isinstance(config.storage, str):
    raise ValueError(f'--config.storage must be a string, got '
                     f'{config.storage!r}')
  validate.pruning(config)  # the fields the prune job shares
  for name in ('validation_split', 'test_split'):
    if not isinstance(config[name], str) or not config[name]:
      raise ValueError(f'--config.{name} must name a split of the dataset '
                       f'(e.g. validation, test), got {config[name]!r}')
  return _space(config)


def _space(config, preset: str = 'pxp_groups') -> search_lib.Space:
  """The ``Space`` of ``config.space``; its errors name the config field."""
  try:
    return search_lib.Space(preset=preset, **dict(config.space))
  except ValueError as error:
    raise ValueError(f'--config.space.{error}') from None


def _objective(task: task_lib.Task, config) -> search_lib.Objective:
  """The trials' objective on the task's objects: its reference samples
  (every count the space searches, drawn up front) and the validation
  batches (held in memory with ``config.cache_eval``, else streamed)."""
  split = config.validation_split
  references = {n: task.references(n) for n in dict.fromkeys(
      (config.n_per_class, *config.space.n_per_class))}  # the task's first
  size = len(task.source(split))  # after every reference draw
  step = min(task.local_batch(task.eval_batch_size), task.local_batch(size))
  batches = (task.batches(split, cached=True) if config.cache_eval else
             lambda: task.batches(split))
  return search_lib.Objective(
      task.model, task.variables, references, batches, task.units,
      config.rates, task.num_classes,
      classes=task.classes if task.other_classes == 'excluded' else None,
      metric=config.objective, batch_size=task.batch_size,
      absolute_tokens=task.absolute_tokens, precision=task.precision,
      remat=task.remat, mesh=task.device_mesh,
      n_batches=distribute.batch_count(size, step), eval_batch_size=step)


def search(config, workdir, *, n_trials: int, timeout: float | None = None
           ) -> dict[str, Any]:
  """Runs (or resumes) the search; writes its outputs; returns the
  comparison on the test split."""
  space = _check(config, n_trials, timeout)
  workdir = pathlib.Path(workdir).resolve()
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f'--workdir={workdir} is a file; name a folder '
                             '(new, or the one of the search to resume)')
  workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lib.critical(workdir):  # workers may start together
    workdir_lib.claim(workdir, config)
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours
  storage = _storage(config.storage, workdir)  # read before any loading
  tb = logs.writer(workdir, config)  # TensorBoard: workdir/tensorboard
  task = task_lib.Task.from_config(config)
  for field in ('validation_split', 'test_split'):
    task.split(config[field], field)  # fails before any compile
  space = _space(config, task.spec.pruning_composite(task.found))
  objective = _objective(task, config)
  study = _study(config, storage, workdir, space)

  def log(study, trial):
    if trial.state == optuna.trial.TrialState.COMPLETE:
      tb.write_scalars(trial.number, {
          f'trial/{config.objective}': trial.value,
          f'best/{config.objective}': study.best_trial.value})
      tb.flush()

  search_lib.run(space, objective, n_trials, storage=storage, study=study,
                 timeout=timeout, callbacks=[log])
  if not study.get_trials(deepcopy=False,
                          states=(optuna.trial.TrialState.COMPLETE,)):
    raise RuntimeError(f'the study has no complete trial after --timeout='
                       f'{timeout} seconds; give it more time (a trial takes '
                       'about as long as one evaluation sweep, the first one '
                       'also compiles)')
  best = study.best_trial
  staging = workdir / f'.staging-{workers.worker_name().replace(":", "-")}'
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  best_json = {**space.to_json(best.params),
               'signed': best.params['signed'],
               'n_per_class': best.params.get('n_per_class',
                                              config.n_per_class),
               f'validation_{config.objective}': best.value}
  (staging / 'best_composite.json').write_text(
      json.dumps(best_json, indent=2) + '\n')
  _write_trials(staging / 'trials.csv', study, config.objective)
  _plot_study(staging, study, OBJECTIVES[config.objective])
  comparison = _compare(task, space, objective, best.params, config)
  report.write(staging, 'comparison', comparison,
               xlabel=f'pruned {task.units_type} (%)',
               title=f'{config.model}: optimised LRP vs baselines '
               f'({config.test_split} split)')
  print(report.table(comparison), flush=True)
  logs.write_pruning(tb, comparison)
  tb.close()
  if config.faithfulness:
    _faithfulness(task, space, best.params, config, staging)
  _publish(staging, workdir)
  return comparison


def _study(config, storage, workdir: pathlib.Path,
           space: search_lib.Space) -> optuna.Study:
  """Creates or loads the study in ``storage`` (``workers.open_study``):
  the worker that creates it queues the usual composites and records the
  config, which every other worker must share."""
  recorded = json.dumps(_shared_config(config), sort_keys=True)
  study, created = workers.open_study(
      storage, STUDY, search_lib.make_sampler(config.sampler, config.seed),
      usual=space.usual(), attrs={'config': recorded})
  theirs = study.user_attrs.get('config')
  if not created and theirs is not None and theirs != recorded:
    theirs, ours = json.loads(theirs), json.loads(recorded)
    changed = sorted(k for k in set(theirs) | set(ours)
                     if theirs.get(k) != ours.get(k))
    raise ValueError(
        f'the study {STUDY!r} in {storage_lib.where(config.storage, workdir)} '
        f'is a search of a different config (differs in: '
        f'{", ".join(changed)}); every worker of a study runs the same '
        'config. Use the same config to resume it, or for a new search a new '
        '--workdir (or another journal file or database with '
        '--config.storage), or delete that study file, losing its trials.')
  return study


# Fields that may differ between the workers of one study (machines differ).
_PER_WORKER = ('data_dir', 'storage', 'tensorboard', 'mesh', 'batch_size',
               'eval_batch_size', 'remat', 'cache_eval', 'faithfulness',
               'perturbation', 'random_seeds', 'test_split')


def _shared_config(config) -> dict[str, Any]:
  full = json.loads(config.to_json_best_effort(sort_keys=True))
  return {k: v for k, v in full.items() if k not in _PER_WORKER}


def _storage(spec: str, workdir: pathlib.Path):
  """The optuna storage of ``config.storage`` (``storage.open``), with the
  search's study read once."""
  return storage_lib.open(spec, workdir, STUDY)


def _complete_rows(path: pathlib.Path) -> int:
  if not path.exists():
    return -1
  with open(path, newline='') as f:
    return sum(r['state'] == 'COMPLETE' for r in csv.DictReader(f))


def _publish(staging: pathlib.Path, workdir: pathlib.Path) -> None:
  """Moves the outputs in ``staging`` into ``workdir``, each file by one
  rename (whole files only), under the workdir's lock, unless the workdir
  holds the outputs of more complete trials (a worker that stopped earlier
  never replaces a later view)."""
  with workdir_lib.critical(workdir):
    if (_complete_rows(staging / 'trials.csv') >=
        _complete_rows(workdir / 'trials.csv')):
      for path in sorted(staging.iterdir()):
        os.replace(path, workdir / path.name)
  shutil.rmtree(staging, ignore_errors=True)


def _compare(task, space, objective, params, config) -> dict[str, Any]:
  """The optimised composite against the baselines, on the test split.

  ``epsilon`` is Epsilon on every layer and ``pxp_2021`` ZPlus without
  bias on every layer, the 2021 paper's composite (for a transformer: on
  the linear layers, with AttnLRP's other rules); a transformer adds CP-LRP
  (Epsilon everywhere), LXT's default. ``random`` averages
  ``config.random_seeds`` seeds (mean and standard error)."""
  eps, zplus = rules.epsilon(), rules.zplus(zero_bias=True)
  extra = {}
  if space.transformer:
    extra['cp_lrp'] = objective.scores(space.composite(attention='cp_lrp'))
  candidates = {
      'optimised': objective.scores(
          space.to_composite(params), signed=params['signed'],
          n_per_class=params.get('n_per_class')),
      'epsilon': objective.scores(space.composite(low=eps, middle=eps,
                                                  high=eps, fc=eps)),
      'pxp_2021': objective.scores(space.composite(low=zplus, middle=zplus,
                                                   high=zplus, fc=zplus)),
      **extra,
      'weight': task.score(task.criterion('weight')),
  }
  scores = {k: [v] for k, v in candidates.items()}
  scores['random'] = [task.score(task.criterion('random', seed=s))
                      for s in range(config.random_seeds)]
  results, _ = report.evaluate(task, scores, config.rates,
                               config.test_split, cached=config.cache_eval)
  return results


def _faithfulness(task, space, params, config, workdir) -> dict:
  """Region perturbation of the heatmaps of the optimised composite and the
  usual ones on ``config.faithfulness`` test images (faithfulness.json and
  .png): for a CNN Epsilon everywhere, the 2021 composite (ZPlus without
  bias), EpsilonPlus and EpsilonGammaBox; for a transformer AttnLRP and
  CP-LRP; and random heatmaps."""
  named = {'optimised': space.to_composite(params)}
  if space.transformer:
    named.update(attn_lrp=composites.attn_lrp(), cp_lrp=composites.cp_lrp())
  else:
    eps, zplus = rules.epsilon(), rules.zplus(zero_bias=True)
    named.update(
        epsilon=space.composite(low=eps, middle=eps, high=eps, fc=eps),
        pxp_2021=space.composite(low=zplus, middle=zplus, high=zplus,
                                 fc=zplus),
        epsilon_plus=composites.epsilon_plus(),
        epsilon_gamma_box=task.composite('epsilon_gamma_box')[0])
  results = analyses.write_faithfulness(
      task, named, config, config.test_split, workdir,
      title=f'{config.model}: optimised LRP vs the usual composites')
  heat = results['heatmaps']
  print('region perturbation (AOPC of the label logit / probability):\n'
        + '\n'.join(f"  {name:18s} {h['logit']['aopc']:8.4f}  "
                    f"{h['probability']['aopc']:.4f}"
                    for name, h in heat.items()), flush=True)
  return results


def _write_trials(path, study, objective: str):
  trials = study.get_trials(deepcopy=False)
  names = sorted({k for t in trials for k in t.params})
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['number', 'state', objective, 'seconds', 'compiles',
                     'worker', *names])
    for t in trials:
      seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                 if t.datetime_complete and t.datetime_start else '')
      writer.writerow([t.number, t.state.name, t.value, seconds,
                       t.user_attrs.get('compiles', ''),
                       t.user_attrs.get('worker', ''),
                       *[t.params.get(k, '') for k in names]])


def _plot_study(workdir: pathlib.Path, study, metric: str) -> None:
  """Optimisation history and parameter importances as PNG."""
  complete = [t for t in study.trials
              if t.state == optuna.trial.TrialState.COMPLETE]
  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  values = [t.value for t in complete]
  ax.plot([t.number for t in complete], values, 'o', label=f'trial {metric}')
  ax.plot([t.number for t in complete], np.maximum.accumulate(values), '-',
          label='best so far')
  ax.set_xlabel('trial')
  ax.set_ylabel(f'validation {metric}')
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / 'history.png', dpi=120)
  if len(complete) < 2:
    return
  importances = optuna.importance.get_param_importances(study)
  fig = Figure(figsize=(6, 0.35 * len(importances) + 1))
  ax = fig.subplots()
  names = list(importances)[::-1]
  ax.barh(names, [importances[n] for n in names])
  ax.set_xlabel('importance (fANOVA)')
  fig.tight_layout()
  fig.savefig(workdir / 'importance.png', dpi=120)
