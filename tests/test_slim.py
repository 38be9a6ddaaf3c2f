"""Slim models: pruned units removed physically, logits those of the masked
model (``prune.sweep.masked_apply``, which multiplies the units' outputs by
their masks), for every family and unit type, at several rates and at the
edges (a block with no heads, layers pruned whole)."""

import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pxp_jax
from pxp_jax import checkpoints, data, models
from pxp_jax.models import structure
from pxp_jax.prune import criteria, ranking, sweep

RTOL = 1e-5


@pytest.fixture(scope='module')
def digits():
  test = data.load('digits', 'test')
  batch = next(iter(data.batches(test, data.DIGITS, 16)))
  return jnp.asarray(batch['image']), jnp.asarray(batch['label'])


def _params(variables) -> int:
  return sum(np.size(a) for a in jax.tree_util.tree_leaves(
      variables['params']))


def _flat(variables):
  return flax.traverse_util.flatten_dict(variables['params'], sep='.')


def _check_logits(model, variables, x, masks, small):
  masked = jax.jit(lambda v, x, m: sweep.masked_apply(model, v, x, m))
  ref = np.asarray(masked(variables, x, masks))
  out = np.asarray(jax.jit(small.model.apply)(small.variables, x))
  assert out.shape == ref.shape
  scale = max(np.max(np.abs(ref)), 1e-6)
  assert np.max(np.abs(out - ref)) / scale < RTOL
  ones = {k: np.ones_like(m) for k, m in masks.items()}
  return ref, np.asarray(masked(variables, x, ones))


def _check_counts(masks, small):
  """Every pruned unit is removed or kept (zeroed), never both."""
  for key, mask in masks.items():
    pruned = int(np.sum(np.asarray(mask) == 0))
    assert (small.removed.get(key, 0) + small.kept_masked.get(key, 0)
            == pruned), key
    if small.kept_masked.get(key):
      assert small.reasons[key]
  assert set(small.reasons) == set(small.kept_masked)


def _out_width(variables, layer):
  return _flat(variables)[f'{layer}.kernel'].shape[-1]


def _random_variables(model, x, seed=0):
  """Random variables of ``model`` (He-scaled kernels, BatchNorm
  statistics and affine parameters away from their initial values, so that
  a channel zeroed wrongly shows in the logits), without compiling its
  initialisers."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])
  out = {}
  for collection, tree in shapes.items():
    flat = flax.traverse_util.flatten_dict(tree, sep='.')
    for name, leaf in flat.items():
      shape = leaf.shape
      if name.endswith('kernel'):
        value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
      elif name.endswith('var'):
        value = rng.uniform(0.5, 2.0, shape)
      elif name.endswith('scale'):
        value = rng.uniform(0.5, 1.5, shape)
      else:  # biases, shifts, means, embeddings
        value = rng.normal(0, 0.5, shape)
      flat[name] = jnp.asarray(value, jnp.float32)
    out[collection] = flax.traverse_util.unflatten_dict(flat, sep='.')
  return out


def _weight_masks(model, variables, x, y, unit_types, rates,
                  per_layer=False):
  found = structure.trace(model, variables, x.shape)
  units = {k: u for t in unit_types for k, u in found.units(t).items()}
  scores = criteria.get('weight').score(model, variables, x, y, units)
  rows = ranking.masks(scores, rates, per_layer=per_layer)
  return [{k: np.asarray(m[i]) for k, m in rows.items()}
          for i in range(len(rates))], found


# ResNet-18 (small input, the shipped checkpoint) ------------------------------


def _stream_writers(keys):
  """Writers of each residual stream of a BasicBlock ResNet, from the
  names: the stem or a projection and the blocks' second convs after it."""
  streams = [['conv1']]
  for key in keys:
    if key.endswith('downsample.0'):
      streams.append([key])
  for key in keys:
    match = re.match(r'layer(\d+)\.\d+\.conv2$', key)
    if match:
      streams[max(0, int(match[1]) - 1)].append(key)
  return streams


