r"""Pruning by eXplaining: rank units by every criterion, prune, evaluate.

  python -m experiments.prune \
      --config=experiments/configs/prune.py:model=resnet_digits --workdir=DIR

Writes DIR/results.json, results.csv, curve.png and heatmaps.png, and prints a
table of criteria x (A_PR, AUC, Top-PR, accuracy at 30/50/70% pruned).
Re-running with the same config reuses the scores saved in DIR.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from pxp_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/prune.py', 'Pruning config.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder.',
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  experiment.prune(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
