"""Several search workers on one optuna study: every trial kept, none
duplicated, ``--n_trials`` counted over the study, outputs whole.

The end-to-end tests run two ``python -m experiments.search`` processes on
a journal file and on a real PostgreSQL server (Debian's binaries, started
on loopback for the session); optuna itself reads the study back.
"""

import csv
import glob
import itertools
import json
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time

import optuna
import pytest

from pxp_jax import composites
from pxp_jax.jobs import search
from pxp_jax.search import workers

ROOT = pathlib.Path(__file__).resolve().parents[1]
N_TRIALS = 4  # the two usual composites and two drawn ones


# ---------------------------------------------------------------- units


def _journal(path):
  return optuna.storages.journal.JournalStorage(
      optuna.storages.journal.JournalFileBackend(str(path)))


@pytest.mark.parametrize('spec,error,message', [
    ('sqlite', ValueError, "unknown storage 'sqlite'"),
    ('journal:', ValueError, 'names a file'),
    ('journal:/no/such/folder/study.journal', ValueError,
     'folder /no/such/folder does not exist'),
    ('nosuchdb://host/db', ValueError, 'names a known database'),
    ('postgresql://user:secret@127.0.0.1:9/pxp', ConnectionError,
     r"(?s)'postgresql://user:\*\*\*@127.0.0.1:9/pxp'.*server runs.*"
     r'127.0.0.1:9'),
])
def test_bad_storages_are_clear_errors(tmp_path, spec, error, message):
  with pytest.raises(error, match=message):
    search._storage(spec, tmp_path)  # pylint: disable=protected-access


def test_storage_forms(tmp_path):
  journal = optuna.storages.journal.JournalStorage
  assert isinstance(search._storage('journal', tmp_path), journal)
  shared = tmp_path / 'shared'
  shared.mkdir()
  assert isinstance(search._storage(f'journal:{shared}/s.journal', tmp_path),
                    journal)
  sqlite = search._storage('', tmp_path)  # pylint: disable=protected-access
  assert isinstance(sqlite, optuna.storages.RDBStorage)
  assert sqlite.heartbeat_interval == workers.HEARTBEAT_S
  assert (tmp_path / 'study.db').exists()
  url = search._storage(f'sqlite:///{tmp_path}/other.db', tmp_path)
  assert url.grace_period == workers.GRACE_S


def test_sampler_is_seeded_by_the_trial_number(tmp_path):
  """Trial n draws with seed + n: the same draw for the same number and
  history, a different one for another number."""
  def draws(numbers_to_skip):
    study = optuna.create_study(sampler=workers.SeededPerTrial(
        optuna.samplers.TPESampler, seed=7))
    for _ in range(numbers_to_skip):  # trials that hold the first numbers
      study.add_trial(optuna.create_trial(state=optuna.trial.TrialState.FAIL))
    trial = study.ask()
    return trial.number, trial.suggest_float('x', 0.0, 1.0)

  assert draws(0) == draws(0)
  assert draws(0)[1] != draws(1)[1]
  expected = optuna.create_study(
      sampler=optuna.samplers.TPESampler(seed=7 + 3)).ask()
  assert draws(3)[1] == expected.suggest_float('x', 0.0, 1.0)


@pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')
@pytest.mark.filterwarnings('ignore:Heartbeat of storage:UserWarning')
def test_dead_trials_are_retried_and_live_ones_kept(tmp_path, monkeypatch):
  """A running trial whose heartbeat stopped for GRACE_S is failed and
  queued again with its parameters; one with a fresh heartbeat is not."""
  monkeypatch.setattr(workers, 'GRACE_S', 1)
  path = tmp_path / 'study.journal'
  first, second = _journal(path), _journal(path)  # two workers' storages
  study = optuna.create_study(storage=first, study_name='s')
  dead, live = study.ask(), study.ask()
  dead.suggest_float('x', 0.0, 1.0)
  live.suggest_float('x', 0.0, 1.0)
  for t in (dead, live):
    assert workers.beat(t)
  time.sleep(1.5)
  assert workers.beat(live)
  other = optuna.load_study(storage=second, study_name='s')
  workers.fail_stale(other, second)
  trials = optuna.load_study(storage=_journal(path), study_name='s').trials
  assert [t.state.name for t in trials] == ['FAIL', 'RUNNING', 'WAITING']
  assert trials[2].params == dead.params
  assert trials[2].system_attrs['failed_trial'] == dead.number


