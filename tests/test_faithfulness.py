"""Faithfulness of heatmaps (region perturbation) and their stability under
pruning: against Quantus, an explicit loop and a linear model solved by
hand; and the job options end to end."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import prune as prune_configs
from experiments.configs import search as search_configs
from pxp_jax import checkpoints, composites, models
from pxp_jax.lrp import faithfulness
from pxp_jax.jobs import prune, search
from pxp_jax.prune import ranking
import torch_twins  # pylint: disable=g-bad-import-order


class Linear(nn.Module):
  """logits = W vec(x) + b: the contributions of the pixels are exact."""

  classes: int = 2

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def _linear(kernel, bias=(0.0, 0.0)):
  return Linear(len(bias)), {'params': {'Dense_0': {
      'kernel': jnp.asarray(kernel, jnp.float32),
      'bias': jnp.asarray(bias, jnp.float32)}}}


def _gradient_x_input(model, variables, x, labels, baseline=0.0):
  """The input gradient of the label's logit times (x - baseline)."""
  def logit(x):
    return jnp.take_along_axis(model.apply(variables, x), labels[:, None],
                               1).sum()
  return jax.grad(logit)(x) * (x - jnp.asarray(baseline))


# Region perturbation ---------------------------------------------------------


def _patches_apart(relevance, patch_size, margin=1e-4):
  """Fails if two patches' summed relevance (float64, patches as
  ``patch_ids``; ``relevance`` NHW or NHWC) are within ``margin`` of the
  largest |sum|. Sums of float32 values round differently in each
  implementation (~1e-7 of the largest), and two patches that near-tie
  could then be perturbed in either order, which changes the curves of a
  model that does not follow the heatmap by O(1)."""
  relevance = np.asarray(relevance, np.float64)
  maps = relevance.sum(-1) if relevance.ndim == 4 else relevance
  ids = faithfulness.patch_ids(*maps.shape[1:], patch_size).ravel()
  for n, heat in enumerate(maps):
    sums = np.sort(np.bincount(ids, weights=heat.ravel()))
    gap = float(np.diff(sums).min() / np.abs(sums).max())
    assert gap > margin, (
        f'image {n}: two patches\' relevance sums differ by {gap:.1e} of the '
        f'largest (< {margin}); their order could differ between '
        'implementations: change the seed')


def test_linear_model_by_hand():
  # One 2x2 grey image, contributions w * x = (1, -2, 3, 0.5) of class 0.
  model, variables = _linear(np.array([[1, 0], [-2, 0], [3, 0], [0.5, 0]]),
                             bias=(0.25, 0.0))
  x = jnp.ones((1, 2, 2, 1))
  labels = jnp.zeros(1, jnp.int32)
  relevance = _gradient_x_input(model, variables, x, labels)
  np.testing.assert_allclose(relevance[0, ..., 0], [[1, -2], [3, 0.5]])
  morf = faithfulness.perturbation_curves(model, variables, x, labels,
                                          relevance)
  # MoRF removes 3, 1, 0.5, then -2: f = 2.75, -0.25, -1.25, -1.75, 0.25
  np.testing.assert_allclose(morf.logit[0], [2.75, -0.25, -1.25, -1.75, 0.25])
  np.testing.assert_array_equal(morf.order[0], [2, 0, 3, 1])
  np.testing.assert_allclose(morf.fractions, [0, 0.25, 0.5, 0.75, 1])
  # AOPC = (0 + 3 + 4 + 4.5 + 2.5) / 5; AUC = 0.25 * (1.25 - 0.75 - 1.5
  # - 0.75), trapezoids over the fractions
  assert faithfulness.aopc(morf.logit)[0] == pytest.approx(2.8)
  assert faithfulness.normalized_auc(morf.logit, morf.fractions)[0] == (
      pytest.approx(-0.4375))
  lerf = faithfulness.perturbation_curves(model, variables, x, labels,
                                          relevance, order='lerf')
  np.testing.assert_allclose(lerf.logit[0], [2.75, 4.75, 4.25, 3.25, 0.25])
  assert faithfulness.aopc(lerf.logit)[0] == pytest.approx(-0.3)
  # two classes: the probability is the softmax of the two logits
  np.testing.assert_allclose(morf.probability[0],
                             jax.nn.sigmoid(morf.logit[0]), rtol=1e-6)


