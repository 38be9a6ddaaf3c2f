"""The pruning job end to end on the embedded data and a shipped model."""

import json

import numpy as np
import pytest

from experiments.configs import prune as prune_configs
from pxp_jax.jobs import prune, task as task_lib
from pxp_jax.prune import criteria

pytestmark = pytest.mark.slow  # each test runs the job


def _config(digits_dir, **changes):
  config = prune_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.heatmaps = 4
  config.update(changes)
  return config


def test_job_writes_results_and_reuses_its_scores(digits_dir, tmp_path,
                                                  monkeypatch, capsys):
  results = prune.prune(_config(digits_dir), tmp_path)
  printed = capsys.readouterr().out
  assert 'A_PR' in printed and 'integrated_gradients' in printed
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written == json.loads(json.dumps(results))
  assert set(written['criteria']) == set(criteria.CRITERIA)
  assert written['unpruned_accuracy'] >= 0.97
  for c in written['criteria'].values():
    assert c['rates'] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert c['accuracy'][0] == written['unpruned_accuracy']
    assert 0 <= c['a_pr'] <= 1 and 0 <= c['top_pr'] < 1
  random = written['criteria']['random']  # mean and SEM over seeds
  assert len(random['accuracy_per_seed']) == 2
  assert len(random['accuracy_sem']) == 5 and random['a_pr_sem'] >= 0
  assert random['a_pr'] == pytest.approx(
      sum(sum(s) / 5 for s in random['accuracy_per_seed']) / 2)
  for name in ('results.csv', 'curve.png', 'heatmaps.png'):
    assert (tmp_path / name).stat().st_size > 100
  # The same config again: the saved scores are reused, nothing is recomputed.
  for criterion in criteria.REGISTRY.values():
    monkeypatch.setattr(criterion, 'score', lambda *a, **k: pytest.fail(
        'scores were recomputed'))
  again = prune.prune(_config(digits_dir), tmp_path)
  assert again['criteria'] == results['criteria']


def test_job_refuses_a_workdir_of_another_config(digits_dir, tmp_path):
  prune.prune(_config(digits_dir, criteria=('weight',)), tmp_path)
  before = (tmp_path / 'results.json').read_text()
  with pytest.raises(ValueError, match='different config.*units'):
    prune.prune(_config(digits_dir, criteria=('weight',),
                        units='neurons'), tmp_path)
  assert (tmp_path / 'results.json').read_text() == before


def test_rates_without_zero_measure_the_unpruned_model_apart(digits_dir,
                                                             tmp_path):
  results = prune.prune(_config(digits_dir, criteria=('weight',),
                                rates=(0.5, 0.8)), tmp_path)
  assert results['unpruned_accuracy'] >= 0.97  # not the 50% accuracy
  assert results['criteria']['weight']['accuracy'][0] < 0.97
  with pytest.raises(ValueError, match='rates must be increasing'):
    prune.prune(_config(digits_dir, criteria=('weight',), rates=(0.5, 0.2)),
                tmp_path / 'unordered')


def test_searched_sample_count_and_few_class_options(digits_dir, tmp_path,
                                                     capsys):
  searched = tmp_path / 'best_composite.json'
  searched.write_text(json.dumps({'preset': 'pxp_groups', 'args': {},
                                  'signed': False, 'n_per_class': 1}))
  results = prune.prune(_config(digits_dir, criteria=('lrp',),
                                composite_json=str(searched), classes=(1, 7),
                                other_classes='zeroed'), tmp_path / 'a')
  assert '2 reference samples' in capsys.readouterr().out  # 1 per class
  assert results['unpruned_accuracy'] >= 0.9
  # The reference's few-class task: the other classes' head rows are zero.
  task = task_lib.Task.load('resnet_digits', data_dir=digits_dir,
                            classes=(1, 7), other_classes='zeroed')
  kernel = np.asarray(task.variables['params']['fc']['kernel'])
  bias = np.asarray(task.variables['params']['fc']['bias'])
  assert np.all(kernel[:, [0, 2, 3, 4, 5, 6, 8, 9]] == 0)
  assert np.all(kernel[:, [1, 7]] != 0) and np.all(bias[[0, 9]] == 0)
  with pytest.raises(ValueError, match='at least two different classes'):
    prune.prune(_config(digits_dir, classes=(3, 3)), tmp_path / 'b')
  with pytest.raises(ValueError, match='other_classes must be one of'):
    prune.prune(_config(digits_dir, classes=(1, 7), other_classes='dropped'),
                tmp_path / 'c')
