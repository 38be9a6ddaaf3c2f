"""Training resumes exactly; shipped checkpoints load and keep their accuracy."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import train as train_configs
from pxp_jax import checkpoints, data, prune
from pxp_jax.jobs import train


def _config(digits_dir, **changes):
  config = train_configs.get_config('model=resnet_digits,runlocal')
  config.model = 'resnet_tiny'
  config.batch_size = 128
  config.data_dir = digits_dir
  config.update(changes)
  return config


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_model(digits_dir, tmp_path,
                                              monkeypatch):
  straight = train.train_and_evaluate(_config(digits_dir), tmp_path / 'a')

  save = ocp.CheckpointManager.save

  def save_then_die(self, step, *args, **kwargs):
    out = save(self, step, *args, **kwargs)
    if step == 1:
      self.wait_until_finished()
      raise KeyboardInterrupt('killed after the first epoch')
    return out

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(_config(digits_dir), tmp_path / 'b')
  assert not (tmp_path / 'b' / 'results.json').exists()
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  resumed = train.train_and_evaluate(_config(digits_dir), tmp_path / 'b')

  assert resumed == straight
  _, a = checkpoints.load(tmp_path / 'a' / 'export')
  _, b = checkpoints.load(tmp_path / 'b' / 'export')
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a, b)
  written = json.loads((tmp_path / 'b' / 'results.json').read_text())
  assert written['test_accuracy'] == resumed['test_accuracy']


@pytest.mark.slow
def test_workdir_of_another_config_is_refused(digits_dir, tmp_path):
  train.train_and_evaluate(_config(digits_dir, num_epochs=1), tmp_path)
  with pytest.raises(ValueError, match='different config.*learning_rate'):
    train.train_and_evaluate(
        _config(digits_dir, num_epochs=1, learning_rate=0.5), tmp_path)


@pytest.mark.parametrize('name,floor', [('resnet_digits', 0.97),
                                        ('vit_digits', 0.95)])
def test_shipped_checkpoint_keeps_its_test_accuracy(name, floor, digits_dir):
  model, variables = checkpoints.load(name)
  recipe = checkpoints.recipe(name)
  source = data.load(recipe['dataset'], 'test', data_dir=digits_dir)
  accuracy = prune.accuracy(
      model, variables,
      data.batches(source, data.Preprocess(**recipe['preprocess']), 256))
  assert accuracy >= floor
  assert accuracy == pytest.approx(recipe['test_accuracy'], abs=1e-9)
  size = sum(f.stat().st_size for f in
             (checkpoints.shipped_dir() / name).rglob('*') if f.is_file())
  assert size < 5 * 2**20


def test_checkpoint_errors_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint .*resnet_digits'):
    checkpoints.load('resnet_digitz')
  model, variables = checkpoints.load('resnet_digits')
  checkpoints.save(tmp_path / 'c', 'resnet18_small', variables, num_classes=10)
  with pytest.raises(FileExistsError, match='already holds a checkpoint'):
    checkpoints.save(tmp_path / 'c', 'resnet18_small', variables,
                     num_classes=10)
  del model


@pytest.mark.slow
def test_diverging_runs_stop_or_say_they_did_not_learn(digits_dir, tmp_path,
                                                      capsys):
  with pytest.raises(FloatingPointError, match='the training loss is (nan|inf)'
                     '.*nothing of this epoch was saved or exported'):
    train.train_and_evaluate(
        _config(digits_dir, num_epochs=1, learning_rate=1e30), tmp_path / 'a')
  assert not (tmp_path / 'a' / 'export' / 'model.json').exists()
  # A learning rate that leaves the loss finite but ruins the model.
  results = train.train_and_evaluate(
      _config(digits_dir, num_epochs=1, learning_rate=1e6), tmp_path / 'b')
  assert results['validation_accuracy'] < train.CHANCE_FACTOR / 10
  assert 'is near chance (0.1000): this model has not learned' in (
      capsys.readouterr().out)
