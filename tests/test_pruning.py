"""Masks, masked evaluation, the one-program sweep, and the criteria."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxp_jax import models, prune
from pxp_jax.models import structure
from pxp_jax.prune import criteria


def _setup(name='resnet_tiny'):
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  if 'vit' in name:  # the head starts at zero: give it weights
    head = variables['params']['head']
    head['kernel'] = jax.random.normal(jax.random.key(2), head['kernel'].shape)
  found = structure.trace(model, variables, x.shape)
  return model, variables, x, found


@pytest.mark.parametrize('per_layer', [False, True])
def test_masks_prune_int_n_rate_units_nested(per_layer):
  rng = np.random.default_rng(0)
  scores = {'a': rng.random(7), 'b': rng.random(13), 'c': rng.random(4)}
  rates = [0.0, 0.1, 0.25, 0.5, 0.9]
  out = prune.masks(scores, rates, per_layer=per_layer)
  for r, rate in enumerate(rates):
    if per_layer:
      for k, s in scores.items():
        assert (1 - out[k][r]).sum() == int(s.size * rate)
    else:
      assert sum((1 - m[r]).sum() for m in out.values()) == int(24 * rate)
  for k in scores:  # nested: pruned stays pruned
    assert np.all(np.diff(np.asarray(out[k]), axis=0) <= 0)
  if not per_layer:  # the globally lowest scores go first
    flat = np.concatenate([scores[k] for k in scores])
    pruned = np.concatenate([1 - np.asarray(out[k][2]) for k in scores])
    assert flat[pruned == 1].max() < flat[pruned == 0].min()


def test_keep_one_never_empties_a_layer():
  scores = {'small': np.array([0.0, 0.1]), 'big': np.arange(10.0) + 1}
  out = prune.masks(scores, [0.5, 0.9], keep_one=True)
  assert np.all(np.asarray(out['small']).sum(-1) >= 1)
  assert np.all(np.asarray(out['big']).sum(-1) >= 1)
  assert (1 - np.asarray(out['small'][1])).sum() + (
      1 - np.asarray(out['big'][1])).sum() == int(12 * 0.9)


@pytest.mark.slow
def test_bad_rates_units_and_criteria_are_clear_errors():
  for bad in ([0.5, 1.0], [0.0, 0.5, 0.3], [0.0, 0.2, 0.2], [-0.1, 0.5]):
    with pytest.raises(ValueError, match=r'rates must be increasing and lie '
                       r'in \[0, 1\)'):
      prune.masks({'a': np.ones(3)}, bad)
  _, _, _, found = _setup()
  with pytest.raises(ValueError, match='unknown unit type'):
    found.units('channels')
  with pytest.raises(ValueError, match='no heads to prune'):
    found.units('heads')
  with pytest.raises(ValueError, match='unknown criterion'):
    criteria.get('magnitude')


def test_all_ones_mask_is_the_unpruned_model_and_zero_silences_units():
  model, variables, x, found = _setup()
  units = found.units('filters')
  ones = {k: jnp.ones(u.size) for k, u in units.items()}
  np.testing.assert_array_equal(
      prune.masked_apply(model, variables, x, ones),
      model.apply(variables, x))
  # Pruning every filter of the first conv silences the whole input path:
  # the logits no longer depend on the input.
  zero_first = dict(ones, conv1=jnp.zeros_like(ones['conv1']))
  logits = prune.masked_apply(model, variables, x, zero_first)
  np.testing.assert_allclose(logits, logits[:1].repeat(len(x), 0), atol=1e-5)


@pytest.mark.slow
def test_heads_and_neurons_masks_act_on_a_vit():
  model, variables, x, found = _setup('vit_tiny')
  heads = found.units('heads')
  assert set(heads) == {'blocks.0.attn', 'blocks.1.attn'}
  neurons = found.units('neurons')
  assert set(neurons) == {f'blocks.{i}.mlp.fc{j}' for i in (0, 1)
                          for j in (1, 2)}
  ones = {k: jnp.ones(2) for k in heads}
  base = prune.masked_apply(model, variables, x, ones)
  np.testing.assert_array_equal(base, model.apply(variables, x))
  one_off = dict(ones, **{'blocks.1.attn': jnp.array([1.0, 0.0])})
  assert not np.allclose(prune.masked_apply(model, variables, x, one_off),
                         base)


@pytest.mark.slow
def test_a_whole_sweep_is_one_compiled_program(monkeypatch):
  traces = []
  original = structure.trace
  monkeypatch.setattr(structure, 'trace',
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  model, variables, x, found = _setup()
  units = found.units('filters')
  rng = np.random.default_rng(0)
  per_criterion = {
      c: prune.masks({k: rng.random(u.size) for k, u in units.items()},
                     prune.DEFAULT_RATES)
      for c in ('a', 'b', 'c')}
  stacked = prune.stack(per_criterion)
  labels = np.arange(6) % 10
  run = prune.sweep_correct(model)
  traces.clear()
  batches = [dict(image=x[:3], label=labels[:3]),
             dict(image=x[3:], label=labels[3:])]
  first = prune.sweep_accuracy(model, variables, batches, stacked, 10,
                               run=run)
  again = prune.sweep_accuracy(model, variables, batches, prune.stack(
      {c: {k: 1 - v for k, v in m.items()} for c, m in per_criterion.items()}),
                               10, run=run)
  assert len(traces) == 1  # 60 masked models x 2 batches x 2 sweeps, 1 trace
  assert first.shape == again.shape == (60,)
  expected = [np.mean(np.argmax(prune.masked_apply(
      model, variables, x, {k: v[i] for k, v in stacked.items()}), -1)
                      == labels) for i in (0, 7, 45)]
  np.testing.assert_allclose(first[[0, 7, 45]], expected)


def test_summary_metrics():
  rates = [0.0, 0.5, 0.9]
  out = prune.summarize(rates, [1.0, 0.96, 0.2], unpruned=1.0)
  assert out['a_pr'] == pytest.approx((1.0 + 0.96 + 0.2) / 3)
  assert out['auc'] == pytest.approx(0.5 * (1.96 / 2) + 0.4 * (1.16 / 2))
  assert out['top_pr'] == 0.5


@pytest.mark.parametrize('criterion', list(criteria.REGISTRY))
def test_every_criterion_scores_every_unit(criterion):
  from pxp_jax import composites  # pylint: disable=g-import-not-at-top
  model, variables, x, found = _setup()
  units = found.units('filters')
  options = {'lrp': dict(composite=composites.epsilon_plus()),
             'integrated_gradients': dict(steps=4)}.get(criterion, {})
  scores = criteria.get(criterion, **options).score(
      model, variables, np.asarray(x), np.arange(6) % 10, units,
      batch_size=4)
  assert {k: v.shape for k, v in scores.items()} == {
      k: (u.size,) for k, u in units.items()}
  assert all(np.all(np.isfinite(v)) and np.any(v != 0)
             for v in scores.values())


def test_taylor_logit_equals_activation_times_gradient():
  """The ``taylor_logit`` variant (the label logit's gradient after the
  BatchNorm, |.| per sample) against a direct computation at one conv; the
  default criteria are checked against torch in test_criteria.py. In
  float64: the two programs round differently, and in float32 a ReLU input
  within rounding of 0 could switch its gradient in one of them."""
  model, variables, x, found = _setup()
  units = {'layer1.0.conv1': found.units('filters')['layer1.0.conv1']}
  labels = np.arange(6) % 10
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  def logits_with(variables, x, delta):
    def add(f, args, kwargs, context):
      out = f(*args, **kwargs)
      if '.'.join(context.module.path) == 'layer1.0.bn1':
        return out + delta
      return out
    with nn.intercept_methods(add):
      return model.apply(variables, x)

  @jax.jit  # op by op, float64 convolutions and their gradients are slow
  def activation_and_gradient(variables, x):
    captured = {}

    def grab(f, args, kwargs, context):
      out = f(*args, **kwargs)
      if '.'.join(context.module.path) == 'layer1.0.bn1':
        captured['a'] = out
      return out

    with nn.intercept_methods(grab):
      model.apply(variables, x)
    a = captured['a']
    return a, jax.grad(lambda d: jnp.take_along_axis(
        logits_with(variables, x, d), jnp.asarray(labels)[:, None], 1).sum())(
            jnp.zeros_like(a))

  with jax.enable_x64(True):
    x = np.asarray(x, np.float64)
    variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    taylor = criteria.get('taylor_logit').score(
        model, variables, x, labels, units, batch_size=6)['layer1.0.conv1']
    a, g = activation_and_gradient(variables, x)
  a, g = np.asarray(a), np.asarray(g)
  assert a.dtype == g.dtype == taylor.dtype == np.float64
  expected = np.abs((a * g).mean(axis=(1, 2))).sum(0)
  # float64 rounding of two programs of the same gradient
  np.testing.assert_allclose(taylor, expected, rtol=1e-9)


@pytest.mark.slow
def test_fine_tuning_keeps_pruned_units_pruned_and_recovers():
  from pxp_jax.prune import finetune  # pylint: disable=g-import-not-at-top
  import itertools  # pylint: disable=g-import-not-at-top
  model, variables, x, found = _setup()
  labels = np.arange(6) % 3
  units = found.units('filters')
  rng = np.random.default_rng(0)
  masks = {k: m[0] for k, m in prune.masks(
      {k: rng.random(u.size) for k, u in units.items()}, [0.3]).items()}
  batches = itertools.repeat(dict(image=x, label=labels))

  def loss(v):
    logits = prune.masked_apply(model, v, x, masks)
    return float(-jnp.mean(jax.nn.log_softmax(logits)[np.arange(6), labels]))

  tuned = finetune.fine_tune(model, variables, masks, batches, steps=30,
                             learning_rate=1e-2)
  assert loss(tuned) < 0.5 * loss(variables)
  # A pruned filter gets no gradient: its weights are untouched.
  kernel, new = (variables['params']['layer1']['0']['conv1']['kernel'],
                 tuned['params']['layer1']['0']['conv1']['kernel'])
  pruned = np.asarray(masks['layer1.0.conv1']) == 0
  assert pruned.any() and (~pruned).any()
  np.testing.assert_array_equal(np.asarray(new)[..., pruned],
                                np.asarray(kernel)[..., pruned])
  assert not np.allclose(np.asarray(new)[..., ~pruned],
                         np.asarray(kernel)[..., ~pruned])