@pytest.mark.slow
def test_gradient_x_input_perturbs_in_the_order_of_the_contributions():
  rng = np.random.default_rng(0)
  h, w, c = 6, 6, 3
  model, variables = _linear(rng.normal(size=(h * w * c, 3)),
                             bias=(0.1, -0.2, 0.3))
  x = jnp.asarray(rng.normal(size=(4, h, w, c)), jnp.float32)
  labels = jnp.array([0, 1, 2, 0])
  baseline = np.array([-1.0, 0.5, 2.0])  # per channel, as a black image
  relevance = _gradient_x_input(model, variables, x, labels, baseline)
  kw = dict(patch_size=2, baseline=baseline)
  morf = faithfulness.perturbation_curves(model, variables, x, labels,
                                          relevance, **kw)
  # The true contribution of each patch, removed largest first.
  patches = np.asarray(faithfulness.patch_relevance(relevance, 2))
  drop = np.cumsum(-np.sort(-patches, 1), 1)
  expected = morf.logit[:, :1] - np.concatenate(
      [np.zeros((4, 1)), drop], 1)
  # float32 rounding; a near-tie swap of two patches moves the linear
  # model's curve only by their difference, so no order can flip it
  np.testing.assert_allclose(morf.logit, expected, atol=1e-4)
  # MoRF is the greedy order of an additive model: the largest AOPC of all
  # orders; LeRF the smallest; a random order lies between.
  lerf = faithfulness.perturbation_curves(model, variables, x, labels,
                                          relevance, order='lerf', **kw)
  chance = faithfulness.perturbation_curves(
      model, variables, x, labels,
      faithfulness.random_heatmaps(0, x.shape[:3]), **kw)
  best, worst, middle = (faithfulness.aopc(c.logit)
                         for c in (morf, lerf, chance))
  assert np.all(best > middle) and np.all(middle > worst)
  np.testing.assert_array_equal(np.sort(chance.order, 1),
                                np.tile(np.arange(9), (4, 1)))
  other = faithfulness.random_heatmaps(1, x.shape[:3])
  assert not np.array_equal(faithfulness.perturbation_order(other, 2),
                            chance.order)


@pytest.mark.slow
def test_curves_match_an_explicit_loop_of_model_calls():
  """Our one program against perturbing patch by patch in numpy and calling
  the model on each image (LeRF, every 5th patch, cut border patches,
  per-channel baseline, a few-class softmax)."""
  model, variables = checkpoints.load('resnet_digits')
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  labels = np.array([3, 5, 7])
  relevance = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  baseline = np.array([-0.5, -1.0, -1.5], np.float32)
  _patches_apart(relevance, 5)
  classes = (3, 5, 7, 9)
  ours = faithfulness.perturbation_curves(
      model, variables, x, labels, relevance, patch_size=5, order='lerf',
      baseline=baseline, steps=10, classes=classes, batch_size=4)
  # 5 does not divide 32: a 7x7 grid with 3- and 4-pixel border patches
  ids = np.zeros((32, 32), int)
  edges = [0, 4, 9, 14, 19, 24, 29, 32]
  for i in range(7):
    for j in range(7):
      ids[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = i * 7 + j
  np.testing.assert_array_equal(faithfulness.patch_ids(32, 32, 5), ids)
  logits, probs = [], []
  for n in range(3):
    sums = np.array([relevance[n].sum(-1)[ids == p].sum() for p in range(49)])
    order = np.argsort(sums, kind='stable')  # least relevant first
    row_logits = []
    for count in np.round(np.arange(11) * 49 / 10).astype(int):
      image = x[n].copy()
      image[np.isin(ids, order[:count])] = baseline
      row_logits.append(np.asarray(model.apply(variables, image[None]))[0])
    row_logits = np.array(row_logits)
    kept = row_logits[:, list(classes)]
    soft = np.exp(kept - kept.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    logits.append(row_logits[:, labels[n]])
    probs.append(soft[:, classes.index(labels[n])])
  # float32 rounding of batched and single-image convolutions (logits ~10),
  # with the same patch order (checked apart above)
  np.testing.assert_allclose(ours.logit, logits, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ours.probability, probs, atol=1e-5)


@pytest.mark.slow
def test_one_compiled_program_for_every_step_heatmap_order_and_baseline():
  calls = []

  class Counted(nn.Module):
    """Counts its traces: a Python loop over steps would call it K times."""

    @nn.compact
    def __call__(self, x):
      calls.append(x.shape)
      return models.create('resnet_tiny', num_classes=10)(x)

  model = Counted()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)),
                  jnp.float32)
  variables = model.init(jax.random.key(0), x)
  calls.clear()
  labels = jnp.array([1, 2])
  before = faithfulness.perturbation_programs()
  first = faithfulness.perturbation_curves(
      model, variables, x, labels, faithfulness.random_heatmaps(0, (2, 16, 16)),
      patch_size=2, batch_size=16)  # 65 points in 5 chunks of 16
  assert first.logit.shape == (2, 65)
  assert len(calls) == 1 and calls[0] == (32, 16, 16, 3)  # 16 steps x 2
  compiles = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for order, baseline, seed in (('lerf', 0.0, 1), ('morf', [1., 2., 3.], 2)):
      faithfulness.perturbation_curves(
          model, variables, x, labels,
          faithfulness.random_heatmaps(seed, (2, 16, 16)), patch_size=2,
          order=order, baseline=baseline, batch_size=16)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles and len(calls) == 1
  assert faithfulness.perturbation_programs() - before == 1