@pytest.mark.slow
def test_resnet_filters_at_rates(digits):
  x, y = digits
  model, variables = checkpoints.load('resnet_digits')
  rows, found = _weight_masks(model, variables, x, y, ['filters'], [0.3, 0.7])
  units = found.units('filters')
  before = _params(variables)
  sizes = []
  for masks in rows:
    small = pxp_jax.prune.slim(model, variables, masks)
    ref, unmasked = _check_logits(model, variables, x, masks, small)
    assert not np.allclose(ref, unmasked)  # the masks change the model
    _check_counts(masks, small)
    # The oracle of what stays: a stream channel stays if any writer keeps
    # it (its pruned writers are then zeroed in place); a layer pruned
    # whole keeps its first channel, zeroed.
    for writers in _stream_writers(list(units)):
      kept = np.logical_or.reduce([masks[w] == 1 for w in writers])
      kept[0] |= not kept.any()
      for w in writers:
        assert small.kept_masked.get(w, 0) == int(np.sum(kept & (masks[w]
                                                                 == 0))), w
        assert _out_width(small.variables, w) == int(kept.sum())
    for key in units:
      if key.endswith('conv1') and key != 'conv1':
        left = int(masks[key].sum())
        assert small.kept_masked.get(key, 0) == (left == 0)
        assert _out_width(small.variables, key) == max(left, 1)
    sizes.append(_params(small.variables))
  assert before > sizes[0] > sizes[1]


def test_resnet_stream_channel_goes_only_with_every_writer(digits):
  x, _ = digits
  model, variables = checkpoints.load('resnet_digits')
  writers = ('layer2.0.downsample.0', 'layer2.0.conv2', 'layer2.1.conv2')
  masks = {w: np.ones(32, np.float32) for w in writers}
  for w in writers:
    masks[w][:10] = 0  # pruned by every writer: removed
  masks['layer2.1.conv2'][10:15] = 0  # by one writer only: kept, zeroed
  small = pxp_jax.prune.slim(model, variables, masks)
  _check_logits(model, variables, x, masks, small)
  assert small.removed == {w: 10 for w in writers}
  assert small.kept_masked == {'layer2.1.conv2': 5}
  assert 'residual stream' in small.reasons['layer2.1.conv2']
  flat = _flat(small.variables)
  assert flat['layer2.1.conv1.kernel'].shape == (3, 3, 22, 32)
  assert flat['layer3.0.downsample.0.kernel'].shape == (1, 1, 22, 64)
  assert flat['layer2.1.bn2.scale'][:5].tolist() == [0] * 5  # channels 10-14


def test_resnet_every_filter_pruned(digits):
  x, _ = digits
  model, variables = checkpoints.load('resnet_digits')
  units = structure.trace(model, variables, x.shape).units('filters')
  masks = {k: np.zeros(u.size, np.float32) for k, u in units.items()}
  small = pxp_jax.prune.slim(model, variables, masks)
  _check_logits(model, variables, x, masks, small)
  _check_counts(masks, small)
  # One zero channel per layer is all that is left.
  assert small.kept_masked == {k: 1 for k in units}
  assert all(_out_width(small.variables, k) == 1 for k in units)
  assert _params(small.variables) < _params(variables) / 100


@pytest.mark.slow
def test_bottleneck_resnet(digits):
  x, y = digits
  model = models.create('resnet50', 10, small_input=True, width=1 / 16,
                        stage_sizes=(1, 2, 1, 1))
  variables = _random_variables(model, x)
  rows, found = _weight_masks(model, variables, x, y, ['filters'], [0.3, 0.7],
                              per_layer=True)
  sizes = []
  for masks in rows:
    small = pxp_jax.prune.slim(model, variables, masks)
    _check_logits(model, variables, x, masks, small)
    _check_counts(masks, small)
    # The stem's stream has one writer (layer1.0 projects it): it goes.
    assert 'conv1' not in small.kept_masked
    assert 'layer1.0.conv3' in small.kept_masked or not (
        masks['layer1.0.conv3'] == 0).any()
    sizes.append(_params(small.variables))
  assert _params(variables) > sizes[0] > sizes[1]


# VGG --------------------------------------------------------------------------


