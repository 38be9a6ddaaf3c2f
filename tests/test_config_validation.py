"""Bad config values stop a job at its start, with an error that names the
field, its value and the fix; bad API arguments of ``pxp_jax.prune`` too."""

import math

import numpy as np
import pytest

from experiments.configs import imagenet as imagenet_configs
from experiments.configs import iterative as iterative_configs
from experiments.configs import prune as prune_configs
from experiments.configs import search as search_configs
from experiments.configs import train as train_configs
from pxp_jax import checkpoints
from pxp_jax.models import structure
from pxp_jax.jobs import draws, iterative, prune, train, validate
from pxp_jax.prune import criteria, finetune, metrics, ranking, sweep


def _prune_config(**changes):
  config = prune_configs.get_config('model=resnet_digits,runlocal')
  for key, value in changes.items():
    if '.' in key:
      group, field = key.split('.')
      config[group][field] = value
    else:
      config[key] = value
  return config


# Each: a change to the runlocal prune config and a pattern of its error.
BAD_PRUNE = [
    (dict(rates=(0.4, 0.2, 0.0)),
     r'--config.rates=\(0.4, 0.2, 0.0\): rates must be increasing.*'
     r'write \(0.0, 0.2, 0.4\)'),
    (dict(rates=(0.0, 0.2, 0.2)), r'write \(0.0, 0.2\)'),
    (dict(rates=()), 'names no rate'),
    (dict(rates=(0.0, 0.5, 1.0)), r'1.0 is not a pruning rate.*\[0, 1\)'),
    (dict(rates=(float('nan'),)), 'nan is not a pruning rate'),
    (dict(classes=(3, 3)), 'at least two different classes'),
    (dict(classes=(3,)), 'at least two different classes'),
    (dict(classes=(1, 2, 1)), r'names a class twice; write \(1, 2\)'),
    (dict(classes=(-1, 2)), r'\[-1\] are not class indices'),
    (dict(class_draw=1), '--config.class_draw=1 must be >= 2'),
    (dict(class_draw=-2), '--config.class_draw=-2 must be an integer >= 0'),
    (dict(classes=(1, 2), class_draw=2), 'give one of them'),
    (dict(n_per_class=0), '--config.n_per_class=0 must be an integer >= 1'),
    (dict(holdout_per_class=-1), '--config.holdout_per_class=-1'),
    (dict(batch_size=0), '--config.batch_size=0'),
    (dict(eval_batch_size=-5), '--config.eval_batch_size=-5'),
    (dict(draws=0), '--config.draws=0'),
    (dict(random_seeds=0), '--config.random_seeds=0'),
    (dict(seed=-1), '--config.seed=-1'),
    (dict(ig_steps=0), '--config.ig_steps=0'),
    (dict(ig_form='bogus'), "--config.ig_form='bogus': ig_form must be one "
     'of reference, conductance'),
    (dict(criteria=('bogus',)), r"unknown \['bogus'\]; use some of lrp"),
    (dict(criteria=()), 'names no criterion'),
    (dict(criteria=('weight', 'weight')), 'names a criterion twice'),
    (dict(units='bogus'), "--config.units='bogus': units must be one of "
     "filters, neurons, heads, or ''"),
    (dict(other_classes='bogus'), 'other_classes must be one of'),
    (dict(reference_split=''), '--config.reference_split'),
    (dict(precision='float16'), "--config.precision='float16'"),
    (dict(heatmaps=-1), '--config.heatmaps=-1'),
    (dict(stability=-1), '--config.stability=-1'),
    (dict(criteria=('weight',), stability=2),
     'stability needs the lrp criterion'),
    (dict(faithfulness=-1), '--config.faithfulness=-1'),
    ({'faithfulness': 2, 'perturbation.patch_size': 0},
     '--config.perturbation.patch_size=0'),
    ({'faithfulness': 2, 'perturbation.steps': -1},
     '--config.perturbation.steps=-1'),
    ({'faithfulness': 2, 'perturbation.order': 'up'},
     "--config.perturbation.order='up'"),
    ({'faithfulness': 2, 'perturbation.baseline': 'white'},
     'perturbation.baseline'),
    (dict(fine_tune_steps=-1), '--config.fine_tune_steps=-1'),
    (dict(fine_tune_steps=5), r'fine_tune_rate 0.3 is not one of '
     r'--config.rates=\(0.0, 0.2'),
    (dict(fine_tune_steps=5, fine_tune_rate=0.2, fine_tune_lr=float('nan')),
     '--config.fine_tune_lr=nan must be a finite number > 0'),
    (dict(fine_tune_steps=5, fine_tune_rate=0.2, fine_tune_batch=0),
     '--config.fine_tune_batch=0'),
    (dict(export_rate=0.5), 'export_rate 0.5 is not one of'),
    (dict(criteria=('weight',), export_rate=0.2),
     'exports the model pruned by lrp'),
    (dict(slim=('lrp',), size_batch=0), '--config.size_batch=0'),
    (dict(slim=('taylor_logit',)), r"config.slim names \['taylor_logit'\]"),
    (dict(composite='bogus'), "--config.composite='bogus' is not a preset"),
    (dict(composite='epsilon_plus', composite_json='best.json'),
     'both choose the composite'),
    ({'mesh.data': 0}, '--config.mesh.data=0 must be a device count'),
    ({'mesh.data': -1, 'mesh.rows': -1}, 'only one axis may be -1'),
]


