r"""Trains a model and exports it as a checkpoint.

  python -m experiments.train \
      --config=experiments/configs/train.py:model=resnet_digits --workdir=DIR

Re-running with the same workdir resumes from the last epoch.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from pxp_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/configs/train.py', 'Training config.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (resumable).',
                               required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(f"test accuracy {results['test_accuracy']:.4f}  "
        f"validation accuracy {results['validation_accuracy']:.4f}")


if __name__ == '__main__':
  app.run(main)
