"""The study driver: trials of a space scored by an objective, with optuna.

``run(space, objective, n_trials)`` creates (or joins) the study, queues the
space's usual composites once, and runs trials until the study has
``n_trials`` complete ones, counted over every worker on its storage
(``pxp_jax.search.workers``); each trial draws its parameters
(``space.suggest``), builds their composite and scores it, and records how
many XLA compilations it took (0 after the first: ``objective``). Progress
is printed one line per trial.

Example::

  study = search.run(space, objective, n_trials=20)
  best = space.to_composite(study.best_trial.params)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optuna

from pxp_jax.search import workers

STUDY = 'pxp_search'  # the study's name in its storage
SAMPLERS = {'gp': optuna.samplers.GPSampler, 'tpe': optuna.samplers.TPESampler}
_COMPLETE = optuna.trial.TrialState.COMPLETE
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


def make_sampler(name: str = 'tpe', seed: int = 0) -> workers.SeededPerTrial:
  """Sampler ``name`` (``SAMPLERS``: ``gp``, the Gaussian process, needs
  PyTorch; ``tpe``) seeded with ``seed + n`` for trial n."""
  if name not in SAMPLERS:
    raise ValueError(f'sampler={name!r} is unknown; use '
                     f'{" or ".join(SAMPLERS)}')
  return workers.SeededPerTrial(SAMPLERS[name], seed)


def run(space, objective: Callable, n_trials: int, *, storage=None,
        sampler: str | optuna.samplers.BaseSampler = 'tpe', seed: int = 0,
        study: optuna.Study | None = None, timeout: float | None = None,
        callbacks: Sequence[Callable] = (), show: bool = True
        ) -> optuna.Study:
  """Runs (or resumes) a search until its study has ``n_trials`` complete
  trials.

  Args:
    space: the ``Space``.
    objective: ``objective(composite, signed=..., n_per_class=...) ->
      float`` to maximise, e.g. an ``Objective``; its ``name`` (if any)
      labels the progress.
    n_trials: the complete trials the study reaches, over all its workers.
    storage: an optuna storage (``pxp_jax.search.storage.open``); None
      keeps the trials in memory.
    sampler: a name of ``SAMPLERS`` (seeded per trial with ``seed``) or an
      optuna sampler.
    seed: the sampler's seed.
    study: a study already opened on ``storage`` (``workers.open_study``);
      by default the study ``STUDY`` is created (with the space's usual
      composites queued) or joined.
    timeout: stop starting trials after this many seconds.
    callbacks: optuna callbacks ``(study, trial)`` after each trial.
    show: print a line per complete trial.

  Returns:
    The ``optuna.Study``; ``study.best_trial.params`` are the best trial's
    parameters (``space.to_composite`` builds its composite).
  """
  if isinstance(n_trials, bool) or not isinstance(n_trials, int) or (
      n_trials < 1):
    raise ValueError(f'n_trials={n_trials}: the trials the study reaches '
                     'must be a whole number >= 1')
  if storage is None:
    storage = optuna.storages.InMemoryStorage()
  if study is None:
    chosen = (make_sampler(sampler, seed) if isinstance(sampler, str)
              else sampler)
    study, _ = workers.open_study(storage, STUDY, chosen, usual=space.usual())
  name = getattr(objective, 'name', 'objective')
  worker = workers.worker_name()
  start = time.time()

  def trial_objective(trial):
    trial.set_user_attr('worker', worker)  # claimed: not an orphan
    if workers.surplus(study, trial, n_trials):
      raise optuna.TrialPruned(f'the study has its {n_trials} trials')
    with workers.heartbeat(storage, trial), counting_compiles() as compiles:
      params = space.suggest(trial)
      value = objective(space.to_composite(params), signed=params['signed'],
                        n_per_class=params.get('n_per_class'))
    trial.set_user_attr('compiles', compiles[0])
    return finite(value, trial.number, params, name)

  def progress(study, trial):
    if trial.state != _COMPLETE or not show:  # pruned: another worker's
      return
    best = study.best_trial
    print(f'[{time.time() - start:6.1f}s] trial {trial.number}: {name} '
          f'{trial.value:.4f} (best {best.value:.4f}, trial {best.number}); '
          f'{trial.user_attrs["compiles"]} XLA compilations', flush=True)

  done = len(study.get_trials(deepcopy=False, states=(_COMPLETE,)))
  if done < n_trials:
    if show:
      print(f'{done} trials done, running until the study has {n_trials} '
            '(with any other workers on it)', flush=True)
    workers.run(study, storage, trial_objective, n_trials,
                deadline=time.time() + (timeout or float('inf')),
                callbacks=[progress, *callbacks])
  return study


def finite(value: float, number: int, params: dict[str, Any],
           name: str) -> float:
  """A trial's objective, or an error: optuna would record a NaN as a
  failed trial and the search would draw trial after trial."""
  if not math.isfinite(value):
    raise FloatingPointError(
        f'trial {number}: the validation {name} is {value} (parameters '
        f'{params}); check the rates and the evaluation batches (the search '
        "job's config.rates and config.validation_split): an evaluation "
        'with no examples has no accuracy. The trial is recorded as failed; '
        'a resumed search draws new parameters.')
  return value


@contextlib.contextmanager
def counting_compiles():
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
