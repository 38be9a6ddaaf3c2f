"""The one training step and masked optimiser (``prune.training``), and
fine-tuning and iterative pruning on them (``prune.fine_tune``,
``prune.iterative``)."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pxp_jax import prune
from pxp_jax.prune import finetune, masking, training


class _Net(nn.Module):
  """A conv with BatchNorm, a hidden dense layer, a head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(6, (3, 3), name='conv')(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, name='bn')(x))
    x = nn.relu(nn.Dense(8, name='hidden')(x.mean((1, 2))))
    return nn.Dense(3, name='out')(x)


def _setup():
  model = _Net()
  x = jax.random.normal(jax.random.key(0), (12, 8, 8, 3))
  y = jnp.arange(12) % 3
  variables = model.init(jax.random.key(1), x)
  return model, variables, dict(image=x, label=y)


@pytest.mark.slow
def test_train_step_is_the_plain_optax_step_with_batch_statistics():
  model, variables, batch = _setup()
  tx = optax.sgd(0.1, 0.9)
  step = training.train_step(model, tx, train=True, label_smoothing=0.1)
  params, state = variables['params'], {'batch_stats':
                                        variables['batch_stats']}
  opt_state = tx.init(params)
  new, new_state, _, metrics = step(params, state, opt_state, batch)

  def loss_fn(p):  # written out: training mode, smoothed one-hot targets
    logits, updates = model.apply({'params': p, **state}, batch['image'],
                                  train=True, mutable=['batch_stats'])
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], 3), 0.1)
    return optax.softmax_cross_entropy(logits, targets).mean(), (logits,
                                                                 updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(params)
  expected = optax.apply_updates(params, tx.update(grads, opt_state,
                                                   params)[0])
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-6)
  assert int(metrics['correct']) == int(
      jnp.sum(jnp.argmax(logits, -1) == batch['label']))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               new, expected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               new_state['batch_stats'], updates['batch_stats'])
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), new_state['batch_stats'],
      state['batch_stats']))
  assert min(moved) > 0  # the running statistics are the batch's now
  # Evaluation mode: the statistics stay, the loss is the integer-label one.
  frozen = training.train_step(model, tx)
  _, same, _, metrics = frozen(params, state, opt_state, batch)
  jax.tree.map(np.testing.assert_array_equal, same, state)
  logits = model.apply(variables, batch['image'])
  np.testing.assert_allclose(
      metrics['loss'], optax.softmax_cross_entropy_with_integer_labels(
          logits, batch['label']).mean(), rtol=1e-6)


def test_optimizer_holds_its_numbers_in_its_state():
  params = {'w': jnp.ones(3)}
  state = training.optimizer('sgd', 0.5, momentum=0.8,
                             weight_decay=0.1).init(params)
  assert float(state.hyperparams['learning_rate']) == 0.5
  assert float(state.hyperparams['momentum']) == pytest.approx(0.8)
  # A schedule is optax's own optimiser (the train job's, bit for bit).
  schedule = optax.linear_schedule(1.0, 0.0, 10)
  tx = training.optimizer('adamw', schedule, weight_decay=0.01)
  reference = optax.adamw(schedule, weight_decay=0.01)
  grads = {'w': jnp.array([0.3, -1.0, 2.0])}
  np.testing.assert_array_equal(
      tx.update(grads, tx.init(params), params)[0]['w'],
      reference.update(grads, reference.init(params), params)[0]['w'])
  with pytest.raises(ValueError, match='unknown optimizer .*use sgd or adamw'):
    training.optimizer('adam')


@pytest.mark.slow
def test_fine_tune_keeps_pruned_parameters_under_weight_decay_one_program():
  model, variables, batch = _setup()
  masks = {'conv': np.array([1, 0, 1, 1, 0, 1], np.float32),
           'hidden': np.array([1, 1, 0, 1, 1, 1, 1, 1], np.float32)}
  step = training.train_step(model, training.stateful('adamw'))
  before = step._cache_size()  # pylint: disable=protected-access
  tuned = [prune.fine_tune(model, variables, m, itertools.repeat(batch),
                           steps=4, learning_rate=lr, weight_decay=0.5)
           for lr, m in ((1e-2, masks), (3e-2, dict(masks, conv=np.ones(6))))]
  # Two learning rates and masks, one compiled step.
  assert step._cache_size() - before <= 1  # pylint: disable=protected-access
  old, new = variables['params'], tuned[0]['params']
  # Weight decay would shrink the pruned filter's and neuron's weights; the
  # masked optimiser keeps them as they were (and moves the others).
  for layer, axis_mask in (('conv', masks['conv']),
                           ('hidden', masks['hidden'])):
    pruned = axis_mask == 0
    np.testing.assert_array_equal(new[layer]['kernel'][..., pruned],
                                  old[layer]['kernel'][..., pruned])
    np.testing.assert_array_equal(new[layer]['bias'][pruned],
                                  old[layer]['bias'][pruned])
    assert np.all(new[layer]['kernel'][..., ~pruned]
                  != old[layer]['kernel'][..., ~pruned])
  np.testing.assert_array_equal(new['bn']['scale'][masks['conv'] == 0],
                                old['bn']['scale'][masks['conv'] == 0])
  # BatchNorm statistics stay frozen.
  jax.tree.map(np.testing.assert_array_equal, tuned[0]['batch_stats'],
               variables['batch_stats'])
  with pytest.raises(FloatingPointError, match='NaN or infinite after 3 '
                     'steps at learning rate 1e\\+30; lower it'):
    prune.fine_tune(model, variables, masks, itertools.repeat(batch),
                    steps=3, learning_rate=1e30)


def test_iterative_rounds_nest_zero_the_pruned_and_resume():
  model, variables, batch = _setup()
  weights = lambda v: {  # noqa: E731  magnitude of each unit's kernel
      k: jnp.abs(v['params'][k]['kernel']).reshape(
          -1, v['params'][k]['kernel'].shape[-1]).sum(0)
      for k in ('conv', 'hidden')}
  start = finetune.start(model, variables, units=['conv', 'hidden'],
                         learning_rate=1e-2)
  assert list(finetune.start(model, variables, units='filters').masks) == [
      'conv']
  kwargs = dict(steps=3, state=start)
  batches = lambda k: itertools.repeat(batch)  # noqa: E731
  rounds = list(prune.iterative(model, variables, weights, [0.25, 0.5],
                                batches, **kwargs))
  assert [r.round for r in rounds] == [1, 2]
  assert [int(sum(np.sum(m == 0) for m in r.masks.values()))
          for r in rounds] == [3, 7]  # of 14 units
  for key in ('conv', 'hidden'):  # nested masks
    assert np.all(rounds[1].masks[key][rounds[0].masks[key] == 0] == 0)
  for r in rounds:  # the pruned parameters are 0, before and after
    m = masking.param_masks(model, variables, r.masks)
    for variables_ in (r.pruned, r.variables):
      for p, mask in zip(jax.tree.leaves(variables_['params']),
                         jax.tree.leaves(m)):
        assert np.all(np.asarray(p)[np.asarray(mask) == 0] == 0)
  assert not np.allclose(rounds[0].pruned['params']['out']['kernel'],
                         rounds[0].variables['params']['out']['kernel'])
  # Resuming from round 1's state gives round 2 again.
  again = next(prune.iterative(model, variables, weights, [0.25, 0.5],
                               batches, steps=3, state=rounds[0].state,
                               first=1))
  assert again.round == 2
  jax.tree.map(np.testing.assert_array_equal, again.variables,
               rounds[1].variables)
  jax.tree.map(np.testing.assert_array_equal, again.masks, rounds[1].masks)
