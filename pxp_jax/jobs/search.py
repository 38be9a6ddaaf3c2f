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
and the evaluation sweep (masks are arguments). Trials are stored by
optuna (SQLite in the workdir by default), so a killed search continues
where it stopped.

Everything a search reads is checked when it starts, before any data is
loaded or program compiled (``_check``); a study file that cannot be read
(damaged, or another program's) is an error naming it, and a journal entry
cut off by a kill is dropped.

Several workers (processes of ``experiments.search``, on one machine or
several) share one study through ``config.storage``: ``'journal'`` (an
append-only file, ``workdir/study.journal``, no server), ``'journal:PATH'``
(a journal file elsewhere, e.g. on a shared file system) or an SQLAlchemy
URL (``postgresql://user@host:port/db``; ``''`` is SQLite in the workdir,
for one worker). ``n_trials`` is the total the study reaches, counted over
all workers: a trial takes one of the first ``n_trials`` places among the
study's waiting, running and complete trials (by trial number) or is pruned
unrun, so N workers with ``n_trials=T`` together complete exactly T. Each
worker seeds the sampler of trial n with ``seed + n`` (two workers never
share a seed, and a resumed search draws new parameters), the usual
composites are queued once, by the worker that creates the study, and a
running trial sends a heartbeat every ``HEARTBEAT_S`` seconds: one silent
for ``GRACE_S`` (its worker was killed) is failed and queued again with its
parameters (optuna's ``RetryHeartbeatStaleTrialCallback``), as is a running
trial that no worker ever claimed. A worker whose places are all taken
waits for the others' last trials (and takes over any that die); then every
worker writes the outputs of the complete study: each into a folder of its
own, then moved file by file into the workdir (one rename each, whole files
only) under the workdir's lock, unless the workdir already holds the outputs
of more complete trials. Each worker compiles its programs once.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import fcntl
import functools
import json
import math
import os
import pathlib
import shutil
import socket
import sqlite3
import time
import warnings
from typing import Any

import jax
import numpy as np
import optuna
import sqlalchemy
from matplotlib.figure import Figure
# optuna's journal storage has no heartbeat of its own; _Journal adds one.
from optuna.storages._heartbeat import BaseHeartbeat

from pxp_jax import composites, rules
from pxp_jax.jobs import analyses, logs, report, task as task_lib, validate
from pxp_jax.jobs import workdir as workdir_lib

STUDY = 'pxp_search'
OBJECTIVES = {'a_pr': 'A_PR', 'auc': 'AUC'}  # config.objective -> its name
HEARTBEAT_S = 10  # a running trial's heartbeat period (seconds)
GRACE_S = 60      # a running trial silent this long is dead: failed, retried
POLL_S = 2.0      # how often a worker waiting for others' last trials looks
MAX_RETRY = 3     # a trial whose worker dies is retried at most this often
SAMPLERS = {'gp': optuna.samplers.GPSampler, 'tpe': optuna.samplers.TPESampler}
_RUNNING, _WAITING, _COMPLETE = (optuna.trial.TrialState.RUNNING,
                                 optuna.trial.TrialState.WAITING,
                                 optuna.trial.TrialState.COMPLETE)


def _check(config, n_trials, timeout) -> None:
  """Every config field and argument the search reads, checked before
  anything is loaded or compiled: ``--n_trials`` and ``--timeout``, the
  objective, the sampler, the storage's form, the fields the prune job
  shares (``validate.pruning``), the splits' names and the search space."""
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
  if config.sampler not in SAMPLERS:
    raise ValueError(f'--config.sampler={config.sampler!r} is unknown; use '
                     f'{" or ".join(SAMPLERS)}')
  if config.sampler == 'gp':
    import importlib.util  # pylint: disable=g-import-not-at-top
    if importlib.util.find_spec('torch') is None:
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
  _validate_space(config.space)


def _count(name: str, value, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f'--config.{name}={value!r} must be a whole number >= '
                     f'{low}')


def _pair(space, name: str) -> tuple[float, float]:
  """``space.<name>``: a log-scale range (low, high) with 0 < low <= high."""
  value = tuple(getattr(space, name))
  if (len(value) != 2 or
      any(isinstance(v, bool) or not isinstance(v, (int, float)) or
          not math.isfinite(v) for v in value) or
      not 0 < value[0] <= value[1]):
    raise ValueError(f'--config.space.{name} must be a range (low, high) of '
                     'finite numbers with 0 < low <= high (searched on a '
                     f'log scale), got {value}')
  return value


def _choices(space, name: str, known, what: str) -> None:
  """``space.<name>``: one or more distinct values among ``known``."""
  value = tuple(getattr(space, name))
  if not value:
    raise ValueError(f'--config.space.{name} is empty: give one or more of '
                     f'{known} ({what})')
  unknown = [v for v in value if v not in known or
             (isinstance(v, bool) != isinstance(known[0], bool))]
  if unknown:
    raise ValueError(f'--config.space.{name} has {unknown}; choose among '
                     f'{known} ({what})')
  if len(set(value)) != len(value):
    raise ValueError(f'--config.space.{name}={value} names a value twice; '
                     'give each once')


def _validate_space(space) -> None:
  if not space.groups:
    raise ValueError('the search space has no layer groups '
                     '(--config.space.groups)')
  if not space.rules:
    raise ValueError('the search space has no rules to choose '
                     '(--config.space.rules)')
  _choices(space, 'rules', rules.searchable(),
           "the layer groups' LRP rules")
  _choices(space, 'groups', composites.GROUPS, 'the layer groups searched')
  _choices(space, 'attention', composites.ATTENTION_RULES,
           "a transformer's attention rules")
  _choices(space, 'signed', (False, True), 'rank by |R| or by signed R')
  _choices(space, 'zero_bias', (False, True), 'biases take relevance or not')
  _pair(space, 'eps')
  _pair(space, 'gamma')
  for n in space.n_per_class:
    _count('space.n_per_class', n, 1)
  if len(set(space.n_per_class)) != len(space.n_per_class):
    raise ValueError('--config.space.n_per_class='
                     f'{tuple(space.n_per_class)} names a value twice; give '
                     'each once')
  bounds = tuple(space.boundaries)
  if bounds and (len(bounds) != 2 or not all(
      isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                 or not 0 <= bounds[0] <= bounds[1] <= 1):
    raise ValueError('--config.space.boundaries must be () for the stages or '
                     f'(b1, b2) with 0 <= b1 <= b2 <= 1, got {bounds}')


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
    for field in ('validation_split', 'test_split'):
      self.task.split(config[field], field)  # fails before any compile
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
  _check(config, n_trials, timeout)
  workdir = pathlib.Path(workdir).resolve()
  if workdir.exists() and not workdir.is_dir():
    raise NotADirectoryError(f'--workdir={workdir} is a file; name a folder '
                             '(new, or the one of the search to resume)')
  workdir.mkdir(parents=True, exist_ok=True)
  with _locked(workdir):  # workers may start together
    workdir_lib.claim(workdir, config)
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours
  storage = _storage(config.storage, workdir)  # read before any loading
  tb = logs.writer(workdir, config)  # TensorBoard: workdir/tensorboard
  start = time.time()
  problem = _Problem(config)
  study = _study(config, storage, workdir, vit=problem.transformer)
  worker = f'{socket.gethostname()}:{os.getpid()}'
  metric = OBJECTIVES[config.objective]

  def objective(trial):
    trial.set_user_attr('worker', worker)  # claimed: not an orphan
    if _surplus(study, trial, n_trials):
      raise optuna.TrialPruned(f'the study has its {n_trials} trials')
    with _counting_compiles() as compiles:
      params = _suggest(trial, config.space, vit=problem.transformer)
      composite = problem.composite(params)
      scores = problem.scores('lrp', composite, signed=params['signed'],
                              n_per_class=params.get('n_per_class'))
      value = problem.objective(scores, config.validation_split)
    trial.set_user_attr('compiles', compiles[0])
    return _finite(value, trial.number, params, metric)

  def progress(study, trial):
    if trial.state != _COMPLETE:  # pruned: another worker took its place
      return
    best = study.best_trial
    print(f'[{time.time() - start:6.1f}s] trial {trial.number}: {metric} '
          f'{trial.value:.4f} (best {best.value:.4f}, trial {best.number}); '
          f'{trial.user_attrs["compiles"]} XLA compilations', flush=True)
    tb.write_scalars(trial.number, {f'trial/{config.objective}': trial.value,
                                    f'best/{config.objective}': best.value})
    tb.flush()

  done = len(study.get_trials(deepcopy=False, states=(_COMPLETE,)))
  if done < n_trials:
    print(f'{done} trials done, running until the study has {n_trials} '
          '(with any other workers on it)', flush=True)
    _run(study, objective, n_trials, deadline=time.time() + (timeout or
                                                             float('inf')),
         callbacks=[progress])
  if not study.get_trials(deepcopy=False, states=(_COMPLETE,)):
    raise RuntimeError(f'the study has no complete trial after --timeout='
                       f'{timeout} seconds; give it more time (a trial takes '
                       'about as long as one evaluation sweep, the first one '
                       'also compiles)')
  best = study.best_trial
  staging = workdir / f'.staging-{worker.replace(":", "-")}'
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
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
  (staging / 'best_composite.json').write_text(
      json.dumps(best_json, indent=2) + '\n')
  _write_trials(staging / 'trials.csv', study, config.objective)
  _plot_study(staging, study, metric)
  comparison = _compare(problem, best.params, config)
  report.write(staging, 'comparison', comparison,
               xlabel=f'pruned {problem.task.units_type} (%)',
               title=f'{config.model}: optimised LRP vs baselines '
               f'({config.test_split} split)')
  print(report.table(comparison), flush=True)
  logs.write_pruning(tb, comparison)
  tb.close()
  if config.faithfulness:
    _faithfulness(problem, best.params, config, staging)
  _publish(staging, workdir)
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


def _study(config, storage, workdir: pathlib.Path, vit: bool
           ) -> optuna.Study:
  """Creates or loads the study in ``storage``; the worker that creates it
  queues the usual composites (once: creating a study of a name that exists
  fails in every storage, atomically) and records the config, which every
  other worker must share."""
  sampler = _SeededPerTrial(SAMPLERS[config.sampler], config.seed)
  recorded = json.dumps(_shared_config(config), sort_keys=True)
  try:
    study = optuna.create_study(study_name=STUDY, storage=storage,
                                sampler=sampler, direction='maximize')
  except optuna.exceptions.DuplicatedStudyError:
    study = optuna.load_study(study_name=STUDY, storage=storage,
                              sampler=sampler)
    theirs = study.user_attrs.get('config')
    if theirs is not None and theirs != recorded:
      theirs, ours = json.loads(theirs), json.loads(recorded)
      changed = sorted(k for k in set(theirs) | set(ours)
                       if theirs.get(k) != ours.get(k))
      raise ValueError(
          f'the study {STUDY!r} in {_where(config.storage, workdir)} is a '
          f'search of a different config (differs in: {", ".join(changed)}); '
          'every worker of a study runs the same config. Use the same '
          'config to resume it, or for a new search a new --workdir (or '
          'another journal file or database with --config.storage), or '
          'delete that study file, losing its trials.') from None
  else:
    study.set_user_attr('config', recorded)
    for params in _usual_params(config.space, vit):  # the start
      study.enqueue_trial(params, skip_if_exists=True)
  return study


# Fields that may differ between the workers of one study (machines differ).
_PER_WORKER = ('data_dir', 'storage', 'tensorboard', 'mesh', 'batch_size',
               'eval_batch_size', 'remat', 'cache_eval', 'faithfulness',
               'perturbation', 'random_seeds', 'test_split')


def _shared_config(config) -> dict[str, Any]:
  full = json.loads(config.to_json_best_effort(sort_keys=True))
  return {k: v for k, v in full.items() if k not in _PER_WORKER}


def _storage(spec: str, workdir: pathlib.Path):
  """The optuna storage of ``config.storage``: ``''`` SQLite in the workdir,
  ``'journal'`` the journal file ``workdir/study.journal``,
  ``'journal:PATH'`` a journal file elsewhere, else an SQLAlchemy URL
  (``postgresql://user@host:port/db``). Every storage has the heartbeat.
  The study's trials are read once here: a study file that is not one
  (garbage, cut short, another program's database) is an error naming it."""
  storage = _open(spec, workdir)
  path = _study_file(spec, workdir)
  try:
    for study in storage.get_all_studies():
      if study.study_name == STUDY:
        storage.get_all_trials(study._study_id, deepcopy=False)  # pylint: disable=protected-access
  except _UNREADABLE as error:
    if path is None:
      raise
    raise ValueError(_unreadable(path, error)) from None
  return storage


# What reading a damaged study file raises (SQLite, optuna's journal replay).
_UNREADABLE = (sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError,
               ValueError, KeyError, TypeError, AttributeError, IndexError)


def _study_file(spec: str, workdir: pathlib.Path) -> pathlib.Path | None:
  """The file that holds the study of ``config.storage`` (None: a server)."""
  if spec == 'journal':
    return workdir / 'study.journal'
  if spec.startswith('journal:'):
    return pathlib.Path(spec[len('journal:'):]).expanduser().resolve()
  url = sqlalchemy.engine.make_url(spec or f'sqlite:///{workdir / "study.db"}')
  if (url.get_backend_name() != 'sqlite' or url.database in (None, '')
      or url.database.startswith((':memory:', 'file:'))):
    return None
  return pathlib.Path(url.database).expanduser().resolve()


def _where(spec: str, workdir: pathlib.Path) -> str:
  """Where the study of ``config.storage`` lives, in words."""
  path = _study_file(spec, workdir)
  if path is not None:
    return f'the file {path}'
  return f'the database {sqlalchemy.engine.make_url(spec).render_as_string()}'


def _unreadable(path: pathlib.Path, error) -> str:
  return (f'{path} is not a readable optuna study ({type(error).__name__}: '
          f'{error}): the file is damaged (cut short, overwritten) or is not '
          'a study of this search. Delete it to start the search anew (its '
          'trials are lost), or give a new --workdir (or another '
          '--config.storage).')


def _drop_cut_entry(path: pathlib.Path) -> None:
  """Removes the last entry of a journal when it was cut off (its writer
  killed while writing: no line end), under the journal's lock. Readers
  skip such an entry, but optuna would append the next one to it, and the
  file would no longer read."""
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    if f.read(1) == b'\n':
      return
  lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
  lock.acquire()  # the lock optuna's appends take: no writer is half-way
  try:
    data = path.read_bytes()
    end = data.rfind(b'\n') + 1
    if end < len(data):
      with open(path, 'r+b') as f:
        f.truncate(end)
      print(f'{path}: removed its last entry, cut off when its writer was '
            f'killed ({len(data) - end} bytes)', flush=True)
  finally:
    lock.release()


def _check_sqlite(path: pathlib.Path) -> None:
  """An existing SQLite file is an optuna study: a database, intact, whose
  tables (if any) include optuna's."""
  if path.is_dir():
    raise ValueError(f'the SQLite study file {path} is a folder; name a file')
  if not path.is_file() or path.stat().st_size == 0:
    return
  try:
    with contextlib.closing(sqlite3.connect(f'file:{path}?mode=ro',
                                            uri=True)) as con:
      tables = {r[0] for r in con.execute(
          "SELECT name FROM sqlite_master WHERE type='table'")}
      intact = con.execute('PRAGMA quick_check').fetchone()[0]
  except sqlite3.OperationalError as error:
    if 'locked' in str(error):  # another worker writes: it is a database
      return
    raise ValueError(_unreadable(path, error)) from None
  except sqlite3.DatabaseError as error:
    raise ValueError(_unreadable(path, error)) from None
  if intact != 'ok':
    raise ValueError(_unreadable(path, f'integrity check: {intact}'))
  if tables and 'version_info' not in tables:
    raise ValueError(
        f'{path} is an SQLite database of something else (tables '
        f'{sorted(tables)}), not an optuna study; name another file, or give '
        'a new --workdir')


def _open(spec: str, workdir: pathlib.Path):
  """``_storage`` without reading the study."""
  if spec == 'journal' or spec.startswith('journal:'):
    path = (workdir / 'study.journal' if spec == 'journal' else
            pathlib.Path(spec[len('journal:'):]).expanduser().resolve())
    if spec != 'journal' and (not spec[len('journal:'):] or path.is_dir()):
      raise ValueError(f"storage {spec!r}: 'journal:PATH' names a file, e.g. "
                       "'journal:/shared/search/study.journal'")
    if not path.parent.is_dir():
      raise ValueError(f'storage {spec!r}: the folder {path.parent} does not '
                       'exist; create it (on a file system every worker '
                       'sees) or name another journal file')
    if path.is_file() and path.stat().st_size:
      _drop_cut_entry(path)
      try:  # optuna replays the whole journal here
        return _Journal(optuna.storages.journal.JournalFileBackend(str(path)))
      except _UNREADABLE as error:
        raise ValueError(_unreadable(path, error)) from None
    return _Journal(optuna.storages.journal.JournalFileBackend(str(path)))
  if spec and '://' not in spec:
    raise ValueError(
        f"unknown storage {spec!r}; use '' (SQLite in the workdir, one "
        "worker), 'journal' (a journal file in the workdir: several workers "
        "on one machine), 'journal:PATH' (a journal file on a shared file "
        'system) or an SQLAlchemy URL such as '
        'postgresql://user@host:5432/db or mysql+pymysql://user@host/db')
  url = spec or f'sqlite:///{workdir / "study.db"}'
  try:
    parsed = sqlalchemy.engine.make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    parsed.get_dialect()  # an unknown database is an error here
  except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError,
          ValueError) as error:
    raise ValueError(f'storage {spec!r} is not an SQLAlchemy URL that names '
                     f'a known database ({error}); e.g. '
                     'postgresql://user@host:5432/db') from None
  except ImportError as error:
    raise ImportError(_driver_hint(shown, parsed.get_backend_name(), error)
                      ) from error
  path = _study_file(url, workdir)
  if path is not None:  # an SQLite file
    if not path.parent.is_dir():
      raise ValueError(f'storage {spec or url!r}: the folder {path.parent} '
                       'does not exist; create it or name another file')
    _check_sqlite(path)
  if parsed.drivername == 'postgresql':  # no driver named: the installed one
    import importlib.util  # pylint: disable=g-import-not-at-top
    if (importlib.util.find_spec('psycopg') is None and
        importlib.util.find_spec('psycopg2') is not None):
      url = parsed.set(drivername='postgresql+psycopg2').render_as_string(
          hide_password=False)
  engine_kwargs = {}
  if parsed.get_backend_name() != 'sqlite':  # servers: fail fast, reconnect
    engine_kwargs = {'pool_pre_ping': True,
                     'connect_args': {'connect_timeout': 10}}
  for attempt in range(3):
    try:
      with warnings.catch_warnings():  # the heartbeat is experimental
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry())
    except ImportError as error:
      raise ImportError(_driver_hint(shown, parsed.get_backend_name(),
                                     error)) from error
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
      if attempt == 2:  # workers starting together create the tables once
        raise
      time.sleep(1.0)
    except Exception as error:  # pylint: disable=broad-except
      if path is not None:
        if isinstance(error, _UNREADABLE):
          raise ValueError(_unreadable(path, error)) from None
        raise  # e.g. optuna's own word on an older table schema
      raise ConnectionError(
          f'cannot open the optuna storage {shown!r}: {error}\nCheck that '
          f'the database server runs and is reachable from this machine at '
          f'{parsed.host or "localhost"}:{parsed.port or "(default port)"}, '
          f'that the database {parsed.database!r} exists and that the user '
          f'{parsed.username!r} may connect to it.') from error


def _driver_hint(shown: str, backend: str, error) -> str:
  fix = {'postgresql': "pip install 'pxp_jax[postgres]' (psycopg2-binary)",
         'mysql': 'pip install pymysql and write mysql+pymysql://...'}
  return (f'the storage {shown!r} needs a database driver that is not '
          f'installed ({error.__cause__ or error}): '
          f'{fix.get(backend, "install the driver SQLAlchemy names")}')


def _retry():
  with warnings.catch_warnings():  # experimental in optuna
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=MAX_RETRY)


