r"""Trains a model and exports it as a checkpoint.

  python -m experiments.train \
      --config=experiments/configs/train.py:model=resnet_digits --workdir=DIR

Re-running with the same workdir resumes from the last epoch.
"""

from absl import app

from experiments import cli
from pxp_jax.jobs import train

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    'experiments/configs/train.py', 'Training config.')


def main(argv):
  cli.start(argv)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  train.log(f"test accuracy {results['test_accuracy']:.4f}  "
        f"validation accuracy {results['validation_accuracy']:.4f}")


if __name__ == '__main__':
  app.run(main)
