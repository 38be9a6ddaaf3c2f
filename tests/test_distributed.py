"""Devices and processes: a job sharded over a mesh, or run by two processes,
gives the results of one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from pxp_jax import distribute

pytestmark = pytest.mark.slow  # several devices and processes in subprocesses

ROOT = pathlib.Path(__file__).resolve().parents[1]
CRITERIA = '("lrp","weight","gradient","integrated_gradients")'


def _prune(workdir, data_dir, devices, *extra, model='resnet_digits',
           process=None, port=None, background=False):
  """The prune binary on ``devices`` forced host devices (a subprocess)."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count='
             f'{devices}', JAX_PLATFORMS='cpu')
  command = [
      sys.executable, '-m', 'experiments.prune',
      f'--config=experiments/configs/prune.py:model={model},runlocal',
      f'--config.data_dir={data_dir}', f'--config.criteria={CRITERIA}',
      '--config.heatmaps=0', '--config.tensorboard=false',
      f'--workdir={workdir}', *extra]
  if process is not None:
    command += [f'--coordinator_address=127.0.0.1:{port}',
                '--num_processes=2', f'--process_id={process}']
  run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  return run if background else _finished(run)


def _finished(run) -> str:
  out, _ = run.communicate(timeout=600)
  assert run.returncode == 0, out[-3000:]
  return out


def _scores(workdir) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  with ocp.StandardCheckpointer() as ckptr:
    for path in sorted((workdir / 'scores').iterdir()):
      out[path.name] = {k: np.asarray(v)
                        for k, v in ckptr.restore(path.resolve()).items()}
  return out


def _largest_differences(a, b) -> tuple[float, float]:
  """Largest relative score difference and largest accuracy difference of
  two prune workdirs, after checking they hold the same things."""
  scores_a, scores_b = _scores(a), _scores(b)
  assert scores_a.keys() == scores_b.keys()
  score_diff = max(
      float(np.max(np.abs(s[k] - scores_b[c][k]))
            / max(np.max(np.abs(s[k])), 1e-30))
      for c, s in scores_a.items() for k in s)
  results_a = json.loads((a / 'results.json').read_text())
  results_b = json.loads((b / 'results.json').read_text())
  assert results_a['criteria'].keys() == results_b['criteria'].keys()
  accuracy_diff = max(
      abs(results_a['unpruned_accuracy'] - results_b['unpruned_accuracy']),
      *(float(np.max(np.abs(np.subtract(c['accuracy'],
                                        results_b['criteria'][n]['accuracy']))))
        for n, c in results_a['criteria'].items()))
  return score_diff, accuracy_diff


@pytest.fixture(scope='module')
def one_device(digits_dir, tmp_path_factory):
  """The resnet_digits prune job on one device."""
  workdir = tmp_path_factory.mktemp('one_device')
  _prune(workdir, digits_dir, 1)
  return workdir


def test_four_devices_give_the_results_of_one(one_device, digits_dir,
                                              tmp_path):
  # The batches split over 2 data devices, the mask rows over 2 more.
  _prune(tmp_path, digits_dir, 4, '--config.mesh.data=2',
         '--config.mesh.rows=2')
  score_diff, accuracy_diff = _largest_differences(tmp_path, one_device)
  print(f'4 devices vs 1: scores {score_diff:.2e} (relative), accuracies '
        f'{accuracy_diff:.2e}')
  assert score_diff <= 1e-6 and accuracy_diff <= 1e-6
  results = json.loads((tmp_path / 'results.json').read_text())
  assert (results['devices'], results['processes']) == (4, 1)
  assert results['mesh'] == {'data': 2, 'rows': 2}


def test_vit_heads_on_four_data_devices(digits_dir, tmp_path):
  one, four = tmp_path / 'one', tmp_path / 'four'
  for workdir, devices in ((one, 1), (four, 4)):
    _prune(workdir, digits_dir, devices, '--config.units=heads',
           model='vit_digits')
  score_diff, accuracy_diff = _largest_differences(four, one)
  print(f'ViT heads, 4 devices vs 1: scores {score_diff:.2e}, accuracies '
        f'{accuracy_diff:.2e}')
  assert score_diff <= 1e-6 and accuracy_diff <= 1e-6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_give_the_results_of_one(one_device, digits_dir,
                                               tmp_path):
  port = _free_port()
  runs = [_prune(tmp_path, digits_dir, 2, process=i, port=port,
                 background=True) for i in (0, 1)]
  outputs = [_finished(run) for run in runs]
  score_diff, accuracy_diff = _largest_differences(tmp_path, one_device)
  print(f'2 processes x 2 devices vs 1 device: scores {score_diff:.2e}, '
        f'accuracies {accuracy_diff:.2e}')
  assert score_diff <= 1e-6 and accuracy_diff <= 1e-6
  results = json.loads((tmp_path / 'results.json').read_text())
  assert (results['devices'], results['processes']) == (4, 2)
  # Process 0 reports and writes; process 1 computes its share silently.
  assert 'wrote results' in outputs[0] and 'A_PR' in outputs[0]
  assert 'wrote results' not in outputs[1] and 'A_PR' not in outputs[1]


