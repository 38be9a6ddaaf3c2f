"""The search over composites: compile-free trials, resume, bad input."""

import csv
import json
import time

import optuna
import pytest

from experiments.configs import search as search_configs
from pxp_jax import checkpoints, composites, models
from pxp_jax.models import structure
from pxp_jax.jobs import search
from pxp_jax.lrp import attribution
from pxp_jax.search import workers


def _config(digits_dir, **changes):
  config = search_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.n_per_class = 2
  config.space.n_per_class = (1, 2)  # searched without recompiling
  config.sampler = 'tpe'
  config.update(changes)
  return config


def _trials(workdir):
  with open(workdir / 'trials.csv') as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_search_beats_the_default_and_resumes(digits_dir, tmp_path,
                                              monkeypatch):
  search.search(_config(digits_dir), tmp_path, n_trials=3)
  rows = _trials(tmp_path)
  assert [r['state'] for r in rows] == ['COMPLETE'] * 3
  # The first trial is the 2021 composite: ZPlus without bias everywhere.
  default = float(rows[0]['a_pr'])
  assert rows[0]['low.rule'] == 'zplus' and rows[0]['fc.rule'] == 'zplus'
  assert rows[0]['zero_bias'] == 'True'
  # The second is Epsilon everywhere: the best beats both on validation.
  assert {rows[1][f'{g}.rule'] for g in ('low', 'middle', 'high', 'fc')} == {
      'epsilon'} and rows[1]['zero_bias'] == 'False'
  best = json.loads((tmp_path / 'best_composite.json').read_text())
  assert best['validation_a_pr'] >= default
  assert best['validation_a_pr'] == max(float(r['a_pr']) for r in rows)
  for name in ('history.png', 'importance.png', 'comparison.png'):
    assert (tmp_path / name).stat().st_size > 1000
  comparison = json.loads((tmp_path / 'comparison.json').read_text())
  assert comparison['split'] == 'test'
  assert set(comparison['criteria']) == {'optimised', 'epsilon', 'pxp_2021',
                                         'weight', 'random'}
  random = comparison['criteria']['random']
  assert len(random['accuracy_per_seed']) == 2 and random['a_pr_sem'] >= 0

  # A trial cut by a kill (left RUNNING) is retried with its parameters, and
  # a larger --n_trials adds the rest: no finished trial is lost. A running
  # trial is taken as dead once no worker has claimed it for GRACE_S.
  study = optuna.load_study(study_name=search.STUDY,
                            storage=f'sqlite:///{tmp_path / "study.db"}')
  cut = study.ask(study.best_trial.distributions)  # the search's parameters
  monkeypatch.setattr(workers, 'GRACE_S', 1)
  time.sleep(1.0)
  compiled = attribution.compiled_programs()
  search.search(_config(digits_dir), tmp_path, n_trials=5)
  rows = _trials(tmp_path)
  states = [r['state'] for r in rows]
  assert states.count('COMPLETE') == 5 and states.count('FAIL') == 1
  # The extension drew new parameters: no trial repeats one of the first
  # run's (the sampler is not re-created with the same seed).
  drawn = lambda r: (r['low.rule'], r['low.eps'], r['fc.gamma'])  # noqa: E731
  first = {drawn(r) for r in rows[:3]}
  assert not any(drawn(r) in first for r in rows[3:])
  retried = [r for r in rows if r['state'] == 'COMPLETE'
             and int(r['number']) > cut.number]
  assert any(r['low.rule'] == cut.params['low.rule'] and
             float(r['low.eps']) == pytest.approx(cut.params['low.eps'])
             for r in retried)
  # The new trials reused the compiled relevance program, and after the
  # first trial (which compiles unless an earlier search in this process
  # did) no trial compiled anything.
  assert attribution.compiled_programs() == compiled
  assert all(int(r['compiles']) == 0 for r in rows[1:] if r['compiles'])


@pytest.mark.parametrize('change,message', [
    (dict(rules=()), 'no rules'),
    (dict(groups=()), 'no layer groups'),
    (dict(eps=(1.0, 1e-3)), 'space.eps'),
    (dict(rules=('flat',)), 'choose among'),
    (dict(zero_bias=()), 'space.zero_bias'),
    (dict(boundaries=(0.7, 0.2)), 'space.boundaries'),
])
def test_bad_search_spaces_are_clear_errors(digits_dir, tmp_path, change,
                                            message):
  config = _config(digits_dir)
  config.space.update(change)
  with pytest.raises(ValueError, match=message):
    search.search(config, tmp_path, n_trials=1)


