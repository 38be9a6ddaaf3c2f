r"""Trains a model and exports it as a checkpoint.

  pxp-train --config=train:model=resnet_digits --workdir=DIR

Re-running with the same workdir resumes from the last epoch.
"""

from absl import app

from pxp_jax.experiments import cli
from pxp_jax.jobs import train

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'train', 'Training config.')


def main(argv):
  cli.start(argv)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  train.log(f"test accuracy {results['test_accuracy']:.4f}  "
        f"validation accuracy {results['validation_accuracy']:.4f}")


def run():
  """The ``pxp-train`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
