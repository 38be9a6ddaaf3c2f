"""What every experiment binary shares: a --config (a shipped config's name
or a config file), a --workdir, and the flags that join the processes of a
multi-host job."""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pxp_jax import distribute

CONFIGS = pathlib.Path(__file__).resolve().parent / 'configs'
SHIPPED_CONFIGS = ('train', 'prune', 'search', 'iterative', 'imagenet')

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'job (not needed on a Cloud TPU slice, SLURM or Open MPI, which JAX '
    'detects).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes of a multi-process job.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process: 0 to --num_processes - 1.')


def config_file(value: str) -> str:
  """``NAME[:ARG]`` of a shipped config (``pxp_jax/experiments/configs``) or
  ``PATH[:ARG]`` of a config file -> ``PATH[:ARG]`` for ml_collections.

  Example: ``config_file('prune:model=vit_digits,runlocal')``.
  """
  path, colon, arg = value.partition(':')
  if pathlib.Path(path).expanduser().is_file():
    return str(pathlib.Path(path).expanduser()) + colon + arg
  if path in SHIPPED_CONFIGS:
    return f'{CONFIGS / path}.py{colon}{arg}'
  raise ValueError(
      f'{path!r} is neither a config file nor a shipped config; give a path '
      f'to a .py file with get_config() or one of {", ".join(SHIPPED_CONFIGS)}'
      ', e.g. --config=prune:model=resnet_digits,runlocal')


class _ShippedNames(flags.ArgumentParser):
  """ml_collections' config file parser, reading shipped names too."""

  def __init__(self, file_parser: flags.ArgumentParser):
    self.file_parser = file_parser

  def parse(self, argument):
    path = config_file(argument)
    try:
      return self.file_parser.parse(path)
    except (TypeError, ValueError) as error:
      # ml_collections re-raises get_config's error with its traceback as
      # the message: keep the error itself.
      raise type(error)(str(error.__context__ or error)) from error
    except (AttributeError, SyntaxError, ImportError) as error:
      raise ValueError(
          f'config file {path.partition(":")[0]} does not load ('
          f'{type(error).__name__}: {error}); a config file defines '
          'get_config(arg) returning an ml_collections.ConfigDict') from error

  def flag_type(self):
    return self.file_parser.flag_type()


def define_config_and_workdir(default_config: str, help_text: str):
  """The ``--config`` (a shipped config's name or a config file, each with
  an optional ``:ARG``; locked) and required ``--workdir`` flags of a
  binary."""
  config = config_flags.DEFINE_config_file(
      'config', config_file(default_config),
      f'{help_text} A shipped config ({", ".join(SHIPPED_CONFIGS)}) or a '
      'config file, each with an optional :ARG, e.g. '
      f'--config={default_config}:model=vit_digits,runlocal.',
      lock_config=True)
  flags.FLAGS['config'].parser = _ShippedNames(flags.FLAGS['config'].parser)
  workdir = flags.DEFINE_string('workdir', None, 'Output folder; a re-run '
                                'with the same config resumes.', required=True)
  return config, workdir


def parse_flags(argv):
  """absl's flag parsing (``app.run``'s ``flags_parser``), with an override
  of a field the config lacks (``--config.modle=...``, which ml_collections
  raises as an AttributeError or KeyError) as a usage error."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as error:
    message = str(error).strip('\'"').replace("\\'", "'")
    message = ' '.join(message.replace('\\n', '\n').split())
    message = message.replace("' Did you mean", "'. Did you mean")
    sys.stderr.write(
        f'FATAL Flags parsing error: --config has no field {message} '
        '(--config.FIELD=VALUE sets a field the config has: see the config '
        'file or --helpfull)\n')
    sys.exit(1)


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
