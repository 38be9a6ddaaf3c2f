r"""Bayesian search over LRP composites for pruning (PXP revisited).

  pxp-search --config=search:model=resnet_digits --workdir=DIR \
      --n_trials=30 [--timeout=SECONDS]

--n_trials is the total the study should reach, counted over all workers
on it: re-running with a larger number resumes and adds the rest, and
several processes with --config.storage=journal (one machine) or
--config.storage=postgresql://USER@HOST:PORT/DB (many machines) share the
study and together complete --n_trials trials. A worker is one process
on its host's devices (``--config.mesh``): to search on several hosts, start
one worker per host on a shared storage rather than one multi-process job.
Writes DIR/best_composite.json (usable as ``pxp-prune
--config.composite_json=...``), trials.csv, history.png, importance.png,
comparison.json and comparison.png.
"""

from absl import app, flags

from pxp_jax.experiments import cli
from pxp_jax.jobs import draws, search

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'search', 'Search config.')
_N_TRIALS = flags.DEFINE_integer('n_trials', 20, 'Trials the study reaches.')
_TIMEOUT = flags.DEFINE_float('timeout', None, 'Stop after this many seconds.')


def main(argv):
  cli.start(argv, processes=False)
  draws.repeat(search.search, _CONFIG.value, _WORKDIR.value,
               stem='comparison', n_trials=_N_TRIALS.value,
               timeout=_TIMEOUT.value)


def run():
  """The ``pxp-search`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