@pytest.mark.parametrize('batch_norm', [True, False])
def test_vgg_filters_and_neurons(digits, batch_norm):
  x, y = digits
  model = models.create('vgg_tiny', 10, batch_norm=batch_norm)
  variables = _random_variables(model, x, 1)
  rows, found = _weight_masks(model, variables, x, y, ['filters', 'neurons'],
                              [0.3, 0.7], per_layer=True)
  sizes = []
  for masks in rows:
    small = pxp_jax.prune.slim(model, variables, masks)
    _check_logits(model, variables, x, masks, small)
    _check_counts(masks, small)
    assert small.kept_masked == {}  # a VGG's units all go
    assert small.model.config[0] == int(masks['features.0'].sum())
    assert small.model.hidden == (int(masks['classifier.0'].sum()),
                                  int(masks['classifier.3'].sum()))
    sizes.append(_params(small.variables))
  assert _params(variables) > sizes[0] > sizes[1]


def test_vgg_flatten_rows_follow_channels(digits):
  """The last conv's channel c is rows c*P .. c*P+P-1 of classifier.0
  (torch's channel-major flatten of the 2x2 pool)."""
  x, _ = digits
  model = models.create('vgg_tiny', 10)
  variables = _random_variables(model, x, 2)
  masks = {'features.8': np.ones(16, np.float32)}
  masks['features.8'][[0, 5]] = 0
  small = pxp_jax.prune.slim(model, variables, masks)
  _check_logits(model, variables, x, masks, small)
  rows = np.asarray(_flat(variables)['classifier.0.kernel'])
  kept = np.asarray(_flat(small.variables)['classifier.0.kernel'])
  np.testing.assert_array_equal(kept, np.delete(rows, [0, 1, 2, 3, 20, 21,
                                                       22, 23], axis=0))


# ViT --------------------------------------------------------------------------


@pytest.mark.slow
def test_vit_neurons_and_heads_at_rates(digits):
  x, y = digits
  model, variables = checkpoints.load('vit_digits')
  rows, found = _weight_masks(model, variables, x, y, ['neurons', 'heads'],
                              [0.3, 0.7], per_layer=True)
  sizes = []
  for masks in rows:
    small = pxp_jax.prune.slim(model, variables, masks)
    ref, unmasked = _check_logits(model, variables, x, masks, small)
    assert not np.allclose(ref, unmasked)
    _check_counts(masks, small)
    heads = tuple(int(masks[f'blocks.{i}.attn'].sum()) for i in range(4))
    assert small.model.block_heads == heads
    assert small.model.block_mlp_dims == tuple(
        int(masks[f'blocks.{i}.mlp.fc1'].sum()) for i in range(4))
    for i in range(4):  # fc2 writes the token width: kept, zeroed
      fc2 = f'blocks.{i}.mlp.fc2'
      assert small.kept_masked.get(fc2, 0) == int((masks[fc2] == 0).sum())
      assert f'blocks.{i}.mlp.fc1' not in small.kept_masked
    sizes.append(_params(small.variables))
  assert _params(variables) > sizes[0] > sizes[1]


def test_vit_block_without_heads_keeps_its_residual_path(digits):
  x, _ = digits
  model, variables = checkpoints.load('vit_digits')
  masks = {'blocks.1.attn': np.zeros(4, np.float32),
           'blocks.2.attn': np.array([1, 0, 1, 0], np.float32),
           'blocks.3.mlp.fc1': np.zeros(128, np.float32),
           'patch_embed.proj': np.r_[np.zeros(3), np.ones(61)],
           # projections and logits: masked in place
           'blocks.2.attn.qkv': np.r_[np.zeros(4), np.ones(188)],
           'head': np.r_[0, np.ones(9)]}
  small = pxp_jax.prune.slim(model, variables, masks)
  _check_logits(model, variables, x, masks, small)
  assert small.model.block_heads == (4, 0, 2, 4)
  assert small.model.block_mlp_dims == (128, 128, 128, 0)
  assert small.removed == {'blocks.1.attn': 4, 'blocks.2.attn': 2,
                           'blocks.3.mlp.fc1': 128}
  assert small.kept_masked == {'patch_embed.proj': 3, 'blocks.2.attn.qkv': 4,
                               'head': 1}
  assert 'token width' in small.reasons['patch_embed.proj']
  assert 'logit' in small.reasons['head']
  flat = _flat(small.variables)
  assert flat['blocks.1.attn.qkv.kernel'].shape == (64, 0)
  assert flat['blocks.1.attn.proj.kernel'].shape == (0, 64)
  np.testing.assert_array_equal(flat['blocks.1.attn.proj.bias'],
                                _flat(variables)['blocks.1.attn.proj.bias'])
  assert flat['blocks.2.attn.qkv.kernel'].shape == (64, 96)


