r"""Pruning by eXplaining: rank units by every criterion, prune, evaluate.

  pxp-prune --config=prune:model=resnet_digits --workdir=DIR

Writes DIR/results.json, results.csv, curve.png and heatmaps.png, and prints a
table of criteria x (A_PR, AUC, Top-PR, accuracy at 30/50/70% pruned).
Re-running with the same config reuses the scores saved in DIR.
"""

from absl import app

from pxp_jax.experiments import cli
from pxp_jax.jobs import draws, prune

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'prune', 'Pruning config.')


def main(argv):
  cli.start(argv)
  draws.repeat(prune.prune, _CONFIG.value, _WORKDIR.value, stem='results')


def run():
  """The ``pxp-prune`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