def test_bad_arguments_are_clear_errors():
  model, variables = _linear(np.ones((4, 2)))
  x, labels = jnp.ones((1, 2, 2, 1)), jnp.zeros(1, jnp.int32)
  with pytest.raises(ValueError, match='order must be one of'):
    faithfulness.perturbation_curves(model, variables, x, labels, x,
                                     order='best')
  with pytest.raises(ValueError, match='relevance'):
    faithfulness.perturbation_curves(model, variables, x, labels,
                                     jnp.ones((1, 3, 3)))
  with pytest.raises(ValueError, match='patch_size'):
    faithfulness.patch_ids(4, 4, 0)


@pytest.mark.slow
def test_region_perturbation_and_pixel_flipping_match_quantus():
  """Our curves against Quantus's RegionPerturbation and PixelFlipping on a
  torchvision ResNet-18 (random weights) and its converted twin, with the
  same heatmaps, baseline and order (float32 on both sides: Quantus feeds
  the model float32; logits are continuous, and the heatmaps' patch sums
  are checked apart, so only rounding of the logits is compared)."""
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  quantus = pytest.importorskip('quantus')
  from pxp_jax import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  twin = torchvision.models.resnet18(weights=None, num_classes=10).eval()
  torch_twins.randomise_batch_norms(twin)
  model, variables = convert.from_torchvision('resnet18', twin.state_dict())
  rng = np.random.default_rng(0)
  labels = np.array([1, 7])
  worst = 0.0
  # 18 is not a multiple of 4: border patches are cut on both sides
  for size, softmax in ((16, False), (16, True), (18, False)):
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    heat = rng.normal(size=(2, size, size)).astype(np.float32)
    _patches_apart(heat, 4)
    ours = faithfulness.perturbation_curves(model, variables, x, labels,
                                            heat, patch_size=4,
                                            baseline=-1.5)
    metric = quantus.RegionPerturbation(
        patch_size=4, order='morf', regions_evaluation=ours.order.shape[1],
        abs=False, normalise=False, perturb_baseline=-1.5,
        disable_warnings=True)
    theirs = np.asarray(metric(
        model=twin, x_batch=x.transpose(0, 3, 1, 2), y_batch=labels,
        a_batch=heat[:, None], channel_first=True, softmax=softmax,
        device='cpu'))  # f(x) - f(x_k), k = 1..K
    curve = np.asarray(ours.probability if softmax else ours.logit)
    mine = curve[:, :1] - curve[:, 1:]
    # float32 rounding of two implementations' convolutions (~1e-6 seen)
    np.testing.assert_allclose(mine, theirs, atol=2e-5 * np.abs(curve).max())
    worst = max(worst, np.abs(mine - theirs).max() / np.abs(curve).max())
  # Pixel flipping: Quantus sorts features, one pixel = its 3 channels.
  x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
  heat = rng.normal(size=(2, 9, 9)).astype(np.float32)
  # one pixel per patch: both sides sort the same float32 values, no sums
  _patches_apart(heat, 1, margin=0)
  ours = faithfulness.perturbation_curves(model, variables, x, labels, heat,
                                          patch_size=1, baseline=0.0)
  metric = quantus.PixelFlipping(features_in_step=3, abs=False,
                                 normalise=False, perturb_baseline=0.0,
                                 disable_warnings=True)
  theirs = np.asarray(metric(
      model=twin, x_batch=x.transpose(0, 3, 1, 2), y_batch=labels,
      a_batch=np.repeat(heat[:, None], 3, 1), channel_first=True,
      softmax=False, device='cpu'))  # f(x_k), k = 1..K
  # float32 rounding of two implementations' convolutions
  np.testing.assert_allclose(ours.logit[:, 1:], theirs,
                             atol=2e-5 * np.abs(theirs).max())
  worst = max(worst, np.abs(ours.logit[:, 1:] - theirs).max()
              / np.abs(theirs).max())
  print(f'largest difference to Quantus, relative to the largest output: '
        f'{worst:.2e}')