# Errors -----------------------------------------------------------------------


def test_bad_masks_are_errors(digits):
  x, _ = digits
  model, variables = checkpoints.load('resnet_digits')
  with pytest.raises(KeyError, match='layer9'):
    pxp_jax.prune.slim(model, variables, {'layer9.conv1': np.ones(3)})
  with pytest.raises(ValueError, match="one rate's row"):
    pxp_jax.prune.slim(model, variables, {'conv1': np.ones((2, 16))})
  with pytest.raises(ValueError, match='not 0/1'):
    pxp_jax.prune.slim(model, variables, {'conv1': np.full(16, 0.5)})


# Plain flax models ------------------------------------------------------------


class _PlainCNN(nn.Module):
  """conv-BN-ReLU, max pooling, conv-ReLU, an NHWC reshape, two dense
  layers: a chain, written with flax's modules and jax functions."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=True, name='bn')(
        nn.Conv(6, (3, 3), name='conv1')(x)))
    x = nn.max_pool(x, (4, 4), strides=(4, 4))
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), name='conv2')(x))
    x = nn.relu(nn.Dense(12, name='fc1')(x.reshape(x.shape[0], -1)))
    return nn.Dense(10, name='fc2')(x)


class _PlainResidual(nn.Module):
  """A residual ``+`` as a jax function: invisible to the structure."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='conv1')(x))
    x = x + nn.Conv(4, (3, 3), name='conv2')(x)
    return nn.Dense(10, name='fc')(x.mean((1, 2)))


class _Depthwise(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='conv1')(x))
    x = nn.Conv(4, (3, 3), feature_group_count=4, name='depthwise')(x)
    return nn.Dense(10, name='fc')(x.mean((1, 2)))


@pytest.mark.slow
def test_plain_flax_chain(digits):
  x, _ = digits
  model = _PlainCNN()
  variables = _random_variables(model, x, 3)
  masks = {'conv1': np.array([1, 0, 1, 1, 0, 1], np.float32),
           'conv2': np.array([0, 1, 1, 1, 1, 1, 0, 1], np.float32),
           'fc1': np.r_[np.zeros(5), np.ones(7)].astype(np.float32)}
  small = pxp_jax.prune.slim(model, variables, masks)
  _check_logits(model, variables, x, masks, small)
  assert small.removed == {'conv1': 2, 'conv2': 2, 'fc1': 5}
  assert small.kept_masked == {}
  flat = _flat(small.variables)
  # conv2's 6 channels over 4x4 positions, NHWC order, feed fc1
  assert flat['fc1.kernel'].shape == (16 * 6, 7)
  assert _params(small.variables) < _params(variables)


def test_plain_flax_models_that_are_not_chains(digits):
  x, _ = digits
  model = _PlainResidual()
  variables = _random_variables(model, x, 4)
  masks = {'conv1': np.array([0, 1, 1, 1], np.float32),
           'conv2': np.array([1, 0, 1, 1], np.float32)}
  with pytest.raises(NotImplementedError, match='not a chain'):
    pxp_jax.prune.slim(model, variables, masks)
  model = _Depthwise()
  variables = _random_variables(model, x, 5)
  with pytest.raises(NotImplementedError, match="'depthwise' reads 1 inputs"):
    pxp_jax.prune.slim(model, variables, {'conv1': np.array([0, 1, 1, 1])})
