"""The pruning job end to end on the embedded data and a shipped model."""

import json

import pytest

from experiments.configs import prune as prune_configs
from pxp_jax.jobs import prune
from pxp_jax.prune import criteria


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