class _Journal(optuna.storages.JournalStorage, BaseHeartbeat):
  """optuna's journal storage with the heartbeat of its RDB storage: a
  running trial records the time (a system attribute) every
  ``HEARTBEAT_S``; one silent for ``GRACE_S`` is stale. Workers on several
  machines need clocks that agree well within ``GRACE_S`` (NTP)."""

  def record_heartbeat(self, trial_id: int) -> None:
    try:
      self.set_trial_system_attr(trial_id, 'heartbeat', time.time())
    except optuna.exceptions.UpdateFinishedTrialError:
      pass  # another worker took this trial as dead

  def _get_stale_trial_ids(self, study_id: int) -> list[int]:
    now = time.time()
    return [t._trial_id for t in self.get_all_trials(  # pylint: disable=protected-access
        study_id, deepcopy=False, states=(_RUNNING,))
            if now - t.system_attrs.get('heartbeat', now) > GRACE_S]

  def get_heartbeat_interval(self) -> int:
    return HEARTBEAT_S

  def get_heartbeat_stale_trial_callback(self):
    return _retry()


class _SeededPerTrial(optuna.samplers.BaseSampler):
  """The sampler ``make(seed=seed + n)``, made anew for each trial n: two
  workers asking together never share a seed, a resumed or extended search
  draws new parameters, and trial n's draw depends only on the trials before
  it (no random state carried over in a worker)."""

  def __init__(self, make, seed: int):
    self._make, self._seed = make, seed
    self._sampler = make(seed=seed)

  def before_trial(self, study, trial):
    self._sampler = self._make(seed=self._seed + trial.number)
    self._sampler.before_trial(study, trial)

  def infer_relative_search_space(self, study, trial):
    return self._sampler.infer_relative_search_space(study, trial)

  def sample_relative(self, study, trial, search_space):
    return self._sampler.sample_relative(study, trial, search_space)

  def sample_independent(self, study, trial, param_name, distribution):
    return self._sampler.sample_independent(study, trial, param_name,
                                            distribution)

  def after_trial(self, study, trial, state, values):
    self._sampler.after_trial(study, trial, state, values)

  def reseed_rng(self):
    self._sampler.reseed_rng()


