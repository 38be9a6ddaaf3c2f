"""Masks in the optimiser state (``prune.masking``) and the iterative PXP
job: pruned parameters stay exactly 0 in a plain optax loop, zeroed
parameters compute the masked model, masks nest over rounds, and a killed
run resumes to the same results."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from experiments.configs import iterative as iterative_configs
from pxp_jax import checkpoints, data
from pxp_jax.models import structure
from pxp_jax.jobs import iterative
from pxp_jax.prune import masking, sweep


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), name='conv')(x))
    x = nn.relu(nn.Dense(8, name='hidden')(x.mean((1, 2))))
    return nn.Dense(3, name='out')(x)


@pytest.mark.slow
def test_masked_optax_keeps_pruned_parameters_at_zero():
  model = _Net()
  x = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  y = jnp.arange(16) % 3
  variables = model.init(jax.random.key(1), x)
  unit_masks = {'conv': np.array([1, 0, 1, 1, 0, 1], np.float32),
                'hidden': np.array([0, 1, 1, 1, 1, 1, 1, 0], np.float32)}
  m = masking.param_masks(model, variables, unit_masks, input_shape=x.shape)
  # Exactly the pruned units' output columns and biases are masked.
  np.testing.assert_array_equal(m['conv']['kernel'][..., 1], 0)
  np.testing.assert_array_equal(m['conv']['bias'], unit_masks['conv'])
  np.testing.assert_array_equal(m['hidden']['kernel'][:, 0], 0)
  np.testing.assert_array_equal(m['hidden']['kernel'][:, 1], 1)
  np.testing.assert_array_equal(m['out']['kernel'], 1)

  params = masking.apply_masks(variables['params'], m)
  # Weight decay and momentum would move zero entries; the mask stops them.
  tx = masking.masked(optax.chain(optax.clip_by_global_norm(1.0),
                                  optax.adamw(1e-2, weight_decay=0.1)), m)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa
        model.apply({'params': p}, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  start = params
  for _ in range(5):
    params, state = step(params, state)
  for p, p0, mask in zip(jax.tree.leaves(params), jax.tree.leaves(start),
                         jax.tree.leaves(m)):
    assert np.all(np.asarray(p)[np.asarray(mask) == 0] == 0)
    # The others move (but for a unit that ReLU keeps dead on this batch).
    assert np.mean(np.asarray(p - p0)[np.asarray(mask) != 0] != 0) > 0.75

  # Tightening the masks between rounds: the same compiled step, the newly
  # pruned neuron frozen at 0 from then on.
  tighter = dict(unit_masks, hidden=unit_masks['hidden'] * np.array(
      [1, 0, 1, 1, 1, 1, 1, 1], np.float32))
  m2 = masking.param_masks(model, variables, tighter, input_shape=x.shape)
  state = masking.update_masks(state, m2)
  params = masking.apply_masks(params, m2)
  traces = step._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    params, state = step(params, state)
  assert step._cache_size() == traces  # pylint: disable=protected-access
  np.testing.assert_array_equal(params['hidden']['kernel'][:, 1], 0)
  assert params['hidden']['bias'][1] == 0
  with pytest.raises(ValueError, match='shaped like the parameters'):
    masking.update_masks(state, {'conv': m2['conv']})
  with pytest.raises(ValueError, match='has shape'):
    masking.param_masks(model, variables, {'conv': np.ones(5)},
                        input_shape=x.shape)


@pytest.mark.parametrize('name', ['resnet_digits', 'vit_digits'])
@pytest.mark.slow
def test_zeroed_parameters_compute_the_masked_model(name):
  """A filter with its BatchNorm, a neuron, a head: zeroing the parameters
  ``param_masks`` names gives ``masked_apply``'s logits."""
  model, variables = checkpoints.load(name)
  batch = next(iter(data.batches(data.load('digits', 'test'), data.DIGITS,
                                 8)))
  x = jnp.asarray(batch['image'])
  found = structure.trace(model, variables, x.shape)
  rng = np.random.default_rng(0)
  units = found.units('filters' if name == 'resnet_digits' else 'neurons')
  if name == 'vit_digits':
    units.update(found.units('heads'))
  unit_masks = {k: (rng.random(u.size) > 0.4).astype(np.float32)
                for k, u in units.items()}
  m = masking.param_masks(model, variables, unit_masks, found)
  zeroed = {**variables,
            'params': masking.apply_masks(variables['params'], m)}
  ref = sweep.masked_apply(model, variables, x, unit_masks, found)
  out = model.apply(zeroed, x)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  dense = model.apply(variables, x)
  assert np.max(np.abs(np.asarray(dense - ref))) > 1e-2  # masks matter


def _config(digits_dir, **changes):
  config = iterative_configs.get_config('model=resnet_digits,runlocal')
  config.data_dir = digits_dir
  config.fine_tune_steps = 2
  config.fine_tune_batch = 32
  config.classes = (0, 1, 2)  # a few-class task: fewer images to evaluate
  config.update(changes)
  return config


@pytest.mark.slow
def test_iterative_masks_nest_and_a_killed_run_resumes(digits_dir, tmp_path,
                                                       monkeypatch):
  config = _config(digits_dir, criteria=('weight',), one_shot=False,
                   target_rate=0.2)
  straight = iterative.iterative(config, tmp_path / 'a')
  entry = straight['criteria']['weight']
  assert entry['rates'] == [0.0, 0.1, 0.2]
  assert entry['pruned_units'] == [0, 120, 240]  # of 1,200 filters
  assert all(0 <= a <= 1 for a in entry['accuracy'])
  # Nesting: every unit pruned in a round is pruned in the next.
  manager = ocp.CheckpointManager(tmp_path / 'a' / 'rounds')
  masks = [manager.restore(k, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']['weight']['masks']
           for k in (1, 2)]
  manager.close()
  for small, large in zip(masks, masks[1:]):
    for key in small:
      assert np.all(np.asarray(large[key])[np.asarray(small[key]) == 0] == 0)

  save = ocp.CheckpointManager.save

  def save_then_die(self, step, *args, **kwargs):
    out = save(self, step, *args, **kwargs)
    if step == 1:
      self.wait_until_finished()
      raise KeyboardInterrupt('killed after round 1')
    return out

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    iterative.iterative(config, tmp_path / 'b')
  assert not (tmp_path / 'b' / 'results.json').exists()
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  resumed = iterative.iterative(config, tmp_path / 'b')
  assert resumed == straight
  assert ((tmp_path / 'b' / 'results.json').read_bytes()
          == (tmp_path / 'a' / 'results.json').read_bytes())


@pytest.mark.slow
def test_iterative_lrp_against_one_shot(digits_dir, tmp_path):
  config = _config(digits_dir, target_rate=0.1)
  results = iterative.iterative(config, tmp_path)
  lrp, weight = results['criteria']['lrp'], results['criteria']['weight']
  assert lrp['rates'] == weight['rates'] == [0.0, 0.1]
  assert lrp['pruned_units'] == weight['pruned_units'] == [0, 120]
  assert results['one_shot']['lrp']['rates'] == [0.1]
  # Fewer parameters once pruned (slim removes LRP's filters).
  assert lrp['parameters'][0] > lrp['parameters'][1]
  assert lrp['accuracy'][0] > 0.95
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['criteria']['lrp']['accuracy'] == lrp['accuracy']
  assert (tmp_path / 'iterative.png').stat().st_size > 0
  with pytest.raises(ValueError, match='different config'):
    iterative.iterative(_config(digits_dir, step=0.05), tmp_path)
  with pytest.raises(ValueError, match='step'):
    iterative.rates_of(0.5, 0.0)
