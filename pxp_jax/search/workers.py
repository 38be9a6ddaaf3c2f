"""Several workers on one optuna study: places, seeds, heartbeats, retries.

Workers (processes on one machine or several) share a study through its
storage (``pxp_jax.search.storage``). ``n_trials`` is the total the study
reaches, counted over all workers: a trial takes one of the first
``n_trials`` places among the study's waiting, running and complete trials
(by number) or is pruned unrun (``surplus``), so N workers with ``n_trials=T``
together complete exactly T. Trial n's sampler is seeded with ``seed + n``
(``SeededPerTrial``). A running trial sends a heartbeat every
``HEARTBEAT_S`` seconds; one silent for ``GRACE_S`` (its worker was killed)
is failed and queued again with its parameters (optuna's
``RetryHeartbeatStaleTrialCallback``), as is a running trial no worker ever claimed.
A worker whose places are all taken waits for the others' last trials
(``run``) and takes over any that die.

Only optuna's public API: an RDB storage beats with its own heartbeat
(``heartbeat_interval``, ``grace_period``; ``fail_stale_trials``); a journal
storage, which has none, beats through a trial attribute (``heartbeat``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna

HEARTBEAT_S = 10  # a running trial's heartbeat period (seconds)
GRACE_S = 60      # a running trial silent this long is dead: failed, retried
POLL_S = 2.0      # how often a worker waiting for others' last trials looks
MAX_RETRY = 3     # a trial whose worker dies is retried at most this often
_RUNNING, _WAITING, _COMPLETE = (optuna.trial.TrialState.RUNNING,
                                 optuna.trial.TrialState.WAITING,
                                 optuna.trial.TrialState.COMPLETE)


def worker_name() -> str:
  """This worker: ``host:pid``."""
  return f'{socket.gethostname()}:{os.getpid()}'


def retry() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
  """Queues a failed trial again with its parameters, ``MAX_RETRY`` times
  at most (an RDB storage's heartbeat calls it too)."""
  with warnings.catch_warnings():  # experimental in optuna
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    return optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=MAX_RETRY)


class SeededPerTrial(optuna.samplers.BaseSampler):
  """The sampler ``make(seed=seed + n)``, made anew for each trial n: two
  workers asking together never share a seed, a resumed or extended search
  draws new parameters, and trial n's draw depends only on the trials before
  it (no random state carried over in a worker)."""

  def __init__(self, make: Callable[..., optuna.samplers.BaseSampler],
               seed: int):
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


def open_study(storage, name: str, sampler, *,
               usual: Sequence[dict[str, Any]] = (),
               attrs: dict[str, Any] | None = None
               ) -> tuple[optuna.Study, bool]:
  """``(study, created)``: the study ``name`` in ``storage``, created if
  missing (maximised). The worker that creates it (creating a study of a
  name that exists fails in every storage, atomically) records ``attrs`` as
  its user attributes and queues the trials ``usual``, once."""
  try:
    study = optuna.create_study(study_name=name, storage=storage,
                                sampler=sampler, direction='maximize')
  except optuna.exceptions.DuplicatedStudyError:
    return optuna.load_study(study_name=name, storage=storage,
                             sampler=sampler), False
  for key, value in (attrs or {}).items():
    study.set_user_attr(key, value)
  for params in usual:
    study.enqueue_trial(params, skip_if_exists=True)
  return study, True


def surplus(study: optuna.Study, trial, n_trials: int) -> bool:
  """Whether ``n_trials`` waiting, running or complete trials precede
  ``trial`` (by number): two workers that started the last place together
  leave it to the lower number. Numbers only grow, so a trial that holds a
  place keeps it."""
  active = study.get_trials(deepcopy=False,
                            states=(_WAITING, _RUNNING, _COMPLETE))
  return sum(t.number < trial.number for t in active) >= n_trials


def _beats_itself(storage) -> bool:
  """Whether ``storage`` keeps optuna's own heartbeat (an RDB storage)."""
  return (isinstance(storage, optuna.storages.RDBStorage)
          and storage.heartbeat_interval is not None)