def _finite(value: float, number: int, params, metric: str) -> float:
  """A trial's objective, or an error: optuna would record a NaN as a
  failed trial and the search would draw trial after trial."""
  if not math.isfinite(value):
    raise FloatingPointError(
        f'trial {number}: the validation {metric} is {value} (parameters '
        f'{params}); check config.rates and config.validation_split (an '
        'evaluation with no examples has no accuracy). The trial is recorded '
        'as failed; a resumed search draws new parameters.')
  return value


def _surplus(study, trial, n_trials: int) -> bool:
  """Whether ``n_trials`` waiting, running or complete trials precede
  ``trial`` (by number): two workers that started the last place together
  leave it to the lower number. Numbers only grow, so a trial that holds a
  place keeps it."""
  active = study.get_trials(deepcopy=False,
                            states=(_WAITING, _RUNNING, _COMPLETE))
  return sum(t.number < trial.number for t in active) >= n_trials


def _fail_orphans(study) -> None:
  """Fails and queues again the running trials that no worker claimed (no
  ``worker`` attribute, which a worker sets as a trial starts) for
  ``GRACE_S``: trials asked by hand, or by an older version, then killed."""
  now = datetime.datetime.now()
  for t in study.get_trials(deepcopy=False, states=(_RUNNING,)):
    if ('worker' in t.user_attrs or t.datetime_start is None or
        (now - t.datetime_start).total_seconds() < GRACE_S):
      continue
    try:
      study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    except (RuntimeError, ValueError):  # another worker was first
      continue
    _retry()(study, next(x for x in study.get_trials(deepcopy=False)
                         if x.number == t.number))


