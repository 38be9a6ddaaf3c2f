"""prune.accuracy (masks and few-class tasks) and prune.evaluate: scores at
rates as named curves with their summaries, in one compiled program."""

import functools

import jax
import numpy as np
import pytest

from pxp_jax import checkpoints, prune
from pxp_jax.models import structure
from pxp_jax.prune import metrics


@pytest.fixture(scope='module')
def setup():
  model, variables = checkpoints.load('resnet_digits')
  x = np.asarray(jax.random.normal(jax.random.key(1), (8, 32, 32, 3)))
  units = structure.trace(model, variables, x.shape).units('filters')
  logits = np.asarray(jax.jit(model.apply)(variables, x))
  labels = np.argsort(logits, -1)[:, -1].astype(np.int32)  # all right
  labels[::2] = np.argsort(logits[::2], -1)[:, -2]  # every other one wrong
  batches = [dict(image=x[:5], label=labels[:5]),
             dict(image=x[5:], label=labels[5:])]
  return model, variables, x, labels, units, batches


@functools.cache
def _masked(model):
  return jax.jit(lambda v, x, m: prune.masked_apply(model, v, x, m))


def _by_hand(model, variables, x, labels, masks=None, classes=None):
  logits = np.asarray(jax.jit(model.apply)(variables, x) if masks is None
                      else _masked(model)(variables, x, masks))
  if classes is not None:
    logits = np.where(np.isin(np.arange(10), classes), logits, -np.inf)
  return float(np.mean(np.argmax(logits, -1) == labels))


@pytest.mark.slow
def test_accuracy_takes_masks_and_classes(setup):
  model, variables, x, labels, units, batches = setup
  assert prune.accuracy(model, variables, batches) == 0.5
  rng = np.random.default_rng(0)
  masks = {k: (rng.random(u.size) > 0.3).astype(np.float32)
           for k, u in units.items()}
  assert prune.accuracy(model, variables, batches, masks) == pytest.approx(
      _by_hand(model, variables, x, labels, masks))
  rows = {k: np.stack([np.ones_like(m), m]) for k, m in masks.items()}
  np.testing.assert_allclose(
      prune.accuracy(model, variables, batches, rows),
      [0.5, _by_hand(model, variables, x, labels, masks)])
  classes = sorted(set(labels[:3].tolist()) | {0, 1})
  expected = _by_hand(model, variables, x, labels, classes=classes)
  assert prune.accuracy(model, variables, batches,
                        classes=classes) == pytest.approx(expected)
  assert prune.accuracy(model, variables, batches, masks,
                        classes=classes) == pytest.approx(
                            _by_hand(model, variables, x, labels, masks,
                                     classes))
  with pytest.raises(ValueError, match='no examples to evaluate'):
    prune.accuracy(model, variables, [])


@pytest.mark.slow
def test_evaluate_gives_named_curves_and_their_summaries(setup, monkeypatch):
  model, variables, x, labels, units, batches = setup
  rng = np.random.default_rng(1)
  score = lambda: {k: rng.random(u.size) for k, u in units.items()}  # noqa: E731
  scores = {'lrp': score(), 'random': [score(), score(), score()]}
  rates = (0.0, 0.3, 0.6)
  result = prune.evaluate(model, variables, batches, scores, rates)
  assert list(result.accuracy) == ['lrp', 'random']
  assert result.accuracy['lrp'].shape == (1, 3)
  assert result.accuracy['random'].shape == (3, 3)
  np.testing.assert_array_equal(result.rates, rates)
  assert result.unpruned == 0.5 == result.accuracy['lrp'][0, 0]
  for name, runs in scores.items():  # each row is its pruned model's
    runs = runs if isinstance(runs, list) else [runs]
    for seed, s in enumerate(runs):
      masks = prune.masks(s, rates)
      assert len(result.masks[name]) == len(runs)
      for r in range(3):
        row = {k: np.asarray(v[r]) for k, v in masks.items()}
        assert result.accuracy[name][seed, r] == pytest.approx(
            _by_hand(model, variables, x, labels, row))
  summary = result.summaries()
  assert summary['lrp'] == metrics.summarize(rates, result.accuracy['lrp'][0],
                                             0.5)
  random = result.accuracy['random']
  assert summary['random'] == {
      **metrics.summarize(rates, random.mean(0), 0.5),
      **metrics.standard_errors(rates, random),
      'accuracy_per_seed': random.tolist()}
  np.testing.assert_array_equal(result.curve('random'), random.mean(0))

  # Other scores, other rates of the same count: no new program.
  traces = []
  original = structure.trace
  monkeypatch.setattr(structure, 'trace',
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  again = prune.evaluate(model, variables, batches,
                         {'lrp': score(), 'random': [score(), score(),
                                                     score()]},
                         (0.0, 0.5, 0.9))
  assert not traces and again.accuracy['random'].shape == (3, 3)


@pytest.mark.slow
def test_evaluate_without_rate_zero_measures_the_unpruned_model(setup):
  model, variables, _, _, units, batches = setup
  scores = {'weight': {k: np.arange(u.size, dtype=float)
                       for k, u in units.items()}}
  result = prune.evaluate(model, variables, batches, scores, (0.5, 0.9),
                          classes=list(range(10)))
  assert result.unpruned == prune.accuracy(model, variables, batches)
  assert result.accuracy['weight'].shape == (1, 2)
  with pytest.raises(ValueError, match=r'rates=\(0.5, 0.2\): rates must be '
                     r'increasing and lie in \[0, 1\).*write \(0.2, 0.5\)'):
    prune.evaluate(model, variables, batches, scores, (0.5, 0.2))
  with pytest.raises(ValueError, match='scores name no criterion'):
    prune.evaluate(model, variables, batches, {}, (0.5, 0.9))


def test_zero_other_classes_zeroes_their_classifier_rows(setup):
  _, variables, _, _, _, _ = setup
  zeroed = prune.zero_other_classes(variables, 'fc', [2, 5])
  kernel = np.asarray(zeroed['params']['fc']['kernel'])
  bias = np.asarray(zeroed['params']['fc']['bias'])
  others = [c for c in range(10) if c not in (2, 5)]
  assert np.all(kernel[:, others] == 0) and np.all(bias[others] == 0)
  np.testing.assert_array_equal(
      kernel[:, [2, 5]], np.asarray(variables['params']['fc']['kernel'])[
          :, [2, 5]])