def test_compare_summarises_every_heatmap():
  model, variables = _linear(np.random.default_rng(0).normal(size=(48, 2)))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4, 4, 3)),
                  jnp.float32)
  labels = jnp.array([0, 1, 0, 1, 0])
  maps = {'gradient_x_input': _gradient_x_input(model, variables, x, labels),
          'random': faithfulness.random_heatmaps(0, (5, 4, 4))}
  results = faithfulness.compare(model, variables, x, labels, maps,
                                 patch_size=2, steps=2)
  assert results['steps'] == 2 and results['fractions'] == [0, 0.5, 1]
  assert json.loads(json.dumps(results)) == results
  for name in maps:
    logit = results['heatmaps'][name]['logit']
    assert len(logit['curve']) == 3 and logit['aopc_sem'] >= 0
  assert (results['heatmaps']['gradient_x_input']['logit']['aopc']
          > results['heatmaps']['random']['logit']['aopc'])


# Stability -----------------------------------------------------------------


def test_similarities_match_scipy_with_ties():
  stats = pytest.importorskip('scipy.stats')
  rng = np.random.default_rng(0)
  a = rng.integers(0, 4, (3, 5, 6)).astype(np.float32)  # many ties
  b = rng.normal(size=(3, 5, 6)).astype(np.float32)
  for ours, theirs in ((faithfulness.spearman, stats.spearmanr),
                       (faithfulness.pearson, stats.pearsonr)):
    expected = [theirs(a[i].ravel(), b[i].ravel()).statistic
                for i in range(3)]
    # float32 statistics of 30 values against scipy's float64; exact ties
    np.testing.assert_allclose(ours(a, b), expected, rtol=1e-5)
  np.testing.assert_allclose(faithfulness.ranks(a[:1]),
                             stats.rankdata(a[0].ravel())[None])
  cos = np.sum(a * b, (1, 2)) / np.sqrt(np.sum(a * a, (1, 2))
                                        * np.sum(b * b, (1, 2)))
  # float32 against numpy's float32 sums of 30 products
  np.testing.assert_allclose(faithfulness.cosine(a, b), cos, rtol=1e-5)
  zero = np.zeros_like(a)
  np.testing.assert_array_equal(faithfulness.pearson(a, zero), 0)