def _run(study, objective, n_trials: int, deadline: float,
         callbacks) -> None:
  """Runs trials until the study has ``n_trials`` complete ones, counted
  over all workers, or until ``deadline``: a trial starts while the first
  ``n_trials`` places (waiting, running and complete trials by number) are
  not all taken, or one of them waits; else the worker waits for the others'
  running trials, failing (and so retrying) any whose heartbeat stops."""
  said = False
  while time.time() < deadline:
    _fail_orphans(study)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      optuna.storages.fail_stale_trials(study)
    active = study.get_trials(deepcopy=False,
                              states=(_WAITING, _RUNNING, _COMPLETE))
    places = sorted(active, key=lambda t: t.number)[:n_trials]
    if sum(t.state == _COMPLETE for t in active) >= n_trials:
      return
    if len(places) < n_trials or any(t.state == _WAITING for t in places):
      try:
        study.optimize(objective, n_trials=1, callbacks=callbacks)
      except optuna.exceptions.UpdateFinishedTrialError as error:
        print(f'a trial of this worker was taken as dead and retried by '
              f'another worker ({error}); going on', flush=True)
    else:
      if not said:
        print('waiting for the last trials, running in other workers',
              flush=True)
        said = True
      time.sleep(POLL_S)


@contextlib.contextmanager
def _locked(workdir: pathlib.Path):
  """The workdir's lock (``workdir/.lock``), held by one process at a time."""
  with open(workdir / '.lock', 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


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
  with _locked(workdir):
    if (_complete_rows(staging / 'trials.csv') >=
        _complete_rows(workdir / 'trials.csv')):
      for path in sorted(staging.iterdir()):
        os.replace(path, workdir / path.name)
  shutil.rmtree(staging, ignore_errors=True)


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
