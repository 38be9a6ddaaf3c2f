"""Optimising the attribution for pruning: a Bayesian search over composites.

Hatefi et al., "Pruning By Explaining Revisited" (2024): per layer group
(low, middle and high convs by stage; dense layers) choose the LRP rule
among Epsilon, Gamma, ZPlus and AlphaBeta(2, 1), here together with the eps
and gamma the reference leaves at defaults, whether biases take relevance,
and whether units are ranked by |R| or by signed R, to maximise A_PR (mean
accuracy over pruning rates) or the AUC (``config.objective``). Unlike the
reference, the search scores trials on a validation split and the final
comparison is on the test split. For ViTs the groups are blocks (the patch
embedding is low, the head is fc) and the attention rule (AttnLRP, the
two z+ softmax rules or CP-LRP) is searched too.

Every trial reuses the same compiled programs, the relevance collection
(rules, their bias option and the per-token absolute value are array
leaves: ``dynamic_rules=True``; a ViT's attention rules take three
programs, AttnLRP, the two z+ rules and CP-LRP, whose rules differ in kind)
and the evaluation sweep (masks are arguments). Trials are stored by optuna (SQLite in the workdir by
default), so a killed search continues where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np
import optuna
from matplotlib.figure import Figure

from pxp_jax import composites, rules
from pxp_jax.jobs import analyses, logs, report, task as task_lib
from pxp_jax.jobs import workdir as workdir_lib

STUDY = 'pxp_search'
OBJECTIVES = {'a_pr': 'A_PR', 'auc': 'AUC'}  # config.objective -> its name


def _validate_space(space) -> None:
  if not space.groups:
    raise ValueError('the search space has no layer groups (space.groups)')
  if not space.rules:
    raise ValueError('the search space has no rules to choose (space.rules)')
  unknown = set(space.rules) - set(rules.searchable())
  if unknown:
    raise ValueError(f'space.rules has {sorted(unknown)}; choose among '
                     f'{rules.searchable()}')
  unknown = set(space.groups) - set(composites.GROUPS)
  if unknown:
    raise ValueError(f'space.groups has {sorted(unknown)}; groups are '
                     f'{composites.GROUPS}')
  for name in ('eps', 'gamma'):
    low, high = getattr(space, name)
    if not 0 < low <= high:
      raise ValueError(f'space.{name} must satisfy 0 < low <= high, got '
                       f'({low}, {high})')
  if not space.signed:
    raise ValueError('space.signed must allow False, True or both')
  if not space.zero_bias:
    raise ValueError('space.zero_bias must allow False, True or both')
  if space.boundaries and (len(space.boundaries) != 2 or not
                           0 <= space.boundaries[0] <= space.boundaries[1] <= 1):
    raise ValueError('space.boundaries must be () for the stages or (b1, b2) '
                     f'with 0 <= b1 <= b2 <= 1, got {space.boundaries}')
  unknown = set(space.attention) - set(composites.ATTENTION_RULES)
  if not space.attention or unknown:
    raise ValueError(f'space.attention must name one or more of '
                     f'{composites.ATTENTION_RULES}, got {space.attention}')


def composite_from_params(params: dict[str, Any], space,
                          preset: str = 'pxp_groups') -> composites.Composite:
  """The composite of a trial's parameters: ``preset`` (``pxp_groups`` for a
  CNN, ``vit_groups`` for a transformer) with the chosen rule of each group
  in the space (the others keep the preset's defaults) and, for a
  transformer, the chosen attention rule."""
  chosen = {}
  for group in space.groups:
    chosen[group] = rules.linear_rule(
        params[f'{group}.rule'], eps=params[f'{group}.eps'],
        gamma=params[f'{group}.gamma'], alpha=2.0, beta=1.0,
        zero_bias=params.get('zero_bias', False))
  boundaries = tuple(space.boundaries) or None  # (): the family's stages
  if 'attention' in params:  # a transformer's attention rule
    chosen['attention'] = params['attention']
  return composites.get(preset, **chosen, boundaries=boundaries)


def _suggest(trial: optuna.Trial, space, vit: bool) -> dict[str, Any]:
  for group in space.groups:
    trial.suggest_categorical(f'{group}.rule', list(space.rules))
    trial.suggest_float(f'{group}.eps', *space.eps, log=True)
    trial.suggest_float(f'{group}.gamma', *space.gamma, log=True)
  if vit:
    trial.suggest_categorical('attention', list(space.attention))
  trial.suggest_categorical('zero_bias', list(space.zero_bias))
  trial.suggest_categorical('signed', list(space.signed))
  if space.n_per_class:
    trial.suggest_categorical('n_per_class', list(space.n_per_class))
  return trial.params


class _Problem:
  """The task with the search's two programs: relevance with dynamic rules
  and the evaluation sweep over cached validation batches."""

  def __init__(self, config):
    self.config = config
    self.task = task_lib.Task.from_config(config)
    for n in config.space.n_per_class:  # prepared up front: trials only run
      self.task.references(n)
    self.task.references()
    self.preset = self.task.spec.pruning_composite(self.task.found)
    self.transformer = self.task.spec.is_transformer(self.task.found)
    self.rates = list(config.rates)

  def scores(self, criterion, composite=None, signed=False, seed=0,
             n_per_class=None):
    # Batches are padded to batch_size: any sample count, one program.
    return self.task.score(
        self.task.criterion(criterion, composite=composite, signed=signed,
                            seed=seed, dynamic_rules=True), n_per_class)

  def composite(self, params: dict[str, Any]) -> composites.Composite:
    return composite_from_params(params, self.config.space, self.preset)

  def objective(self, scores, split: str) -> float:
    """The search's objective (A_PR or AUC) of ``scores`` on ``split``."""
    results, _ = report.evaluate(self.task, {'lrp': [scores]}, self.rates,
                                 split, cached=self.config.cache_eval)
    return results['criteria']['lrp'][self.config.objective]


def search(config, workdir, *, n_trials: int, timeout: float | None = None
           ) -> dict[str, Any]:
  """Runs (or resumes) the search; writes its outputs; returns the
  comparison on the test split."""
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  _validate_space(config.space)
  if config.objective not in OBJECTIVES:
    raise ValueError(f'objective must be one of {OBJECTIVES}, got '
                     f'{config.objective!r}')
  workdir_lib.claim(workdir, config)
  tb = logs.writer(workdir, config)  # TensorBoard: workdir/tensorboard
  start = time.time()
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours
  problem = _Problem(config)
  study = _study(config, workdir, vit=problem.transformer)

  def objective(trial):
    with _counting_compiles() as compiles:
      params = _suggest(trial, config.space, vit=problem.transformer)
      composite = problem.composite(params)
      scores = problem.scores('lrp', composite, signed=params['signed'],
                              n_per_class=params.get('n_per_class'))
      value = problem.objective(scores, config.validation_split)
    trial.set_user_attr('compiles', compiles[0])
    return value

  metric = OBJECTIVES[config.objective]

  def progress(study, trial):
    best = study.best_trial
    print(f'[{time.time() - start:6.1f}s] trial {trial.number}: {metric} '
          f'{trial.value:.4f} (best {best.value:.4f}, trial {best.number}); '
          f'{trial.user_attrs["compiles"]} XLA compilations', flush=True)
    tb.write_scalars(trial.number, {f'trial/{config.objective}': trial.value,
                                    f'best/{config.objective}': best.value})
    tb.flush()

  done = sum(t.state == optuna.trial.TrialState.COMPLETE
             for t in study.trials)
  if done < n_trials:
    print(f'{done} trials done, running {n_trials - done} more', flush=True)
    study.optimize(objective, n_trials=n_trials - done,
                   timeout=timeout or None, callbacks=[progress])
  best = study.best_trial
  best_composite = problem.composite(best.params)
  args = {g: rules.to_json(best_composite[g]) for g in composites.GROUPS}
  args['boundaries'] = list(config.space.boundaries)
  if problem.transformer:
    args['attention'] = best.params['attention']
  best_json = {'preset': problem.preset,
               'args': args,
               'signed': best.params['signed'],
               'n_per_class': best.params.get('n_per_class',
                                              config.n_per_class),
               f'validation_{config.objective}': best.value}
  (workdir / 'best_composite.json').write_text(
      json.dumps(best_json, indent=2) + '\n')
  _write_trials(workdir / 'trials.csv', study, config.objective)
  _plot_study(workdir, study, metric)
  comparison = _compare(problem, best.params, config)
  report.write(workdir, 'comparison', comparison,
               xlabel=f'pruned {problem.task.units_type} (%)',
               title=f'{config.model}: optimised LRP vs baselines '
               f'({config.test_split} split)')
  print(report.table(comparison), flush=True)
  logs.write_pruning(tb, comparison)
  tb.close()
  if config.faithfulness:
    _faithfulness(problem, best.params, config, workdir)
  return comparison


@contextlib.contextmanager
def _counting_compiles():
  """``[n]``: the XLA compilations inside the block, counted by jax's
  monitoring event for each backend compile."""
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == _COMPILE_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def _study(config, workdir: pathlib.Path, vit: bool) -> optuna.Study:
  storage = config.storage or f'sqlite:///{workdir / "study.db"}'
  if config.sampler == 'gp':
    import importlib.util  # pylint: disable=g-import-not-at-top
    if importlib.util.find_spec('torch') is None:
      raise ImportError("optuna's Gaussian-process sampler needs PyTorch: "
                        "pip install torch (or the 'test' extra), or use "
                        '--config.sampler=tpe')
  samplers = {'gp': optuna.samplers.GPSampler,
              'tpe': optuna.samplers.TPESampler}
  if config.sampler not in samplers:
    raise ValueError(f'unknown sampler {config.sampler!r}; use gp or tpe')
  try:
    study = optuna.create_study(study_name=STUDY, storage=storage,
                                direction='maximize', load_if_exists=True)
  except Exception as error:  # pylint: disable=broad-except
    raise ConnectionError(f'cannot open the optuna storage {storage!r}: '
                          f'{error}') from error
  # Seeded by the trials so far: a resumed or extended search draws new
  # parameters instead of repeating the first run's.
  study.sampler = samplers[config.sampler](seed=config.seed + len(study.trials))
  if not study.trials:  # start from the usual composites
    for params in _usual_params(config.space, vit):
      study.enqueue_trial(params)
  # A trial cut by a kill is retried: mark it failed and queue its params.
  for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(trial.params)
  return study


def _usual_params(space, vit: bool) -> list[dict[str, Any]]:
  """The usual composites as trial parameters, those the space contains, so
  that the best trial is never worse on validation than any of them: for a
  CNN the 2021 paper's (ZPlus without bias everywhere) and Epsilon
  everywhere; for a ViT AttnLRP (Epsilon everywhere) and CP-LRP. All rank
  by |R|, at eps 1e-6 and gamma 0.25."""
  usual = ([('epsilon', 'attn_lrp', False), ('epsilon', 'cp_lrp', False)]
           if vit else [('zplus', None, True), ('epsilon', None, False)])
  out = []
  for rule, attention, zero_bias in usual:
    if (rule not in space.rules or zero_bias not in space.zero_bias
        or False not in space.signed
        or (vit and attention not in space.attention)):
      continue
    params = {}
    for group in space.groups:
      params.update({f'{group}.rule': rule,
                     f'{group}.eps': float(np.clip(1e-6, *space.eps)),
                     f'{group}.gamma': float(np.clip(0.25, *space.gamma))})
    if vit:
      params['attention'] = attention
    params.update(zero_bias=zero_bias, signed=False)
    if space.n_per_class:
      params['n_per_class'] = max(space.n_per_class)
    out.append(params)
  return out


def _compare(problem: _Problem, params, config) -> dict[str, Any]:
  """The optimised composite against the baselines, on the test split.

  ``epsilon`` is Epsilon on every layer and ``pxp_2021`` ZPlus without
  bias on every layer, the 2021 paper's composite (for a transformer: on
  the linear layers, with AttnLRP's other rules); a transformer adds CP-LRP
  (Epsilon everywhere), LXT's default. ``random`` averages
  ``config.random_seeds`` seeds (mean and standard error)."""
  eps, zplus = rules.epsilon(), rules.zplus(zero_bias=True)
  groups = functools.partial(composites.get, problem.preset,
                             boundaries=tuple(config.space.boundaries) or None)
  extra = {}
  if problem.transformer:
    extra['cp_lrp'] = problem.scores('lrp', groups(attention='cp_lrp'))
  candidates = {
      'optimised': problem.scores(
          'lrp', problem.composite(params), signed=params['signed'],
          n_per_class=params.get('n_per_class')),
      'epsilon': problem.scores('lrp', groups(low=eps, middle=eps, high=eps,
                                              fc=eps)),
      'pxp_2021': problem.scores('lrp', groups(low=zplus, middle=zplus,
                                               high=zplus, fc=zplus)),
      **extra,
      'weight': problem.scores('weight'),
  }
  scores = {k: [v] for k, v in candidates.items()}
  scores['random'] = [problem.scores('random', seed=s)
                      for s in range(config.random_seeds)]
  results, _ = report.evaluate(problem.task, scores, problem.rates,
                               config.test_split, cached=config.cache_eval)
  return results


def _faithfulness(problem: _Problem, params, config, workdir) -> dict:
  """Region perturbation of the heatmaps of the optimised composite and the
  usual ones on ``config.faithfulness`` test images (faithfulness.json and
  .png): for a CNN Epsilon everywhere, the 2021 composite (ZPlus without
  bias), EpsilonPlus and EpsilonGammaBox; for a transformer AttnLRP and
  CP-LRP; and random heatmaps."""
  task = problem.task
  named = {'optimised': problem.composite(params)}
  if problem.transformer:
    named.update(attn_lrp=composites.attn_lrp(), cp_lrp=composites.cp_lrp())
  else:
    eps, zplus = rules.epsilon(), rules.zplus(zero_bias=True)
    groups = functools.partial(
        composites.get, problem.preset,
        boundaries=tuple(config.space.boundaries) or None)
    named.update(
        epsilon=groups(low=eps, middle=eps, high=eps, fc=eps),
        pxp_2021=groups(low=zplus, middle=zplus, high=zplus, fc=zplus),
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
                     *names])
    for t in trials:
      seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                 if t.datetime_complete and t.datetime_start else '')
      writer.writerow([t.number, t.state.name, t.value, seconds,
                       t.user_attrs.get('compiles', ''),
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