@pytest.mark.slow
def test_stability_is_exactly_one_unpruned_and_falls_with_pruning():
  model, variables = checkpoints.load('vit_digits')
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  labels = np.array([0, 4, 9])
  from pxp_jax.models import structure  # pylint: disable=g-import-not-at-top
  units = structure.trace(model, variables, x.shape).units('heads')
  scores = {k: rng.uniform(size=u.size) for k, u in units.items()}
  masks = ranking.masks(scores, [0.0, 0.25, 0.75])
  similarity = faithfulness.stability(model, variables, x, labels,
                                      composites.attn_lrp(), masks,
                                      batch_size=2)
  for name, values in similarity.items():
    assert values.shape == (3, 3)
    np.testing.assert_array_equal(values[0], 1.0, err_msg=name)
    assert np.all(values[1:] < 1), name
  assert similarity['pearson'][2].mean() < similarity['pearson'][1].mean()
  summary = faithfulness.summarize_stability([0.0, 0.25, 0.75], similarity)
  assert summary['pearson']['mean'][0] == 1.0
  assert summary['pearson']['sem'][0] == 0.0


# The jobs --------------------------------------------------------------------


def _prune_config(digits_dir, model='resnet_digits', **changes):
  config = prune_configs.get_config(f'model={model},runlocal')
  config.data_dir = digits_dir
  config.criteria = ('lrp',)
  config.heatmaps = 0
  config.update(changes)
  return config


@pytest.mark.slow
def test_prune_job_writes_stability_and_faithfulness(digits_dir, tmp_path):
  config = _prune_config(digits_dir, stability=4, faithfulness=4)
  config.perturbation.steps = 16
  prune.prune(config, tmp_path)
  stability = json.loads((tmp_path / 'stability.json').read_text())
  assert stability['rates'] == [0.0, 0.2, 0.4, 0.6, 0.8]
  assert stability['images'] == 4 and stability['units'] == 'filters'
  for name in faithfulness.SIMILARITIES:
    assert stability[name]['mean'][0] == 1.0
    assert len(stability[name]['sem']) == 5
  faithful = json.loads((tmp_path / 'faithfulness.json').read_text())
  assert set(faithful['heatmaps']) == {'pruning_composite',
                                       'heatmap_composite', 'random'}
  assert faithful['steps'] == 16 and faithful['images'] == 4
  assert faithful['baseline_name'] == 'black'
  # a black pixel: (0 - mean) / std with the checkpoint's mean = std = 0.5
  assert faithful['baseline'] == [-1.0, -1.0, -1.0]
  for name in ('stability.png', 'faithfulness.png'):
    assert (tmp_path / name).stat().st_size > 1000


@pytest.mark.slow
def test_prune_job_stability_of_vit_heads(digits_dir, tmp_path):
  config = _prune_config(digits_dir, 'vit_digits', units='heads',
                         stability=3)
  prune.prune(config, tmp_path)
  stability = json.loads((tmp_path / 'stability.json').read_text())
  assert stability['units'] == 'heads'
  assert stability['spearman']['mean'][0] == 1.0
  assert stability['spearman']['mean'][-1] < 1.0
  assert (tmp_path / 'stability.png').stat().st_size > 1000


def test_prune_job_option_errors(digits_dir, tmp_path):
  with pytest.raises(ValueError, match='stability needs the lrp criterion'):
    prune.prune(_prune_config(digits_dir, criteria=('weight',), stability=2),
                tmp_path / 'a')
  config = _prune_config(digits_dir, faithfulness=2)
  config.perturbation.baseline = 'white'
  with pytest.raises(ValueError, match='perturbation.baseline'):
    prune.prune(config, tmp_path / 'b')


@pytest.mark.slow
def test_search_job_writes_faithfulness(digits_dir, tmp_path, capsys):
  config = search_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.n_per_class = 1
  config.sampler = 'tpe'
  config.random_seeds = 1
  config.faithfulness = 3
  config.perturbation.steps = 8
  search.search(config, tmp_path, n_trials=1)
  assert 'region perturbation' in capsys.readouterr().out
  results = json.loads((tmp_path / 'faithfulness.json').read_text())
  assert set(results['heatmaps']) == {
      'optimised', 'epsilon', 'pxp_2021', 'epsilon_plus', 'epsilon_gamma_box',
      'random'}
  assert results['split'] == 'test' and len(results['fractions']) == 9
  for summary in results['heatmaps'].values():
    assert np.isfinite(summary['probability']['aopc'])
  assert (tmp_path / 'faithfulness.png').stat().st_size > 1000