@pytest.mark.parametrize('changes,error', BAD_PRUNE,
                         ids=[str(c) for c, _ in BAD_PRUNE])
def test_bad_prune_config_stops_before_any_work(changes, error, tmp_path):
  config = _prune_config(**changes)
  with pytest.raises(ValueError, match=error):
    draws.repeat(prune.prune, config, tmp_path, stem='results')
  assert not tmp_path.joinpath('config.json').exists()  # nothing claimed
  assert not tmp_path.joinpath('.job.lock').exists()  # nor locked


def test_missing_composite_json_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='--config.composite_json=.*'
                     'best.json does not exist'):
    prune.prune(_prune_config(composite_json=str(tmp_path / 'best.json')),
                tmp_path)
  assert not tmp_path.joinpath('config.json').exists()


def test_valid_configs_pass():
  validate.prune(_prune_config())
  validate.prune(_prune_config(rates=(0.2, 0.5), classes=(1, 7),
                               fine_tune_steps=3, fine_tune_rate=0.2,
                               export_rate=0.5, slim=('lrp',)))
  validate.prune(prune_configs.get_config('model=vit_digits'))
  validate.iterative(iterative_configs.get_config('model=resnet_digits'))
  for arg in ('model=vit_digits', 'model=resnet_digits,runlocal'):
    validate.pruning(search_configs.get_config(arg))  # what a search shares
  for job in ('prune', 'search'):
    config = imagenet_configs.get_config(f'job={job},arch=resnet50,classes=3')
    validate.for_job(prune.prune if job == 'prune' else None)(config)
  for name in ('resnet_digits', 'vit_digits'):
    validate.train(train_configs.get_config(f'model={name}'))
  assert validate.rates((0, 0.5)) == [0.0, 0.5]


