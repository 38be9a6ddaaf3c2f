"""The model registry, module paths and input checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxp_jax import models
from pxp_jax.models import layers

SMALL = ['resnet_tiny', 'resnet18_small', 'vgg_tiny', 'vit_tiny',
         'vit_small_input']


def _size(name):
  return 32 if name in SMALL else 224


@pytest.mark.parametrize('name', models.names())
@pytest.mark.slow
def test_every_registered_model_builds(name):
  model = models.create(name, num_classes=7)
  x = jnp.zeros((2, _size(name), _size(name), 3), jnp.float32)
  if name in SMALL:
    variables = model.init(jax.random.key(0), x)
    logits = model.apply(variables, x)
  else:  # shapes only: the big ones are exercised by tests/test_convert.py
    logits = jax.eval_shape(
        lambda: model.apply(model.init(jax.random.key(0), x), x))
  assert logits.shape == (2, 7)


def _called_paths(name):
  model = models.create(name, num_classes=10)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  seen = {}

  def record(f, args, kwargs, context):
    if context.method_name == '__call__':
      seen['.'.join(context.module.path)] = type(context.module).__name__
    return f(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x)
  return seen


def test_resnet_paths_mirror_torchvision():
  seen = _called_paths('resnet_tiny')
  assert seen['conv1'] == 'Conv' and seen['bn1'] == 'BatchNorm'
  assert seen['layer2.0.conv1'] == 'Conv'
  assert seen['layer2.0.downsample.0'] == 'Conv'
  assert seen['layer2.0.downsample.1'] == 'BatchNorm'
  assert seen['layer2.0.residual'] == 'Sum'
  assert seen['layer1.0.relu'] == 'ReLU'
  assert seen['avgpool'] == 'GlobalAvgPool' and seen['fc'] == 'Dense'


def test_vgg_paths_mirror_torchvision():
  seen = _called_paths('vgg_tiny')
  # conv, bn, relu, pool, ... as torchvision's nn.Sequential numbers them
  assert [seen[f'features.{i}'] for i in range(4)] == [
      'Conv', 'BatchNorm', 'ReLU', 'MaxPool']
  assert seen['classifier.0'] == seen['classifier.3'] == 'Dense'
  assert seen['classifier.6'] == 'Dense'
  assert seen['avgpool'] == 'AdaptiveAvgPool'


@pytest.mark.slow
def test_vit_attention_parts_are_named_modules():
  seen = _called_paths('vit_tiny')
  expected = {'patch_embed.proj': 'Conv', 'blocks.1.norm1': 'LayerNorm',
              'blocks.1.attn.qkv': 'Dense', 'blocks.1.attn.qk': 'QueryKey',
              'blocks.1.attn.softmax': 'Softmax',
              'blocks.1.attn.av': 'AttentionValue',
              'blocks.1.attn.proj': 'Dense', 'blocks.1.residual1': 'Sum',
              'blocks.1.mlp.fc1': 'Dense', 'blocks.1.mlp.act': 'GELU',
              'blocks.1.mlp.fc2': 'Dense', 'blocks.1.residual2': 'Sum',
              'norm': 'LayerNorm', 'head': 'Dense'}
  assert {k: seen.get(k) for k in expected} == expected
  # The two attention products are matrix products of two activations.
  assert issubclass(layers.QueryKey, layers.MatMul)
  assert issubclass(layers.AttentionValue, layers.MatMul)


def test_resnet_parameter_counts_match_torchvision():
  # torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters
  # (1000 classes), BatchNorm running statistics excluded.
  for name, count in [('resnet18', 11_689_512), ('resnet50', 25_557_032),
                      ('vgg16', 138_357_544), ('vit_b16', 86_567_656)]:
    shapes = jax.eval_shape(models.create(name).init, jax.random.key(0),
                            jnp.zeros((1, 224, 224, 3)))
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes['params'])
               ) == count, name


def test_adaptive_avg_pool_matches_torch():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(0).normal(size=(2, 9, 5, 3)).astype(np.float32)
  for out in [(7, 7), (2, 3), (1, 1), (9, 5)]:
    ours = layers.AdaptiveAvgPool(out).apply({}, jnp.asarray(x))
    ref = torch.nn.AdaptiveAvgPool2d(out)(torch.from_numpy(x).permute(0, 3, 1, 2))
    # float32 means of <= 9 values ~1: rounding ~1e-7; no ties to flip
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(),
                               atol=1e-6)


@pytest.mark.parametrize('window,stride,padding', [(3, 2, 1), (2, 2, 0),
                                                   (3, 3, 0)])
def test_max_pool_and_its_gradient_match_torch(window, stride, padding, x64):
  """Values and winner-takes-all gradient, ties included (first maximum).

  The ties are exact (multiples of 0.5, no arithmetic before the pooling),
  so both sides see the same values on any CPU."""
  del x64
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  x = np.maximum(np.round(rng.normal(size=(2, 13, 11, 3)) * 2) / 2, 0)
  g = rng.normal(size=layers.max_pool(jnp.asarray(x), window, stride,
                                      padding).shape)
  y, vjp = jax.vjp(lambda a: layers.max_pool(a, window, stride, padding),
                   jnp.asarray(x))
  xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
  yt = torch.nn.functional.max_pool2d(xt, window, stride, padding)
  yt.backward(torch.from_numpy(g).permute(0, 3, 1, 2))
  np.testing.assert_array_equal(y, yt.detach().permute(0, 2, 3, 1).numpy())
  # float64 sums of the gradients routed to one input by overlapping windows
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0],
                             xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-12)


@pytest.mark.parametrize('kernel,stride,padding', [
    (7, 2, ((3, 3), (3, 3))), (3, 2, ((1, 1), (1, 1))), (5, 3, ((2, 1), (0, 2))),
    (4, 4, 'VALID'), (3, 2, 'SAME')])
@pytest.mark.slow
def test_strided_conv_and_its_gradients_equal_lax(kernel, stride, padding,
                                                  x64):
  """The space-to-depth input gradient changes no value or gradient."""
  del x64
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 17, 16, 3)))
  k = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)))
  numbers = jax.lax.conv_dimension_numbers(x.shape, k.shape,
                                           ('NHWC', 'HWIO', 'NHWC'))
  outs = []
  for conv in (jax.lax.conv_general_dilated, layers.conv_general_dilated):
    y, vjp = jax.vjp(lambda a, w: conv(a, w, (stride, stride), padding,
                                       dimension_numbers=numbers), x, k)
    outs.append((y, *vjp(jnp.cos(y))))
  for ours, lax in zip(outs[1], outs[0]):
    # float64 rounding of the same sums in another order
    np.testing.assert_allclose(ours, lax, rtol=1e-12, atol=1e-12)


def test_unknown_model_and_attribute_are_clear_errors():
  with pytest.raises(ValueError, match='unknown model .*resnet18'):
    models.create('resnet19')
  with pytest.raises(TypeError, match='no attribute.*widht'):
    models.create('resnet18', widht=2)


@pytest.mark.parametrize('shape,dtype,message', [
    ((32, 32, 3), jnp.float32, 'add a batch axis'),
    ((1, 3, 32, 32), jnp.float32, 'NCHW'),
    ((1, 32, 32, 3), jnp.uint8, 'float images'),
    ((1, 64, 64, 3), jnp.float32, 'takes \\(32, 32\\) images'),
])
def test_bad_inputs_are_clear_errors(shape, dtype, message):
  model = models.create('vit_tiny')
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises((ValueError, TypeError), match=message):
    model.apply(variables, jnp.zeros(shape, dtype))
