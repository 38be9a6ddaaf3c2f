"""The library search (``pxp_jax.search``) on plain objects: the same trials
and numbers as the search job, no compilation after the first trial, and
its space's arguments checked when it is built."""

import csv

import numpy as np
import optuna
import pytest

from experiments.configs import search as search_configs
from pxp_jax import checkpoints, composites, data, search
from pxp_jax.jobs import search as search_job
from pxp_jax.models import structure

RATES = (0.0, 0.1, 0.2, 0.3, 0.4)  # the runlocal config's


def _plain_objects(digits_dir, n_per_class=2):
  """The shipped resnet_digits, its reference samples and validation
  batches, read with the data functions alone (no job config)."""
  model, variables = checkpoints.load('resnet_digits')
  recipe = checkpoints.recipe('resnet_digits')
  preprocess = data.Preprocess(**recipe['preprocess'])
  train = data.load('digits', 'train', data_dir=digits_dir)
  references = data.reference_batch(train, preprocess, n_per_class, seed=0)
  images, labels = data.as_arrays(
      data.load('digits', 'validation', data_dir=digits_dir), preprocess)
  batches = [dict(image=images[i:i + 512], label=labels[i:i + 512])
             for i in range(0, len(labels), 512)]
  size = preprocess.crop_size
  found = structure.trace(model, variables, (1, size, size, 3))
  return model, variables, found, references, batches, recipe['num_classes']


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')
def test_library_search_equals_the_job_and_compiles_once(digits_dir,
                                                         tmp_path):
  config = search_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.n_per_class = 2
  config.sampler = 'tpe'
  config.random_seeds = 1
  assert tuple(config.rates) == RATES
  search_job.search(config, tmp_path, n_trials=3)
  with open(tmp_path / 'trials.csv') as f:
    rows = list(csv.DictReader(f))

  model, variables, found, references, batches, num_classes = (
      _plain_objects(digits_dir))
  space = search.Space.for_model(model, found)
  assert space.preset == 'pxp_groups' and not space.transformer
  objective = search.Objective(model, variables, references, batches,
                               found.units('filters'), RATES, num_classes)
  study = search.run(space, objective, n_trials=3, sampler='tpe', seed=0)
  trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  # The same trials as the job's (the usual composites, then one drawn with
  # seed 0 + 2), with the same validation A_PR to the last digit.
  assert len(trials) == len(rows) == 3
  for trial, row in zip(trials, rows):
    assert row['state'] == 'COMPLETE'
    assert {k: str(v) for k, v in trial.params.items()} == {
        k: row[k] for k in trial.params}
    assert repr(trial.value) == row['a_pr']
  # After the first trial nothing compiles.
  assert all(t.user_attrs['compiles'] == 0 for t in trials[1:])
  # The best composite is one of the space's.
  best = space.to_composite(study.best_trial.params)
  assert best['low'].name == study.best_trial.params['low.rule']
  assert composites.from_json(space.to_json(study.best_trial.params))[
      'fc'].name == study.best_trial.params['fc.rule']
  # The objective's pieces: scores, then the summary of their masks.
  summary = objective.summary(objective.scores(best))
  assert summary['rates'] == list(RATES)
  assert summary['a_pr'] == pytest.approx(np.mean(summary['accuracy']))


