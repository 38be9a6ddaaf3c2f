"""The wheel as a new user gets it: built from this checkout, installed into
a fresh Python 3.13 virtual environment without the test extra, its
``pxp-prune`` console script runs the pruning job on the shipped ResNet
from an empty folder, and the public API imports and explains the shipped
ViT. The installed package reads nothing of the checkout."""

import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # builds the wheel, installs it into a fresh venv

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = '3.13'

API_CHECK = r'''
import importlib.util, json
import jax.numpy as jnp, numpy as np
import pxp_jax
from pxp_jax import checkpoints, composites, data
assert importlib.util.find_spec('torch') is None, 'torch came with the runtime'
assert checkpoints.names() == ['resnet_digits', 'vit_digits'], checkpoints.names()
model, variables = checkpoints.load('vit_digits')
preprocess = data.Preprocess(**checkpoints.recipe('vit_digits')['preprocess'])
test = data.load('digits', 'test')
images, labels = data.reference_batch(test, preprocess, n_per_class=1, seed=0)
result = pxp_jax.attribute(model, variables, jnp.asarray(images),
                           jnp.asarray(labels), composites.attn_lrp())
print(json.dumps({'input': list(result.input.shape),
                  'finite': bool(np.isfinite(np.asarray(result.input)).all()),
                  'file': pxp_jax.__file__}))
'''


def _python(version: str) -> str:
  """A Python ``version`` interpreter: on the PATH, or one pyenv holds."""
  candidates = [shutil.which(f'python{version}')]
  if shutil.which('pyenv'):
    root = subprocess.run(['pyenv', 'root'], capture_output=True, text=True,
                          check=False).stdout.strip()
    candidates += sorted(glob.glob(f'{root}/versions/{version}*/bin/'
                                   f'python{version}'))
  for candidate in filter(None, candidates):
    if subprocess.run([candidate, '--version'], capture_output=True,
                      check=False).returncode == 0:
      return candidate
  pytest.skip(f'no Python {version} interpreter (python{version} on the '
              'PATH or in pyenv)')


def _run(command, **kwargs):
  """Runs ``command``; on failure the error shows its output."""
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        **kwargs)
  assert done.returncode == 0, (
      f'{command} exited {done.returncode}\n{done.stdout[-4000:]}\n'
      f'{done.stderr[-4000:]}')
  return done.stdout


def test_wheel_installs_and_runs_on_python_313(tmp_path):
  python = _python(PYTHON)
  started = time.perf_counter()
  # Build from a copy of what the wheel is made of, so the checkout gets no
  # build/ or egg-info folders.
  source = tmp_path / 'source'
  source.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / 'pxp_jax', source / 'pxp_jax',
                  ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
  _run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
        '--wheel-dir', str(tmp_path / 'dist'), str(source)])
  wheel, = (tmp_path / 'dist').glob('pxp_jax-*.whl')
  assert wheel.stat().st_size < 8e6, f'{wheel.name}: {wheel.stat().st_size} B'

  venv = tmp_path / 'venv'
  _run([python, '-m', 'venv', str(venv)])
  env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK='1',
             PYTHONNOUSERSITE='1')
  env.pop('PYTHONPATH', None)
  _run([str(venv / 'bin' / 'python'), '-m', 'pip', 'install', '--quiet',
        str(wheel)], env=env)
  installed = time.perf_counter()

  # A new user's folder and home: no checkout, no prepared data.
  empty = tmp_path / 'empty'
  empty.mkdir()
  user = dict(env, HOME=str(tmp_path / 'home'), MPLBACKEND='Agg')
  user.pop('PXP_JAX_CHECKPOINTS', None)
  output = _run([str(venv / 'bin' / 'pxp-prune'),
                 '--config=prune:model=resnet_digits,runlocal',
                 '--config.criteria=("lrp","random","weight")',
                 '--config.heatmaps=2', '--workdir=run'], cwd=empty, env=user)
  results = json.loads((empty / 'run' / 'results.json').read_text())
  recorded = json.loads(
      (ROOT / 'pxp_jax/shipped/resnet_digits/model.json').read_text())
  # The installed checkpoint is the shipped one: same test accuracy.
  assert results['unpruned_accuracy'] == pytest.approx(
      recorded['test_accuracy'], abs=1e-9)
  assert set(results['criteria']) == {'lrp', 'random', 'weight'}
  assert {'curve.png', 'heatmaps.png', 'results.csv'} <= {
      p.name for p in (empty / 'run').iterdir()}
  assert 'lrp' in output and 'A_PR' in output
  ran = time.perf_counter()

  api = json.loads(_run([str(venv / 'bin' / 'python'), '-c', API_CHECK],
                        cwd=empty, env=user).strip().splitlines()[-1])
  assert api['input'] == [10, 32, 32, 3] and api['finite']
  assert pathlib.Path(api['file']).is_relative_to(venv), api['file']
  print(f'wheel {wheel.stat().st_size / 1e6:.1f} MB; build and install '
        f'{installed - started:.0f} s, pxp-prune {ran - installed:.0f} s')
