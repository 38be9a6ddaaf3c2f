r"""Trials per minute of the search with one worker and with two workers on
one journal file (``--config.storage=journal``), same settings.

  python benchmarks/search_workers.py [--n_trials=16] [--model=resnet_digits]

Each run is a fresh study of ``--n_trials`` trials (the runlocal config, one
reference sample per class, three rates, TPE). The trial phase runs from
the first trial's start to the last trial's end (optuna's times), so it
includes each worker's compilations in its first trial but not the start-up
or the final comparison; "after the first trials" counts only the trials
after each worker's first (no compilation); the wall time is the processes'
whole run. Two
workers share the machine's cores: on a 2-core CPU expect little gain, on
a machine per worker (or a core per worker and memory bandwidth to spare)
up to 2x.
"""

import argparse
import collections
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import optuna

from pxp_jax import data
from pxp_jax.jobs import search

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(n_workers: int, n_trials: int, model: str, data_dir: str,
        workdir: pathlib.Path) -> dict:
  """``n_workers`` processes of ``experiments.search`` on one journal."""
  command = [
      sys.executable, '-m', 'experiments.search',
      f'--config=experiments/configs/search.py:model={model},runlocal',
      '--config.n_per_class=1', '--config.rates=(0.0,0.2,0.4)',
      '--config.random_seeds=1', '--config.sampler=tpe',
      '--config.tensorboard=False', f'--config.data_dir={data_dir}',
      '--config.storage=journal', f'--workdir={workdir}',
      f'--n_trials={n_trials}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  start = time.time()
  procs = [subprocess.Popen(command, cwd=ROOT, env=env,  # pylint: disable=consider-using-with
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for _ in range(n_workers)]
  outputs = [p.communicate()[0] for p in procs]
  wall = time.time() - start
  for p, out in zip(procs, outputs):
    if p.returncode:
      raise RuntimeError(f'a worker failed:\n{out[-3000:]}')
  study = optuna.load_study(
      study_name=search.STUDY, storage=optuna.storages.journal.JournalStorage(
          optuna.storages.journal.JournalFileBackend(
              str(workdir / 'study.journal'))))
  complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  phase = (max(t.datetime_complete for t in complete) -
           min(t.datetime_start for t in complete)).total_seconds()
  per_worker = collections.defaultdict(list)
  for t in sorted(complete, key=lambda t: t.number):
    per_worker[t.user_attrs['worker']].append(t)
  later = [t for ts in per_worker.values() for t in ts[1:]]  # compiled
  later_s = (max(t.datetime_complete for t in later) -
             min(t.datetime_start for t in later)).total_seconds()
  return {'trials': len(complete), 'phase_s': phase, 'wall_s': wall,
          'per_min': 60 * len(complete) / phase,
          'later_per_min': 60 * len(later) / later_s,
          'per_worker': sorted(map(len, per_worker.values()), reverse=True)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--n_trials', type=int, default=16)
  parser.add_argument('--model', default='resnet_digits')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    data.load('digits', 'train', data_dir=str(tmp / 'tfds'))
    rows = {n: run(n, args.n_trials, args.model, str(tmp / 'tfds'),
                   tmp / f'workers_{n}') for n in (1, 2)}
  print(f'{args.model}, {args.n_trials} trials, journal storage, '
        f'{os.cpu_count()} CPUs')
  print('| workers | complete trials (per worker) | trial phase s | '
        'trials per minute | x one worker | after the first trials, per '
        'minute | x one worker | wall s |')
  print('|---|---|---|---|---|---|---|---|')
  for n, r in rows.items():
    print(f"| {n} | {r['trials']} ({' + '.join(map(str, r['per_worker']))}) "
          f"| {r['phase_s']:.1f} | {r['per_min']:.2f} | "
          f"{r['per_min'] / rows[1]['per_min']:.2f} | "
          f"{r['later_per_min']:.2f} | "
          f"{r['later_per_min'] / rows[1]['later_per_min']:.2f} | "
          f"{r['wall_s']:.1f} |")


if __name__ == '__main__':
  main()
