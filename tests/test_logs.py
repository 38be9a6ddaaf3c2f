"""TensorBoard logs of the jobs, read back with TensorBoard's own reader."""

import json
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

from experiments.configs import prune as prune_configs
from experiments.configs import train as train_configs
from pxp_jax.jobs import logs, prune, train


def _read(workdir):
  """``({tag: {step: value}}, hparams)`` of ``workdir/tensorboard``."""
  events = event_accumulator.EventAccumulator(
      str(workdir / logs.SUBDIR), size_guidance={'tensors': 0})
  events.Reload()
  scalars = {tag: {e.step: float(tensor_util.make_ndarray(e.tensor_proto))
                   for e in events.Tensors(tag)}
             for tag in events.PluginTagToContent('scalars')}
  plugin = events.PluginTagToContent('hparams')
  session = metadata.parse_session_start_info_plugin_data(
      plugin[metadata.SESSION_START_INFO_TAG])
  hparams = {k: v.WhichOneof('kind') and getattr(v, v.WhichOneof('kind'))
             for k, v in session.hparams.items()}
  return scalars, hparams


def _prune_config(digits_dir, **changes):
  config = prune_configs.get_config('model=resnet_digits,runlocal')
  config.update(dict(data_dir=digits_dir, criteria=('lrp', 'weight'),
                     n_per_class=1, rates=(0.0, 0.4, 0.8), heatmaps=0),
                **changes)
  return config


@pytest.mark.slow
def test_prune_job_logs_its_results_and_config(digits_dir, tmp_path):
  prune.prune(_prune_config(digits_dir), tmp_path)
  results = json.loads((tmp_path / 'results.json').read_text())
  scalars, hparams = _read(tmp_path)
  for name in ('lrp', 'weight'):
    c = results['criteria'][name]
    assert scalars[f'accuracy/{name}'] == pytest.approx(
        {0: c['accuracy'][0], 40: c['accuracy'][1], 80: c['accuracy'][2]})
    assert scalars[f'a_pr/{name}'] == pytest.approx({0: c['a_pr']})
    assert scalars[f'auc/{name}'] == pytest.approx({0: c['auc']})
  assert hparams['model'] == 'resnet_digits'
  assert hparams['n_per_class'] == 1
  assert json.loads(hparams['rates']) == [0.0, 0.4, 0.8]
  assert hparams['mesh.data'] == -1  # nested fields flattened


@pytest.mark.slow
def test_train_job_logs_every_epoch(digits_dir, tmp_path):
  config = train_configs.get_config('model=resnet_digits,runlocal')
  config.update(dict(model='resnet_tiny', batch_size=128, num_epochs=1,
                     eval_batch_size=128, data_dir=digits_dir))
  config.splits.update(dict(train='train[:256]', validation='validation[:128]',
                            test='test[:128]'))
  results = train.train_and_evaluate(config, tmp_path)
  scalars, hparams = _read(tmp_path)
  assert set(scalars) == {'loss', 'train_accuracy', 'validation_accuracy',
                          'test_accuracy'}
  assert set(scalars['loss']) == {1}  # step = epoch
  assert scalars['loss'][1] > 0 and 0 <= scalars['train_accuracy'][1] <= 1
  # One epoch: the last epoch's validation accuracy is the final one.
  assert scalars['validation_accuracy'] == pytest.approx(
      {1: results['validation_accuracy']})
  assert scalars['test_accuracy'] == pytest.approx(
      {1: results['test_accuracy']})
  assert hparams['model'] == 'resnet_tiny'


@pytest.mark.slow
def test_tensorboard_off_writes_no_events(digits_dir, tmp_path):
  prune.prune(_prune_config(digits_dir, criteria=('weight',),
                            tensorboard=False), tmp_path)
  assert (tmp_path / 'results.json').exists()
  assert not (tmp_path / logs.SUBDIR).exists()


def test_missing_clu_says_so_once_and_the_job_goes_on(digits_dir, tmp_path,
                                                      monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'clu.metric_writers', None)  # not installed
  prune.prune(_prune_config(digits_dir, criteria=('weight',)), tmp_path)
  out = capsys.readouterr().out
  notes = [line for line in out.splitlines() if 'TensorBoard' in line]
  assert len(notes) == 1 and '[tensorboard]' in notes[0], notes
  assert 'A_PR' in out  # the console table still comes
  assert not (tmp_path / logs.SUBDIR).exists()


def test_other_processes_write_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(logs.jax, 'process_index', lambda: 1)
  config = _prune_config('')
  out = logs.writer(tmp_path, config)
  out.write_scalars(0, {'a': 1.0})
  out.close()
  assert isinstance(out, logs.NoOpWriter)
  assert not (tmp_path / logs.SUBDIR).exists()
