"""A workdir belongs to one config and one job at a time: resume the same
config, refuse a different one, and refuse a second job while one runs.

``exclusive(check)`` wraps a job ``job(config, workdir, ...)``: once the
config passed ``check``, the workdir (``~`` expanded) is created, and
process 0 holds an exclusive lock on ``workdir/.job.lock`` while the job
runs (``lock``: a second job is refused at once). ``critical(workdir)``
holds ``workdir/.lock`` for a short section that several processes of one
job take in turn, waiting for each other (the search's workers, on one
host or on several sharing the workdir, claiming it and publishing their
outputs). Both are one ``fcntl.flock`` mechanism (``_flock``); the system
drops a lock when its process ends, so a killed job never blocks the next
one. ``claim`` records the config in ``config.json``. ``cached_scores``
keeps a criterion's scores in an orbax folder that a re-run reads back.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pathlib
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import numpy as np
import orbax.checkpoint as ocp

from pxp_jax import distribute, files

CONFIG = 'config.json'
LOCK = '.job.lock'       # one job per workdir (``lock``)
SECTION_LOCK = '.lock'   # short sections of a job's processes (``critical``)
# What a run writes before its first result: a workdir holding nothing else
# (empty folders aside) holds no results, and takes a different config.
_NO_RESULTS = frozenset({CONFIG, LOCK, SECTION_LOCK, 'tensorboard'})
_HELD: dict[pathlib.Path, object] = {}  # workdir -> its open lock file


def prepare(workdir) -> pathlib.Path:
  """``workdir`` as an absolute path (``~`` expanded), created if missing;
  an error naming it if it is a file or cannot be written."""
  path = pathlib.Path(workdir).expanduser().resolve()
  blocker = next((p for p in (path, *path.parents)
                  if p.exists() and not p.is_dir()), None)
  if blocker is not None:
    raise NotADirectoryError(
        f'--workdir {path}: {blocker} is a file, not a folder; give a '
        'folder path (it is created if missing)')
  try:
    path.mkdir(parents=True, exist_ok=True)
  except PermissionError as e:
    raise PermissionError(f'cannot create --workdir {path}: {e.strerror}; '
                          'give a folder you can write to') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f'cannot write into --workdir {path} (permission '
                          'denied); give a folder you can write to')
  return path


@contextlib.contextmanager
def _flock(path: pathlib.Path, *, wait: bool) -> Iterator[IO[str]]:
  """Holds an exclusive ``fcntl.flock`` on the file ``path`` (created if
  missing), yielding it open for reading and writing; ``wait=False`` raises
  ``BlockingIOError`` at once if another process holds it."""
  try:
    f = open(path, 'a+')  # pylint: disable=consider-using-with
  except OSError as e:
    raise PermissionError(f'cannot write {path}: {e.strerror}; give a '
                          '--workdir you can write to') from None
  with f:
    fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
      yield f
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def lock(workdir):
  """Holds ``workdir/.job.lock`` exclusively (process 0 of a job; the other
  processes write nothing); yields ``prepare(workdir)``. Re-entrant in one
  process; a second process gets a ``RuntimeError`` naming the holder."""
  path = prepare(workdir)
  if not distribute.is_primary() or path in _HELD:
    yield path
    return
  with contextlib.ExitStack() as stack:
    try:
      f = stack.enter_context(_flock(path / LOCK, wait=False))
    except BlockingIOError:
      with open(path / LOCK) as held:
        holder = held.read().strip() or 'another process'
      raise RuntimeError(
          f'--workdir {path} is in use by another job ({holder}); wait for '
          'it to finish or stop it, or use another --workdir (the lock in '
          f'{LOCK} is released when that process exits)') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    _HELD[path] = f
    try:
      yield path
    finally:
      del _HELD[path]


@contextlib.contextmanager
def critical(workdir) -> Iterator[pathlib.Path]:
  """Holds ``workdir/.lock`` while the block runs, waiting while another
  process holds it; any process of a job takes it (unlike ``lock``). For
  short sections that the processes of one job sharing a workdir run in
  turn, e.g. search workers (on several hosts, over a shared file system
  with ``flock``) recording the config or moving their outputs in.
  Yields ``prepare(workdir)``.

  Example::

    with workdir.critical(path):
      workdir.claim(path, config)
  """
  path = prepare(workdir)
  with _flock(path / SECTION_LOCK, wait=True):
    yield path


def exclusive(check: Callable[[Any], None]) -> Callable:
  """A job's decorator: ``job(config, workdir, ...)`` runs once
  ``check(config)`` passed (before the workdir is touched), under
  ``lock(workdir)``, given the prepared absolute workdir. The wrapped job
  keeps its check as ``job.check`` (``pxp_jax.jobs.draws`` runs it before
  several draws).

  Example::

    @workdir.exclusive(validate.prune)
    def prune(config, workdir): ...
  """

  def wrap(job: Callable) -> Callable:
    @functools.wraps(job)
    def run(config, workdir, *args, **kwargs):
      check(config)
      with lock(workdir) as path:
        return job(config, path, *args, **kwargs)

    run.check = check
    return run

  return wrap


def results(workdir: pathlib.Path) -> list[str]:
  """The entries of ``workdir`` that hold results: files other than the
  config, the lock and the TensorBoard logs, and folders holding files."""
  found = []
  for entry in sorted(pathlib.Path(workdir).iterdir()):
    if entry.name in _NO_RESULTS or entry.name.endswith('.partial'):
      continue
    if not entry.is_dir() or any(p.is_file() for p in entry.rglob('*')):
      found.append(entry.name)
  return found


def claim(workdir: pathlib.Path, config) -> None:
  """Records ``config`` in ``workdir/config.json`` (process 0), or checks it
  is the one recorded there (every process). A different config is an error
  and nothing is written, unless the workdir holds no results yet (a run
  that failed before writing any): then its config.json is replaced."""
  workdir = pathlib.Path(workdir)
  saved = workdir / CONFIG
  current = json.loads(config.to_json_best_effort(sort_keys=True))
  if saved.exists():
    previous = files.read_json(
        saved, 'delete it to record the current config (only if the '
        'workdir\'s results came from this config), or use a new --workdir')
    if previous == current:
      return
    changed = sorted(k for k in set(previous) | set(current)
                     if previous.get(k) != current.get(k))
    held = results(workdir)
    if held:
      raise ValueError(
          f'{workdir} holds results of a different config (differs in: '
          f'{", ".join(changed)}; results: {", ".join(held[:5])}'
          f'{", ..." if len(held) > 5 else ""}); nothing was overwritten. '
          'Use a new --workdir, or the same config to resume.')
    if distribute.is_primary():
      print(f'{saved}: replaced the config of an earlier run that wrote no '
            f'results (it differed in: {", ".join(changed)})', flush=True)
  if distribute.is_primary():
    files.write_json(saved, current)


def cached_scores(path: pathlib.Path, compute: Callable[[], Mapping],
                  sizes: Mapping[str, int] | None = None
                  ) -> dict[str, np.ndarray]:
  """Scores saved with orbax at ``path``, computed by ``compute()`` once.

  Orbax writes a temporary folder and renames it, so a killed save leaves
  no ``path`` and the re-run computes the scores again. A ``path`` that
  cannot be read, or (given ``sizes``: unit name -> units) holds scores of
  other units, is an error naming the folder to delete.
  """
  path = pathlib.Path(path)
  fix = (f'delete the folder {path} and run again: these scores are '
         'computed again, the workdir\'s other results are kept')
  if path.exists():
    try:
      with ocp.StandardCheckpointer() as ckptr:
        scores = {k: np.asarray(v) for k, v in ckptr.restore(path).items()}
    except Exception as e:  # orbax, tensorstore and json errors alike
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      raise ValueError(f'the score file {path} is damaged ({reason}); '
                       f'{fix}') from e
    if sizes is not None:
      bad = sorted(set(sizes) ^ set(scores)) + sorted(
          k for k in set(sizes) & set(scores)
          if scores[k].shape[-1:] != (sizes[k],))
      if bad:
        raise ValueError(f'the score file {path} holds scores of other units '
                         f'than the model\'s (differ: {", ".join(bad[:8])}); '
                         f'{fix}')
    return scores
  scores = compute()
  path.parent.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, {k: np.asarray(v) for k, v in scores.items()})
  return scores