@pytest.mark.slow
def test_data_and_model_dependent_errors_name_the_field(digits_dir, tmp_path):
  with pytest.raises(ValueError, match=r'--config.classes=\(1, 12\): \[12\] '
                     'are not classes of this model; its classes are 0 to 9'):
    prune.prune(_prune_config(data_dir=digits_dir, classes=(1, 12)),
                tmp_path / 'a')
  with pytest.raises(ValueError, match=r'--config.class_draw=11 must lie in '
                     r'\[2, 10\]'):
    prune.prune(_prune_config(data_dir=digits_dir, class_draw=11),
                tmp_path / 'b')
  with pytest.raises(ValueError, match='--config.perturbation.patch_size=32 '
                     r'is not smaller than the images \(32 pixels'):
    prune.prune(_prune_config(**{'data_dir': digits_dir, 'faithfulness': 2,
                                 'perturbation.patch_size': 32}),
                tmp_path / 'f')
  with pytest.raises(ValueError, match="--config.units='heads'.*has no "
                     'heads; its units are filters'):
    prune.prune(_prune_config(data_dir=digits_dir, units='heads'),
                tmp_path / 'c')
  with pytest.raises(ValueError, match=r'--config.n_per_class=100000, but '
                     r'digits:train has fewer examples of classes \[0, 1, '
                     r'.*set --config.n_per_class to at most \d+'):
    prune.prune(_prune_config(data_dir=digits_dir, n_per_class=100000),
                tmp_path / 'd')
  with pytest.raises(ValueError, match='--config.holdout_per_class=100000, '
                     'but digits:train without the reference samples'):
    prune.prune(_prune_config(data_dir=digits_dir, holdout_per_class=100000,
                              eval_split='train', criteria=('weight',),
                              heatmaps=0, slim=()), tmp_path / 'e')
  with pytest.raises(ValueError, match="--config.eval_split='tset': "
                     "'digits' has no split 'tset'; its splits are"):
    prune.prune(_prune_config(data_dir=digits_dir, eval_split='tset'),
                tmp_path / 'g')
  with pytest.raises(ValueError, match="--config.reference_split='trian': "
                     "'digits' has no split 'trian'"):
    prune.prune(_prune_config(data_dir=digits_dir, reference_split='trian'),
                tmp_path / 'h')


BAD_TRAIN = [
    (dict(learning_rate=float('nan')),
     '--config.learning_rate=nan must be a finite number > 0'),
    (dict(learning_rate=0.0), '--config.learning_rate=0.0'),
    (dict(learning_rate=-0.1), '--config.learning_rate=-0.1'),
    (dict(num_epochs=0), '--config.num_epochs=0'),
    (dict(warmup_epochs=5), '--config.warmup_epochs=5 exceeds'),
    (dict(batch_size=0), '--config.batch_size=0'),
    (dict(eval_batch_size=0), '--config.eval_batch_size=0'),
    (dict(optimizer='adam'), "--config.optimizer='adam': optimizer must be "
     'one of sgd, adamw'),
    (dict(momentum=-1.0), '--config.momentum=-1.0'),
    (dict(weight_decay=float('inf')), '--config.weight_decay=inf'),
    (dict(label_smoothing=1.5), '--config.label_smoothing=1.5'),
    (dict(augment_shift=-1), '--config.augment_shift=-1'),
    (dict(num_classes=1), '--config.num_classes=1'),
    (dict(splits=dict(train='train', validation='', test='test')),
     '--config.splits.validation'),
]


@pytest.mark.parametrize('changes,error', BAD_TRAIN,
                         ids=[str(c) for c, _ in BAD_TRAIN])
def test_bad_train_config_stops_before_any_work(changes, error, tmp_path):
  config = train_configs.get_config('model=resnet_digits,runlocal')
  config.update(changes)
  with pytest.raises(ValueError, match=error):
    train.train_and_evaluate(config, tmp_path)
  assert not tmp_path.joinpath('config.json').exists()


def test_train_refuses_fewer_classes_than_the_data(digits_dir, tmp_path):
  config = train_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir, config.num_classes = digits_dir, 5
  with pytest.raises(ValueError, match='--config.num_classes=5, but '
                     "'digits' has 10 classes"):
    train.train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize('changes,error', [
    (dict(step=0.0), '--config.step=0.0'),
    (dict(target_rate=1.0), '--config.target_rate=1.0'),
    (dict(step=0.5, target_rate=0.2), '--config.step=0.5 exceeds'),
    (dict(fine_tune_lr=float('nan')), '--config.fine_tune_lr=nan'),
    (dict(fine_tune_batch=0), '--config.fine_tune_batch=0'),
    (dict(weight_decay=-1.0), '--config.weight_decay=-1.0'),
    (dict(criteria=('integrated_gradients',)),
     r"unknown \['integrated_gradients'\]"),
    (dict(n_per_class=0), '--config.n_per_class=0'),
])
def test_bad_iterative_config_stops_before_any_work(changes, error, tmp_path):
  config = iterative_configs.get_config('model=resnet_digits,runlocal')
  config.update(changes)
  with pytest.raises(ValueError, match=error):
    iterative.iterative(config, tmp_path)
  assert not tmp_path.joinpath('config.json').exists()