def test_mesh_shapes_and_their_errors():
  devices = jax.devices()[:1]
  assert dict(distribute.make_mesh(None, devices).shape) == {'data': 1,
                                                             'rows': 1}
  with pytest.raises(ValueError, match='mesh axes are'):
    distribute.make_mesh({'model': 2}, devices)
  with pytest.raises(ValueError, match='needs 4 devices'):
    distribute.make_mesh({'data': 2, 'rows': 2}, devices)
  with pytest.raises(ValueError, match='one of them may be -1'):
    distribute.make_mesh({'data': -1, 'rows': -1}, devices)
  with pytest.raises(ValueError, match='needs --num_processes'):
    distribute.initialize('127.0.0.1:1234')
  with pytest.raises(ValueError, match='need --coordinator_address'):
    distribute.initialize(None, 2, 1)


DATA_PARALLEL_STEPS = r'''
import jax, jax.numpy as jnp, numpy as np, optax
from pxp_jax import checkpoints, distribute, models
from pxp_jax.prune import finetune, training

rng = np.random.default_rng(0)
images = rng.normal(size=(64, 32, 32, 3)).astype(np.float32)
labels = (np.arange(64) % 10).astype(np.int32)
one, four = (distribute.make_mesh(None, jax.devices()[:n]) for n in (1, 4))

# Training steps (BatchNorm statistics over the global batch, shifted crops).
model = models.create('resnet_tiny', 10)
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
tx = optax.sgd(0.1, 0.9)
step = training.train_step(model, tx, train=True, label_smoothing=0.0)
losses = {}
for name, mesh in (('one', one), ('four', four)):
  params, state, opt_state, key = distribute.replicate(
      (variables['params'], {'batch_stats': variables['batch_stats']},
       tx.init(variables['params']), jax.random.key(1)), mesh)
  batch = distribute.global_batch(dict(x=images, y=labels), mesh, 64)
  losses[name] = []
  for i in range(3):
    shifted = training.shift(batch['x'], jax.random.fold_in(key, i), 2)
    params, state, opt_state, metrics = step(
        params, state, opt_state, dict(image=shifted, label=batch['y']))
    losses[name].append(float(metrics['loss']))
print('train', np.max(np.abs(np.subtract(losses['one'], losses['four']))))

# Fine-tuning a pruned model.
model, variables = checkpoints.load('resnet_digits')
masks = {'layer1.0.conv1': np.arange(16) % 2}
tuned = [finetune.fine_tune(model, variables, masks,
                            iter([dict(image=images, label=labels)] * 3),
                            steps=3, learning_rate=1e-3, mesh=mesh)
         for mesh in (one, four)]
logits = [np.asarray(model.apply(v, images)) for v in tuned]
print('fine_tune', np.max(np.abs(logits[0] - logits[1]))
      / np.max(np.abs(logits[0])))
print('fine_tune_moved', np.max(np.abs(logits[0] - np.asarray(
    model.apply(variables, images)))) / np.max(np.abs(logits[0])))
'''


def test_training_and_fine_tuning_steps_on_four_devices_equal_one():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  out = subprocess.run([sys.executable, '-c', DATA_PARALLEL_STEPS], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  found = dict(line.split() for line in out.stdout.splitlines()
               if line.startswith(('train', 'fine_tune')))
  print(found)
  # The same steps; only the order of the float32 sums over the batch
  # differs (the gradient's all-reduce over 4 devices).
  assert float(found['train']) <= 1e-5
  # Adam divides by the gradient's scale, so weights whose gradient is
  # ~0 move by +-lr whatever the sum order: compare the fine-tuned
  # models' logits, against how far fine-tuning moved them.
  assert float(found['fine_tune']) <= 1e-4 < float(found['fine_tune_moved'])


def test_two_processes_train_checkpoint_and_export(digits_dir, tmp_path):
  """Data-parallel training over two processes: orbax's multi-host
  checkpoint, one export and one results.json, which a single process
  reads back."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  runs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.train',
       '--config=experiments/configs/train.py:model=resnet_digits,runlocal',
       '--config.model=resnet_tiny', '--config.batch_size=64',
       '--config.num_epochs=1', '--config.tensorboard=false',
       f'--config.data_dir={digits_dir}', '--config.splits.train=train[:256]',
       '--config.splits.validation=validation[:64]',
       '--config.splits.test=test[:64]', f'--workdir={tmp_path}',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in (0, 1)]
  outputs = [_finished(run) for run in runs]
  assert 'exported to' in outputs[0] and 'exported to' not in outputs[1]
  results = json.loads((tmp_path / 'results.json').read_text())
  from pxp_jax import checkpoints, data, prune  # pylint: disable=import-outside-toplevel
  model, variables = checkpoints.load(tmp_path / 'export')
  recipe = checkpoints.recipe(tmp_path / 'export')
  accuracy = prune.accuracy(model, variables, data.batches(
      data.load('digits', 'test[:64]', data_dir=digits_dir),
      data.Preprocess(**recipe['preprocess']), 32))
  assert accuracy == pytest.approx(results['test_accuracy'], abs=1e-9)
  assert (tmp_path / 'checkpoints' / '1').is_dir()
