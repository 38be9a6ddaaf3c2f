r"""Iterative PXP: prune a share of the units, fine-tune, re-score, repeat.

  pxp-iterative --config=iterative:model=resnet_digits --workdir=DIR

Writes DIR/results.json and iterative.png (accuracy against parameters:
iterative LRP, iterative weight magnitude, one-shot LRP) and prints the
table. Each round is saved in DIR/rounds; a re-run with the same config
resumes after the last finished round.
"""

from absl import app

from pxp_jax.experiments import cli
from pxp_jax.jobs import iterative

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'iterative', 'Iterative pruning config.')


def main(argv):
  cli.start(argv)
  iterative.iterative(_CONFIG.value, _WORKDIR.value)


def run():
  """The ``pxp-iterative`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