def beat(trial) -> bool:
  """Records that ``trial`` (an ``optuna.Trial``) runs; False once another
  worker took it as dead (it has finished)."""
  try:
    trial.set_user_attr('heartbeat', time.time())
  except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
    return False
  return True


@contextlib.contextmanager
def heartbeat(storage, trial):
  """Beats for ``trial`` every ``HEARTBEAT_S`` seconds in a thread while
  the block runs, on a journal storage (an RDB storage beats itself, one in
  memory has a single worker)."""
  if _beats_itself(storage) or not isinstance(
      storage, optuna.storages.JournalStorage):
    yield
    return
  stop = threading.Event()

  def loop():
    while beat(trial) and not stop.wait(HEARTBEAT_S):
      pass

  thread = threading.Thread(target=loop, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()


def _fail(study: optuna.Study, trial) -> None:
  """Fails ``trial`` and queues it again, unless another worker was first."""
  try:
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
  except (RuntimeError, ValueError):  # another worker was first
    return
  retry()(study, next(x for x in study.get_trials(deepcopy=False)
                      if x.number == trial.number))


def _silent_for(trial, now: datetime.datetime) -> float:
  """Seconds since ``trial`` started or last beat (a retried trial carries
  its predecessor's last beat: the start counts too)."""
  start = trial.datetime_start or now
  last = max(start.timestamp(), trial.user_attrs.get('heartbeat', 0.0))
  return now.timestamp() - last


def fail_stale(study: optuna.Study, storage) -> None:
  """Fails and queues again the running trials whose heartbeat stopped for
  ``GRACE_S``: an RDB storage's by optuna (``fail_stale_trials``), a
  journal's by their ``heartbeat`` attribute."""
  if _beats_itself(storage):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      optuna.storages.fail_stale_trials(study)
    return
  if not isinstance(storage, optuna.storages.JournalStorage):
    return
  now = datetime.datetime.now()
  for t in study.get_trials(deepcopy=False, states=(_RUNNING,)):
    if _silent_for(t, now) > GRACE_S:
      _fail(study, t)


def fail_orphans(study: optuna.Study) -> None:
  """Fails and queues again the running trials that no worker claimed (no
  ``worker`` attribute, which a worker sets as a trial starts) for
  ``GRACE_S``: trials asked by hand, or by an older version, then killed."""
  now = datetime.datetime.now()
  for t in study.get_trials(deepcopy=False, states=(_RUNNING,)):
    if ('worker' in t.user_attrs or t.datetime_start is None or
        (now - t.datetime_start).total_seconds() < GRACE_S):
      continue
    _fail(study, t)


def run(study: optuna.Study, storage, objective: Callable, n_trials: int,
        deadline: float, callbacks=()) -> None:
  """Runs trials until the study has ``n_trials`` complete ones, counted
  over all workers, or until ``deadline`` (``time.time()``): a trial starts
  while the first ``n_trials`` places (waiting, running and complete trials
  by number) are not all taken, or one of them waits; else the worker waits
  for the others' running trials, failing (and so retrying) any whose
  heartbeat stops."""
  said = False
  while time.time() < deadline:
    fail_orphans(study)
    fail_stale(study, storage)
    active = study.get_trials(deepcopy=False,
                              states=(_WAITING, _RUNNING, _COMPLETE))
    places = sorted(active, key=lambda t: t.number)[:n_trials]
    if sum(t.state == _COMPLETE for t in active) >= n_trials:
      return
    if len(places) < n_trials or any(t.state == _WAITING for t in places):
      try:
        study.optimize(objective, n_trials=1, callbacks=list(callbacks))
      except optuna.exceptions.UpdateFinishedTrialError as error:
        print(f'a trial of this worker was taken as dead and retried by '
              f'another worker ({error}); going on', flush=True)
    else:
      if not said:
        print('waiting for the last trials, running in other workers',
              flush=True)
        said = True
      time.sleep(POLL_S)

