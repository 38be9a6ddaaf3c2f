"""bfloat16 relevance passes and rematerialised blocks.

bfloat16: on the shipped models the LRP unit scores of the prune job keep
their ranking (Spearman against float32, scipy's), come back finite and as
float32. remat: the same relevance as without it for every model family,
keeping fewer bytes between the forward and the backward pass.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pxp_jax import composites, models
from pxp_jax.jobs.task import Task
from pxp_jax.lrp import attribution
from pxp_jax.models import resnet
from pxp_jax.prune import criteria

# Measured (benchmarks/precision_rankings.py, README "Precision and
# memory"): Spearman 0.99996 (resnet_digits filters), 0.99996 (vit_digits
# neurons), 1.0 (vit_digits heads). bfloat16 keeps 8 bits of mantissa, so
# units whose scores differ by less than about 0.4% may swap; 0.999 allows
# that and XLA's freedom in ordering sums, while a rule that turns to
# garbage in bfloat16 (a stabiliser lost in rounding, a cancelling
# normalisation) falls far below it.
MIN_SPEARMAN = 0.999


@pytest.mark.slow
@pytest.mark.parametrize('model_name, units', [
    ('resnet_digits', 'filters'), ('vit_digits', 'neurons'),
    ('vit_digits', 'heads')])
def test_bfloat16_scores_rank_units_as_float32(digits_dir, model_name, units):
  task = Task.load(model_name, data_dir=digits_dir, units_type=units,
                   precision='bfloat16', remat=True)
  composite, _ = task.composite()
  lrp = task.criterion('lrp', composite=composite)
  assert (lrp.precision, lrp.remat) == ('bfloat16', True)
  low = task.score(lrp)
  full = task.score(dataclasses.replace(lrp, precision='float32',
                                        remat=False))
  keys = sorted(task.units)
  a = np.concatenate([full[k] for k in keys])
  b = np.concatenate([low[k] for k in keys])
  assert np.all(np.isfinite(b)) and np.all(b >= 0)
  assert not np.array_equal(a, b)  # it did run in another precision
  assert stats.spearmanr(a, b).statistic > MIN_SPEARMAN

  images, labels = task.references()
  result = attribution.attribute(
      task.model, task.variables, jnp.asarray(images[:8]),
      jnp.asarray(labels[:8]), composite, precision='bfloat16')
  assert result.input.dtype == jnp.float32
  assert result.logits.dtype == jnp.float32
  assert {v.dtype for v in result.units.values()} == {jnp.dtype('float32')}


def test_gradient_criteria_stay_float32(digits_dir):
  task = Task.load('resnet_digits', data_dir=digits_dir, precision='bfloat16')
  assert not hasattr(task.criterion('gradient'), 'precision')


def test_invalid_precision_is_a_clear_error():
  model = models.create('resnet_tiny', num_classes=10)
  x = jnp.ones((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"precision 'float16'.*bfloat16"):
    attribution.attribute(model, variables, x, jnp.zeros(1, jnp.int32),
                          composites.epsilon_plus(), precision='float16')
  with pytest.raises(ValueError, match=r"precision 'bf16'.*bfloat16"):
    criteria.get('lrp', composite=composites.epsilon_plus(), precision='bf16')


def test_remat_needs_a_remat_attribute():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x.reshape(x.shape[0], -1))

  x = jnp.ones((1, 4, 4, 3))
  variables = Plain().init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='remat attribute.*nn|remat=False'):
    attribution.attribute(Plain(), variables, x, jnp.zeros(1, jnp.int32),
                          composites.epsilon_plus(), remat=True)


def _random_model(name, dtype=jnp.float32, **overrides):
  model = models.create(name, num_classes=10, **overrides)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  if 'vit' in name:  # the head starts at zero: give it weights
    head = variables['params']['head']
    head['kernel'] = jax.random.normal(jax.random.key(2),
                                       head['kernel'].shape)
  return (model, jax.tree.map(lambda a: a.astype(dtype), variables),
          x.astype(dtype))


def _remat_error(model, variables, x, composite, **kwargs):
  """The largest normwise relative difference of the input and unit
  relevance with remat against without."""
  targets = jnp.arange(x.shape[0]) % 10
  plain = attribution.attribute(model, variables, x, targets, composite,
                                **kwargs)
  again = attribution.attribute(model, variables, x, targets, composite,
                                remat=True, **kwargs)
  pairs = [(again.input, plain.input),
           *[(again.units[k], plain.units[k]) for k in plain.units]]
  assert all(float(jnp.linalg.norm(want)) > 0 for _, want in pairs)
  return max(float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
             for got, want in pairs)


# CNNs: the recomputed blocks give bit-identical float32 relevance (measured
# 0). A ViT's differ by float32 rounding (measured 1.7e-6 normwise: XLA
# fuses the recomputed GELU, softmax and LayerNorm with their backward
# ops), 2e-15 in float64 (``test_remat_vit_is_the_same_maths``).
FLOAT32_REMAT_TOLERANCE = {'resnet_tiny': 1e-6, 'vgg_tiny': 1e-6,
                           'vit_tiny': 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize('name, overrides', [
    ('resnet_tiny', {}), ('resnet_tiny', {'block': resnet.Bottleneck}),
    ('vgg_tiny', {}), ('vit_tiny', {})])
def test_remat_gives_the_same_relevance(name, overrides):
  model, variables, x = _random_model(name, **overrides)
  found = attribution.structure.trace(model, variables, x.shape)
  masks = {k: jnp.arange(u.size) % 3 != 0 for k, u in found.units(
      'heads' if 'vit' in name else 'filters').items()}
  tolerance = FLOAT32_REMAT_TOLERANCE[name]
  # heatmaps: ZBox on the input layer (a VGG's is inside its first
  # rematerialised stage); pruning: the job's composite, with masks
  assert _remat_error(model, variables, x,
                      composites.for_model(model, -3.0, 3.0)) <= tolerance
  assert _remat_error(model, variables, x,
                      composites.for_model(model, purpose='pruning'),
                      masks=masks) <= tolerance


@pytest.mark.slow
def test_remat_vit_is_the_same_maths(x64):
  del x64
  model, variables, x = _random_model('vit_tiny', jnp.float64)
  assert _remat_error(model, variables, x, composites.attn_lrp()) < 1e-12


@pytest.mark.parametrize('name', ['resnet18_small', 'vgg_tiny',
                                  'vit_small_input'])
def test_remat_keeps_fewer_bytes_for_the_backward_pass(name):
  model = models.create(name, num_classes=10)
  x = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  composite = composites.for_model(model, purpose='pruning')
  kept = attribution.residual_bytes(model, variables, x, composite)
  recomputed = attribution.residual_bytes(model, variables, x, composite,
                                          remat=True)
  # measured 0.25 (resnet18_small), 0.21 (vgg_tiny), 0.23 (vit_small_input)
  assert recomputed < 0.4 * kept, (recomputed, kept)