def test_unknown_objective_is_a_clear_error(digits_dir, tmp_path):
  with pytest.raises(ValueError, match="objective must be one of.*'auc'"):
    search.search(_config(digits_dir, objective='accuracy'), tmp_path,
                  n_trials=1)


@pytest.mark.slow
def test_unreachable_storage_and_foreign_workdir(digits_dir, tmp_path):
  with pytest.raises(ConnectionError, match='cannot open the optuna storage'):
    search.search(_config(digits_dir, storage='postgresql://127.0.0.1:9/x'),
                  tmp_path / 'a', n_trials=1)
  search.search(_config(digits_dir, objective='auc'), tmp_path / 'b',
                n_trials=1)  # the reference's metric as the objective
  rows = _trials(tmp_path / 'b')
  best = json.loads((tmp_path / 'b' / 'best_composite.json').read_text())
  assert best['validation_auc'] == float(rows[0]['auc']) < 0.4  # rates <= 0.4
  with pytest.raises(ValueError, match='different config'):
    search.search(_config(digits_dir, objective='auc', units='neurons'),
                  tmp_path / 'b', n_trials=1)


@pytest.mark.slow
def test_vit_search_chooses_the_attention_rule_with_three_programs(
    digits_dir, tmp_path):
  config = search_configs.get_config('model=vit_digits,runlocal')
  config.data_dir = digits_dir
  config.n_per_class = 2
  config.sampler = 'tpe'
  compiled = attribution.compiled_programs()
  search.search(config, tmp_path, n_trials=6)
  rows = _trials(tmp_path)
  # The first trials are AttnLRP and CP-LRP as published: Epsilon
  # everywhere.
  assert [r['attention'] for r in rows[:2]] == ['attn_lrp', 'cp_lrp']
  assert {rows[1][f'{g}.rule'] for g in ('low', 'middle', 'high', 'fc')} == {
      'epsilon'}
  assert len({r['attention'] for r in rows}) >= 3
  assert {r['signed'] for r in rows} == {'True', 'False'}
  # Trials and comparison reuse one relevance program per family of
  # attention rules (AttnLRP; the two z+ rules, whose virtual bias is an
  # array leaf; CP-LRP): only the first trial of each family may compile
  # (none does if an earlier search in this process compiled the same
  # programs), and neither the sign of the ranking nor the rules of the
  # groups do.
  assert attribution.compiled_programs() - compiled <= 3
  family = {'attn_lrp': 0, 'zplus_vbias': 1, 'zplus': 1, 'cp_lrp': 2}
  firsts = {}
  for r in rows:
    firsts.setdefault(family[r['attention']], r['number'])
  compiling = [r['number'] for r in rows if int(r['compiles'])]
  assert set(compiling) <= set(firsts.values())
  best = json.loads((tmp_path / 'best_composite.json').read_text())
  assert best['preset'] == 'vit_groups'
  assert best['validation_a_pr'] >= float(rows[0]['a_pr'])
  composite = composites.from_json(best)  # what experiments.prune reads
  assert composite['fc'].name == best['args']['fc']['rule']
  # The JSON needs no depth: the groups follow the model's 4 blocks.
  model, variables = checkpoints.load('vit_digits')
  assert model.depth == 4
  found = structure.trace(model, variables, (1, 32, 32, 3))
  plan = composite.plan(found, models.spec_for(model))
  groups = {path: composite.names[entry] for path, entry in plan.items()
            if composite.names[entry] in composites.GROUPS}
  assert {(p.split('.')[1], g) for p, g in groups.items()
          if p.startswith('blocks.')} == {('0', 'low'), ('1', 'middle'),
                                          ('2', 'middle'), ('3', 'high')}
  assert groups['head'] == 'fc' and groups['patch_embed.proj'] == 'low'
  comparison = json.loads((tmp_path / 'comparison.json').read_text())
  assert set(comparison['criteria']) == {'optimised', 'epsilon', 'pxp_2021',
                                         'cp_lrp', 'weight', 'random'}