# The API ----------------------------------------------------------------------


@pytest.fixture(scope='module')
def resnet():
  model, variables = checkpoints.load('resnet_digits')
  found = structure.trace(model, variables, (1, 32, 32, 3))
  return model, variables, found.units('filters')


def test_criteria_refuse_empty_or_mismatched_samples(resnet):
  model, variables, units = resnet
  gradient = criteria.get('gradient')
  images = np.zeros((4, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match='non-empty.*at least one reference'):
    gradient.score(model, variables, images[:0], np.zeros(0, np.int32), units)
  with pytest.raises(ValueError, match='4 images but 3 labels'):
    gradient.score(model, variables, images, np.zeros(3, np.int32), units)
  with pytest.raises(ValueError, match='batch_size must be an integer >= 1'):
    gradient.score(model, variables, images, np.zeros(4, np.int32), units,
                   batch_size=0)


def test_ranking_metrics_and_sweep_refuse_empty_inputs(resnet):
  model, variables, units = resnet
  scores = {k: np.arange(u.size, dtype=float) for k, u in units.items()}
  with pytest.raises(ValueError, match='scores name no unit'):
    ranking.masks({}, [0.0, 0.5])
  nan = dict(scores, conv1=np.full(units['conv1'].size, np.nan))
  with pytest.raises(ValueError, match=r"scores of \['conv1'\] are NaN"):
    ranking.masks(nan, [0.5])
  # -inf (an already pruned unit) is a score
  assert ranking.masks(dict(scores, conv1=-np.inf * np.ones(
      units['conv1'].size)), [0.0])['conv1'].shape == (1, units['conv1'].size)
  with pytest.raises(ValueError, match='one accuracy per rate'):
    metrics.summarize([0.0, 0.2, 0.4], [0.9, 0.5], 0.9)
  with pytest.raises(ValueError, match='one accuracy per rate'):
    metrics.summarize([], [], 0.9)
  with pytest.raises(ValueError, match='at least one criterion'):
    metrics.stack({})
  masks = ranking.masks(scores, [0.0, 0.5])
  batch = [dict(image=np.zeros((2, 32, 32, 3), np.float32),
                label=np.zeros(2, np.int32))]
  with pytest.raises(ValueError, match='no examples to evaluate'):
    sweep.sweep_accuracy(model, variables, [], masks, 10)
  with pytest.raises(ValueError, match='stacked masks name no unit'):
    sweep.sweep_accuracy(model, variables, batch, {}, 10)
  with pytest.raises(ValueError, match=r'classes \[3, 12\] must be .* 0 to 9'):
    sweep.sweep_accuracy(model, variables, batch, masks, 10, classes=[3, 12])


def test_fine_tune_refuses_bad_settings(resnet):
  model, variables, units = resnet
  masks = {k: np.ones(u.size, np.float32) for k, u in units.items()}
  batches = iter([])  # never read: the settings are checked first
  for kwargs, error in [(dict(steps=-1), 'steps must be an integer >= 0'),
                        (dict(steps=1, learning_rate=math.nan),
                         'learning_rate must be finite and > 0'),
                        (dict(steps=1, learning_rate=0.0),
                         'learning_rate must be finite and > 0'),
                        (dict(steps=1, weight_decay=-1.0), 'weight_decay')]:
    with pytest.raises(ValueError, match=error):
      finetune.fine_tune(model, variables, masks, batches, **kwargs)