def test_space_defaults_usual_composites_and_vit_space():
  space = search.Space()
  first, second = space.usual()
  assert {first[f'{g}.rule'] for g in composites.GROUPS} == {'zplus'}
  assert first['zero_bias'] and not first['signed']
  assert {second[f'{g}.rule'] for g in composites.GROUPS} == {'epsilon'}
  assert first['low.eps'] == 1e-6 and first['low.gamma'] == 0.25
  # Narrowed ranges clip the usual hyperparameters; a space without ZPlus
  # starts with Epsilon alone.
  narrow = search.Space(rules=('epsilon', 'gamma'), eps=(1e-3, 1.0),
                        gamma=(0.5, 2.0), n_per_class=(1, 3))
  (only,) = narrow.usual()
  assert only['low.eps'] == 1e-3 and only['low.gamma'] == 0.5
  assert only['n_per_class'] == 3
  model, _ = checkpoints.load('vit_digits')
  vit = search.Space.for_model(model)
  assert vit.preset == 'vit_groups' and vit.transformer
  assert [p['attention'] for p in vit.usual()] == ['attn_lrp', 'cp_lrp']
  composite = vit.to_composite(vit.usual()[1])
  assert composite['fc'].name == 'epsilon'
  # Suggested parameters build their composite.
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  params = vit.suggest(study.ask())
  assert set(params) == {*(f'{g}.{k}' for g in composites.GROUPS
                           for k in ('rule', 'eps', 'gamma')),
                         'attention', 'zero_bias', 'signed'}
  assert vit.to_composite(params)['low'].name == params['low.rule']


@pytest.mark.parametrize('fields,message', [
    (dict(groups=()), r'^groups is empty'),
    (dict(rules=('flat',)), r"^rules has \['flat'\]; choose among"),
    (dict(eps=(1.0, 1e-3)), r'^eps must be a range'),
    (dict(gamma=(0.0, 1.0)), r'^gamma must be a range'),
    (dict(signed=(True, True)), r'^signed=.* names a value twice'),
    (dict(attention=('softmax',)), r"^attention has \['softmax'\]"),
    (dict(n_per_class=(0,)), r'^n_per_class=0 must be a whole number >= 1'),
    (dict(boundaries=(0.7, 0.2)), r'^boundaries must be \(\) for the stages'),
    (dict(preset='epsilon_plus'), r"^preset='epsilon_plus' must be one of"),
])
def test_bad_spaces_fail_when_built(fields, message):
  with pytest.raises(ValueError, match=message):
    search.Space(**fields)


def test_bad_objectives_and_runs_fail_when_built():
  with pytest.raises(ValueError, match="metric must be one of"):
    search.Objective(None, None, (None, None), [], {'x': None}, RATES, 10,
                     metric='accuracy')
  with pytest.raises(ValueError, match='rates must be increasing'):
    search.Objective(None, None, (None, None), [], {'x': None}, (0.2, 0.1),
                     10)
  with pytest.raises(ValueError, match='units is empty'):
    search.Objective(None, None, (None, None), [], {}, RATES, 10)
  with pytest.raises(ValueError, match='n_trials=0'):
    search.run(search.Space(), lambda *a, **k: 0.0, 0)
  with pytest.raises(ValueError, match="sampler='random' is unknown"):
    search.make_sampler('random')


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::optuna.exceptions.ExperimentalWarning')
def test_library_search_on_a_journal_reuses_its_programs(digits_dir,
                                                         tmp_path):
  """Two trials on a journal storage: the second compiles nothing, the
  study resumes from the file, and a trial's value is its composite's
  objective."""
  model, variables, found, references, batches, num_classes = (
      _plain_objects(digits_dir, n_per_class=1))
  space = search.Space.for_model(model, found, signed=(False,))
  objective = search.Objective(model, variables, references, batches[:1],
                               found.units('filters'), (0.0, 0.2, 0.4),
                               num_classes, metric='auc')
  assert objective.name == 'AUC'
  storage = search.storage.open('journal', tmp_path)
  study = search.run(space, objective, n_trials=2, storage=storage)
  first, second = study.trials
  assert second.user_attrs['compiles'] == 0
  assert 'heartbeat' in second.user_attrs  # the journal's heartbeat
  assert second.params == space.usual()[1]
  assert second.value == objective(space.to_composite(second.params))
  again = search.run(space, objective, n_trials=2,
                     storage=search.storage.open('journal', tmp_path))
  assert [t.value for t in again.trials] == [first.value, second.value]
