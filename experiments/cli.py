"""What every experiment binary shares: a --config file, a --workdir, and
the flags that join the processes of a multi-host job."""

from absl import app, flags, logging
from ml_collections import config_flags

from pxp_jax import distribute

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'job (not needed on a Cloud TPU slice, SLURM or Open MPI, which JAX '
    'detects).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes of a multi-process job.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process: 0 to --num_processes - 1.')


def define_config_and_workdir(default_config: str, help_text: str):
  """The ``--config`` (ml_collections file, locked) and required
  ``--workdir`` flags of a binary."""
  config = config_flags.DEFINE_config_file('config', default_config,
                                           help_text, lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'Output folder; a re-run '
                                'with the same config resumes.', required=True)
  return config, workdir


def start(argv, processes: bool = True) -> None:
  """Rejects stray arguments, quiets library INFO logs (orbax logs every
  save) unless ``--verbosity`` was given, and joins the other processes of
  a multi-process job (``pxp_jax.distribute.initialize``); a binary
  without ``processes`` runs as one process on its host's devices."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if not processes:
    if _COORDINATOR.value or _NUM_PROCESSES.value or _PROCESS_ID.value:
      raise app.UsageError(
          'this binary runs as one process per host: start one search '
          'worker per host on a shared --config.storage instead of '
          '--coordinator_address/--num_processes/--process_id')
    return
  try:
    distribute.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                          _PROCESS_ID.value)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
