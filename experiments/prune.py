r"""Pruning by eXplaining: rank units by every criterion, prune, evaluate.

  python -m experiments.prune \
      --config=experiments/configs/prune.py:model=resnet_digits --workdir=DIR

Writes DIR/results.json, results.csv, curve.png and heatmaps.png, and prints a
table of criteria x (A_PR, AUC, Top-PR, accuracy at 30/50/70% pruned).
Re-running with the same config reuses the scores saved in DIR.
"""

from absl import app

from experiments import cli
from pxp_jax.jobs import draws, prune

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'experiments/configs/prune.py', 'Pruning config.')


def main(argv):
  cli.start(argv)
  draws.repeat(prune.prune, _CONFIG.value, _WORKDIR.value, stem='results')


if __name__ == '__main__':
  app.run(main)