@pytest.mark.slow
def test_n_trials_is_the_study_total_over_workers(tmp_path):
  """Three workers (threads with storages of their own, as processes have)
  with n_trials=7 together complete exactly 7 trials, none twice."""
  path = tmp_path / 'study.journal'
  optuna.create_study(storage=_journal(path), study_name='s')
  ran = {}

  def worker(k):
    storage = _journal(path)
    study = optuna.load_study(storage=storage, study_name='s',
                              sampler=workers.SeededPerTrial(
                                  optuna.samplers.RandomSampler, seed=0))

    def objective(trial):
      trial.set_user_attr('worker', k)
      if workers.surplus(study, trial, 7):
        raise optuna.TrialPruned()
      time.sleep(0.05 * (1 + k))  # unequal speeds
      return trial.suggest_float('x', 0.0, 1.0)

    workers.run(study, storage, objective, 7, deadline=time.time() + 60,
                callbacks=[])
    ran[k] = True

  threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=90)
  assert ran == {0: True, 1: True, 2: True}
  trials = optuna.load_study(storage=_journal(path), study_name='s').trials
  complete = [t for t in trials if t.state.name == 'COMPLETE']
  assert len(complete) == 7
  assert len({t.params['x'] for t in complete}) == 7
  assert {t.state.name for t in trials} <= {'COMPLETE', 'PRUNED'}


# ------------------------------------------------------ two real workers


def _workers(workdirs, data_dir, storage, cache_dir, n_trials=N_TRIALS):
  """Runs one ``experiments.search`` process per workdir, together; returns
  their process ids and outputs."""
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             # Compiled programs shared between the tests' processes (each
             # process still compiles, or loads, its programs once).
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  procs = []
  for k, workdir in enumerate(workdirs):
    log = open(pathlib.Path(workdir).parent / f'worker{k}.log', 'w+')  # pylint: disable=consider-using-with
    procs.append((subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, '-m', 'experiments.search',
         '--config=experiments/configs/search.py:model=resnet_digits,runlocal',
         '--config.n_per_class=1', '--config.rates=(0.0,0.2,0.4)',
         '--config.random_seeds=1', '--config.sampler=tpe',
         '--config.tensorboard=False', f'--config.data_dir={data_dir}',
         f'--config.storage={storage}', f'--workdir={workdir}',
         f'--n_trials={n_trials}'],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  outputs, deadline = [], time.time() + 400
  try:
    for proc, _ in procs:
      proc.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for proc, log in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.seek(0)
      outputs.append(log.read())
      log.close()
  for (proc, _), output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  return [p.pid for p, _ in procs], outputs


def _check_study(study, pids, n_trials=N_TRIALS):
  complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  assert len(complete) == n_trials
  drawn = [tuple(sorted(t.params.items())) for t in complete]
  assert len(set(drawn)) == n_trials, drawn  # no trial ran twice
  # The two usual composites ran once each.
  assert sum(t.params['low.rule'] == 'zplus' and t.params['zero_bias']
             and t.params['low.eps'] == 1e-6 for t in complete) == 1
  by_worker = {}
  for t in sorted(complete, key=lambda t: t.number):
    by_worker.setdefault(int(t.user_attrs['worker'].rsplit(':', 1)[1]),
                         []).append(t)
  assert set(by_worker) == set(pids)  # both workers ran trials
  for trials in by_worker.values():  # each worker compiled once
    assert all(t.user_attrs['compiles'] == 0 for t in trials[1:])
  return complete


def _check_outputs(workdir, complete):
  workdir = pathlib.Path(workdir)
  with open(workdir / 'trials.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(int(r['number']) for r in rows if r['state'] == 'COMPLETE'
                ) == sorted(t.number for t in complete)
  best = json.loads((workdir / 'best_composite.json').read_text())
  assert best['validation_a_pr'] == max(t.value for t in complete)
  composites.from_json(best)  # what experiments.prune reads
  comparison = json.loads((workdir / 'comparison.json').read_text())
  assert comparison['criteria']['optimised']['a_pr'] > 0
  for name in ('history.png', 'importance.png', 'comparison.png'):
    assert (workdir / name).stat().st_size > 1000
  assert not list(workdir.glob('.staging-*'))  # every output moved in


@pytest.mark.slow
def test_two_workers_on_a_journal_file(digits_dir, tmp_path,
                                       compilation_cache):
  workdir = tmp_path / 'search'
  pids, outputs = _workers([workdir, workdir], digits_dir, 'journal',
                           compilation_cache)
  study = optuna.load_study(study_name=search.STUDY, storage=_journal(
      workdir / 'study.journal'))
  complete = _check_study(study, pids)
  _check_outputs(workdir, complete)
  assert all('running until the study has 4' in o for o in outputs)


# ------------------------------------------------------------ PostgreSQL


def _postgres_bin():
  """The folder of Debian's PostgreSQL server binaries, or None."""
  found = sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_ctl'),
                 key=lambda p: int(pathlib.Path(p).parts[-3]))
  if found:
    return pathlib.Path(found[-1]).parent
  if shutil.which('pg_ctl') and shutil.which('initdb'):
    return pathlib.Path(shutil.which('pg_ctl')).parent
  return None


