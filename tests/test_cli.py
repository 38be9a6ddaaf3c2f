"""The binaries' command lines: ``--config`` by a shipped config's name or a
file, and the errors a mistyped config gets before anything runs."""

import re
import subprocess
import sys

import pytest

from pxp_jax.experiments import cli


def _prune(*args, cwd=None):
  """Runs the prune binary; returns (exit code, stderr)."""
  done = subprocess.run(
      [sys.executable, '-m', 'pxp_jax.experiments.prune', *args],
      capture_output=True, text=True, check=False, cwd=cwd, timeout=300)
  return done.returncode, done.stderr


def test_config_file_resolves_shipped_names_and_paths(tmp_path):
  prune = cli.config_file('prune:model=vit_digits,runlocal')
  path, _, arg = prune.partition(':')
  assert path == str(cli.CONFIGS / 'prune.py')
  assert arg == 'model=vit_digits,runlocal'
  own = tmp_path / 'mine.py'
  own.write_text('def get_config(arg=None):\n  return {}\n')
  assert cli.config_file(f'{own}:x=1') == f'{own}:x=1'
  with pytest.raises(ValueError, match='neither a config file nor a shipped '
                     'config.*train, prune, search, iterative, imagenet'):
    cli.config_file('prunee')
  # Every shipped name is a config file in the package.
  assert all((cli.CONFIGS / f'{name}.py').is_file()
             for name in cli.SHIPPED_CONFIGS)


@pytest.mark.parametrize('args, expected', [
    (('--config=prune:modle=vit_digits',),
     "unknown config option 'modle'.*valid options: model, runlocal"),
    (('--config=prune:model=resnet_digits', '--config.modle=vit_digits'),
     "--config has no field 'modle'. Did you mean \"model\""),
    (('--config=prune', '--config.mesh.dta=2'),
     "--config has no field 'dta'"),
    (('--config=mine.py',), 'config file mine.py does not load.*get_config'),
    (('--config=prune', '--config.n_per_class=1.5'),
     '--config.n_per_class=1.5'),
])
@pytest.mark.slow
def test_mistyped_configs_stop_before_running(tmp_path, args, expected):
  (tmp_path / 'mine.py').write_text('x = 1\n')
  code, stderr = _prune(*args, '--workdir=run', cwd=tmp_path)
  assert code == 1, stderr[-2000:]
  assert 'FATAL Flags parsing error' in stderr and 'Traceback' not in stderr
  last = stderr.strip().splitlines()
  assert any(re.search(expected, line) for line in last), stderr
  assert not (tmp_path / 'run').exists()
