"""What every experiment binary shares: a --config file and a --workdir."""

from absl import app, flags, logging
from ml_collections import config_flags


def define_config_and_workdir(default_config: str, help_text: str):
  """The ``--config`` (ml_collections file, locked) and required
  ``--workdir`` flags of a binary."""
  config = config_flags.DEFINE_config_file('config', default_config,
                                           help_text, lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Output folder; a re-run '
                                'with the same config resumes.', required=True)
  return config, workdir


def start(argv) -> None:
  """Rejects stray arguments and quiets library INFO logs (orbax logs every
  save) unless ``--verbosity`` was given."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