def _install_postgres():
  """Debian's ``postgresql`` package, without starting its service; the
  reason it cannot be installed, or None."""
  if os.geteuid() != 0 or not shutil.which('apt-get'):
    return ('PostgreSQL is not installed, and installing it needs root and '
            'apt-get (apt-get install postgresql)')
  policy = pathlib.Path('/usr/sbin/policy-rc.d')
  ours = not policy.exists()
  if ours:  # the package must not start a system server
    policy.write_text('#!/bin/sh\nexit 101\n')
    policy.chmod(0o755)
  try:
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    install = ['apt-get', 'install', '-y', '--no-install-recommends',
               'postgresql']
    result = subprocess.run(install, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode:  # a fresh machine may have no package lists yet
      subprocess.run(['apt-get', 'update'], env=env, capture_output=True,
                     timeout=600, check=False)
      result = subprocess.run(install, env=env, capture_output=True,
                              text=True, timeout=600, check=False)
    if result.returncode:
      return f'apt-get install postgresql failed: {result.stderr[-500:]}'
  finally:
    if ours:
      policy.unlink()
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='session')
def postgres_server(tmp_path_factory):
  """A PostgreSQL server on 127.0.0.1 for the session: ``(port, user)``.

  Started with Debian's ``initdb``/``pg_ctl`` (installed with apt-get
  when missing, as root) in a data folder under pytest's tmp dir, as the
  ``postgres`` user when we are root (PostgreSQL refuses root); stopped by
  the teardown (``pg_ctl stop -m fast``).
  """
  pytest.importorskip('psycopg2', reason="the postgres extra's driver: pip "
                      "install 'pxp_jax[postgres]'")
  bindir = _postgres_bin()
  if bindir is None:
    reason = _install_postgres()
    bindir = _postgres_bin()
    if bindir is None:
      pytest.skip(reason or 'no PostgreSQL server binaries after installing')
  root = tmp_path_factory.mktemp('postgres')
  data, port = root / 'data', _free_port()
  as_user, user, modes = [], os.environ.get('USER', 'postgres'), {}
  if os.geteuid() == 0:
    as_user, user = ['runuser', '-u', 'postgres', '--'], 'postgres'
    shutil.chown(root, 'postgres', 'postgres')
    # The postgres user may traverse pytest's root-only folders for the
    # session (no listing); the teardown restores their modes.
    top = pathlib.Path(tmp_path_factory.getbasetemp()).parent
    for parent in [p for p in root.parents if top in (p, *p.parents)]:
      modes[parent] = parent.stat().st_mode
      parent.chmod(modes[parent] | stat.S_IXOTH)
  run = lambda *args: subprocess.run(  # noqa: E731
      [*as_user, *map(str, args)], check=True, capture_output=True,
      text=True, timeout=120)
  started = False
  try:
    run(bindir / 'initdb', '-D', data, '-U', user, '--auth=trust', '-E',
        'UTF8', '--no-sync')
    try:
      run(bindir / 'pg_ctl', '-D', data, '-l', root / 'server.log', '-w',
          '-t', '60', '-o', f'-p {port} -c listen_addresses=127.0.0.1 '
          f'-k {root} -F', 'start')
    except subprocess.CalledProcessError as error:
      log = root / 'server.log'
      raise RuntimeError(f'PostgreSQL did not start: {error.stderr}\n'
                         f'{log.read_text() if log.exists() else ""}'
                         ) from None
    started = True
    yield port, user
  finally:
    if started:
      run(bindir / 'pg_ctl', '-D', data, '-m', 'fast', '-w', 'stop')
    for parent, mode in modes.items():
      parent.chmod(mode)


_DATABASES = itertools.count()


@pytest.fixture
def postgres_url(postgres_server):
  """A new, empty database on the session's server, as an SQLAlchemy URL."""
  import psycopg2  # pylint: disable=g-import-not-at-top
  port, user = postgres_server
  name = f'pxp_{next(_DATABASES)}'
  connection = psycopg2.connect(host='127.0.0.1', port=port, user=user,
                                dbname='postgres')
  connection.autocommit = True
  with connection.cursor() as cursor:
    cursor.execute(f'CREATE DATABASE {name}')
  connection.close()
  return f'postgresql://{user}@127.0.0.1:{port}/{name}'


@pytest.fixture(scope='session')
def compilation_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


@pytest.mark.slow
def test_two_workers_on_postgresql(digits_dir, tmp_path, postgres_url,
                                   compilation_cache):
  # Two workdirs, as on two machines: each worker writes its own outputs.
  workdirs = [tmp_path / 'machine_a', tmp_path / 'machine_b']
  pids, _ = _workers(workdirs, digits_dir, postgres_url, compilation_cache)
  study = optuna.load_study(study_name=search.STUDY, storage=postgres_url.replace(
      'postgresql://', 'postgresql+psycopg2://'))
  complete = _check_study(study, pids)
  for workdir in workdirs:
    _check_outputs(workdir, complete)
  assert json.loads(study.user_attrs['config'])['model'] == 'resnet_digits'
