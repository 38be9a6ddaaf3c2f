"""ConvNeXt: a family that is its model file and its spec.

timm's ConvNeXt with random weights is the oracle of the forward pass, of
loading (``convert.from_timm``) and of export (``convert.to_timm``); a torch
twin of the tiny ConvNeXt, written out here with zennit's rules on its convs
and linear layers and explicit modules for the rules zennit lacks, is the
oracle of the relevance, in float64. The spec drives the rest: the layer
groups, the default composites (whose LayerNorm, GELU and layer-scale rules
come from the spec), which parameters a unit owns (masks, the weight
criterion, slim) and the slimmed model.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxp_jax import attribute, composites, convert, models, prune
from pxp_jax.models import convnext, structure
from pxp_jax.models.kinds import Kind
from pxp_jax.prune import criteria
import torch_twins  # pylint: disable=g-bad-import-order

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD
# timm's constructor and keyword arguments of each registered ConvNeXt
TIMM = {'convnext_atto': ('convnext_atto', {}),
        'convnext_tiny': ('convnext_tiny', {}),
        'convnext_tiny_test': ('convnext_tiny',
                               dict(depths=(1, 1, 2, 1), dims=(8, 16, 16, 24)))}
CLASSES = 10


def _timm_model(name, seed=0):
  """timm's ``name`` with seeded random weights (no download) whose layer
  scales, norms and biases are far from their initial values, so that every
  block, norm and bias matters; float64."""
  torch.manual_seed(seed)
  constructor, kwargs = TIMM[name]
  model = timm.create_model(constructor, pretrained=False,
                            num_classes=CLASSES, **kwargs).eval()
  for path, p in model.named_parameters():
    if path.endswith('gamma'):
      p.data.uniform_(0.5, 1.5)
    elif p.ndim == 1 and 'norm' in path or path.startswith(
        ('stem.1', 'stages.1.downsample.0')) or '.downsample.0' in path:
      p.data.add_(torch.randn_like(p) * 0.1)
    elif path.endswith('bias'):
      p.data.normal_(0, 0.05)
  return model.double()


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _images(n, size, seed=0):
  return np.random.default_rng(seed).uniform(LOW, HIGH, (n, size, size, 3))


def _load(torch_model, name):
  model, variables = convert.from_timm(name, torch_model.state_dict())
  return model, jax.tree.map(lambda a: np.asarray(a, np.float64), variables)


@pytest.fixture(scope='module')
def tiny():
  """The test ConvNeXt from timm's weights, float32, and a batch."""
  torch_model = _timm_model('convnext_tiny_test')
  model, variables = convert.from_timm('convnext_tiny_test',
                                       torch_model.state_dict())
  x = _images(4, 32).astype(np.float32)
  return torch_model, model, variables, x


# The family and its registry --------------------------------------------------


def test_the_family_registers_itself():
  for name in TIMM:
    model = models.create(name, num_classes=CLASSES)
    assert isinstance(model, convnext.ConvNeXt)
    assert models.spec_for(model) is convnext.SPEC
    assert models.describe(model) == (name, {})
  assert models.describe(models.create(
      'convnext_tiny_test', block_mlp_dims=(1, 2, 3, 4, 5))) == (
          'convnext_tiny_test', {'block_mlp_dims': (1, 2, 3, 4, 5)})
  with pytest.raises(ValueError, match='depths'):
    models.create('convnext_tiny_test', depths=())
  with pytest.raises(ValueError, match='kernel_size must be odd'):
    models.create('convnext_tiny_test', kernel_size=4)
  with pytest.raises(ValueError, match='at least 32x32'):
    model = models.create('convnext_tiny_test')
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_paths_are_timms_state_dict_names(tiny):
  torch_model, _, variables, _ = tiny
  ours = {'.'.join(k) for k in flax.traverse_util.flatten_dict(
      variables['params'])}
  leaf = {'kernel': 'weight', 'scale': 'weight'}
  named = {'.'.join(k[:-1] + (leaf.get(k[-1], k[-1]),)) for k in
           (tuple(p.split('.')) for p in ours)}
  assert named == set(torch_model.state_dict())


def test_units_and_layer_groups():
  model = models.create('convnext_tiny_test', num_classes=CLASSES)
  found = structure.trace_model(model)
  units = found.units()
  types = {}
  for key, unit in units.items():
    types.setdefault(unit.type, []).append(key)
  assert types['output'] == ['head.fc']
  assert set(types) == {'filters', 'neurons', 'output'}
  assert all(k.endswith(('stem.0', 'downsample.1', 'conv_dw'))
             for k in types['filters'])
  assert all(k.endswith(('mlp.fc1', 'mlp.fc2')) for k in types['neurons'])
  assert all(units[k].spans == 'space' for k in types['neurons'])
  spec = models.spec_for(model)
  assert spec.default_units(found) == 'neurons'
  assert spec.pruning_composite(found) == 'pxp_groups'
  assert spec.heatmap_composite(found) == 'epsilon_gamma_box'
  groups = composites.layer_groups(model)
  stage = lambda i: [  # noqa: E731
      op.path for op in found.of_kind(Kind.CONV, Kind.DENSE)
      if op.path.startswith(f'stages.{i}.')]
  assert groups['low'] == ['stem.0', *stage(0)]
  assert groups['middle'] == [*stage(1), *stage(2)]
  assert groups['high'] == stage(3)
  assert groups['fc'] == ['head.fc']
  assert 'stages.1.downsample.1' in groups['middle']
  cut = composites.layer_groups(model, boundaries=(0.5, 0.9))
  linear = groups['low'] + groups['middle'] + groups['high']
  assert cut['low'] + cut['middle'] + cut['high'] == linear
  assert len(cut['low']) == -(-len(linear) // 2)  # i / n < 0.5


# timm: forward, loading, export -----------------------------------------------


@pytest.mark.parametrize('name', [
    'convnext_tiny_test',
    pytest.param('convnext_atto', marks=pytest.mark.slow),
    pytest.param('convnext_tiny', marks=pytest.mark.slow)])
def test_logits_equal_timms(name, x64):
  del x64
  torch_model = _timm_model(name)
  model, variables = _load(torch_model, name)
  assert model.conv_mlp == (name == 'convnext_atto')  # timm's 1x1 conv MLP
  x = _images(2, 64)
  with torch.no_grad():
    expected = torch_model(_nchw(x)).numpy()
  logits = np.asarray(model.apply(variables, x))
  error = float(np.abs(logits - expected).max())
  print(f'\n{name}: max |logit diff| {error:.1e} of '
        f'{np.abs(expected).max():.2f}')
  assert error <= 1e-10 * np.abs(expected).max()


def test_loading_is_loud(tiny):
  torch_model = tiny[0]
  state = {k: v.float() for k, v in torch_model.state_dict().items()}
  broken = dict(state)
  del broken['stages.2.blocks.1.gamma']
  broken['stages.0.blocks.0.mlp.fc1.weight'] = torch.zeros(5, 8)
  broken['extra.weight'] = torch.zeros(3)
  with pytest.raises(convert.CheckpointMismatchError) as error:
    convert.from_timm('convnext_tiny_test', broken)
  assert error.value.missing == ['stages.2.blocks.1.gamma']
  assert error.value.unexpected == ['extra.weight']
  assert len(error.value.mismatched) == 1
  assert 'stages.0.blocks.0.mlp.fc1.weight (5, 8)' in error.value.mismatched[0]
  # a pretrained tag is accepted, num_classes read from the head
  model, _ = convert.from_timm('convnext_tiny_test.fb_in1k', state)
  assert model.num_classes == CLASSES
  with pytest.raises(ValueError, match='convnext_atto'):
    convert.from_timm('convnext_huge_unknown', state)


@pytest.mark.parametrize('name', [
    'convnext_tiny_test',
    pytest.param('convnext_atto', marks=pytest.mark.slow)])
def test_export_round_trip_through_timm(name, x64):
  """A pruned model (pruned parameters zeroed, masks from the weight
  criterion) exported with ``to_timm`` loads into timm strictly and gives
  the masked model's logits."""
  del x64
  torch_model = _timm_model(name, seed=1)
  model, variables = _load(torch_model, name)
  x = _images(2, 64)
  found = structure.trace(model, variables, x.shape, x.dtype)
  units = found.units('neurons')
  scores = criteria.get('weight').score(model, variables, x, None, units)
  masks = {k: v[0] for k, v in prune.masks(scores, [0.4]).items()}
  pruned = dict(variables, params=prune.apply_masks(
      variables['params'], prune.param_masks(model, variables, masks, found)))
  state = convert.to_timm(model, pruned)
  assert state.keys() == torch_model.state_dict().keys()
  again = _timm_model(name, seed=2)
  again.load_state_dict({k: torch.from_numpy(np.array(v))
                         for k, v in state.items()}, strict=True)
  with torch.no_grad():
    theirs = again(_nchw(x)).numpy()
  ours = np.asarray(prune.masked_apply(model, variables, x, masks, found))
  assert np.abs(theirs - ours).max() <= 1e-10 * np.abs(ours).max()
  with pytest.raises(TypeError, match='to_timm'):
    convert.to_torchvision(model, variables)


# Pruning: the spec's unit table, sweep, slim ----------------------------------


@pytest.mark.slow
def test_masks_follow_the_spec_table(tiny):
  _, model, variables, x = tiny
  found = structure.trace(model, variables, x.shape)
  units = found.units()
  rng = np.random.default_rng(0)
  masks = {k: (rng.random(u.size) > 0.5).astype(np.float32)
           for k, u in units.items() if u.type != 'output'}
  params = flax.traverse_util.flatten_dict(
      prune.param_masks(model, variables, masks, found), sep='.')
  fc1 = 'stages.2.blocks.1.mlp.fc1'
  gone = masks[fc1] == 0
  assert np.all(params[f'{fc1}.kernel'][:, gone] == 0)
  assert np.all(params[f'{fc1}.kernel'][:, ~gone] == 1)
  assert np.all(params[f'{fc1}.bias'] == masks[fc1])
  # fc2's rows read fc1: not masked (only slim removes them)
  fc2 = 'stages.2.blocks.1.mlp.fc2'
  np.testing.assert_array_equal(params[f'{fc2}.kernel'].min(0), masks[fc2])
  dw = 'stages.1.blocks.0.conv_dw'
  np.testing.assert_array_equal(params[f'{dw}.kernel'][3, 3, 0], masks[dw])
  assert np.all(params['stages.1.blocks.0.gamma'] == 1)
  assert np.all(params['stages.1.blocks.0.norm.scale'] == 1)
  # zeroed parameters compute the masked model
  zeroed = dict(variables, params=prune.apply_masks(
      variables['params'], prune.param_masks(model, variables, masks, found)))
  np.testing.assert_allclose(
      model.apply(zeroed, x), prune.masked_apply(model, variables, x, masks),
      rtol=1e-5, atol=1e-6)
  # the weight criterion sums the weights the table gives each unit
  scores = criteria.get('weight').score(model, variables, x, None, units)
  flat = flax.traverse_util.flatten_dict(variables['params'], sep='.')
  np.testing.assert_allclose(
      scores[dw], np.abs(flat[f'{dw}.kernel']).sum((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(
      scores[fc1], np.abs(flat[f'{fc1}.kernel']).sum(0), rtol=1e-6)


@pytest.mark.slow
def test_pruning_sweep_with_the_default_composite(tiny):
  _, model, variables, x = tiny
  labels = np.arange(len(x)) % CLASSES
  found = structure.trace(model, variables, x.shape)
  spec = models.spec_for(model)
  units = found.units(spec.default_units(found))
  composite = composites.for_model(model, found=found, purpose='pruning')
  scores = criteria.get('lrp', composite=composite).score(
      model, variables, x, labels, units, batch_size=4)
  assert all(np.all(np.isfinite(s)) and np.any(s > 0) for s in scores.values())
  rates = [0.0, 0.3, 0.6]
  stacked = prune.stack({'lrp': prune.masks(scores, rates)})
  batches = [dict(image=x, label=labels)]
  accuracy = prune.sweep_accuracy(model, variables, batches, stacked, CLASSES)
  assert accuracy.shape == (len(rates),)
  expected = np.mean(np.argmax(prune.masked_apply(
      model, variables, x, {k: v[2] for k, v in stacked.items()}), -1)
                     == labels)
  assert accuracy[2] == pytest.approx(expected)


@pytest.mark.parametrize('unit_type', ['neurons', 'filters', None])
@pytest.mark.slow
def test_slim_equals_the_masked_model(tiny, unit_type):
  _, model, variables, x = tiny
  found = structure.trace(model, variables, x.shape)
  units = found.units(unit_type)
  units = {k: u for k, u in units.items() if u.type != 'output'}
  rng = np.random.default_rng(1)
  for rate in (0.3, 0.7, 1.0):
    masks = {k: (rng.random(u.size) >= rate).astype(np.float32)
             for k, u in units.items()}
    small = prune.slim(model, variables, masks)
    ref = np.asarray(prune.masked_apply(model, variables, x, masks, found))
    out = np.asarray(small.model.apply(small.variables, x))
    assert np.abs(out - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-6)
    for key, mask in masks.items():
      pruned = int((mask == 0).sum())
      assert small.removed.get(key, 0) + small.kept_masked.get(key, 0) == (
          pruned)
      if key.endswith('.mlp.fc1'):
        assert small.removed.get(key, 0) == pruned
    fc1 = [k for k in masks if k.endswith('.mlp.fc1')]
    if fc1:
      assert small.model.block_mlp_dims == tuple(
          int(masks[k].sum()) for k in fc1)
      assert sum(np.size(a) for a in jax.tree.leaves(small.variables)) < sum(
          np.size(a) for a in jax.tree.leaves(variables))
    assert all(small.reasons[k] for k in small.kept_masked)


@pytest.mark.slow
def test_a_slim_model_is_a_checkpoint(tiny, tmp_path):
  """``checkpoints.save_model`` records the slim ConvNeXt by its registry
  name and widths (``models.describe``); ``load`` rebuilds it."""
  from pxp_jax import checkpoints  # pylint: disable=g-import-not-at-top
  _, model, variables, x = tiny
  found = structure.trace(model, variables, x.shape)
  masks = {k: (np.arange(u.size) % 3 != 0).astype(np.float32)
           for k, u in found.units('neurons').items()}
  small = prune.slim(model, variables, masks)
  checkpoints.save_model(tmp_path / 'slim', small.model, small.variables,
                         preprocess=dict(crop_size=32))
  loaded, loaded_variables = checkpoints.load(tmp_path / 'slim')
  assert loaded == small.model
  np.testing.assert_allclose(loaded.apply(loaded_variables, x),
                             small.model.apply(small.variables, x),
                             rtol=1e-6, atol=1e-6)


# Relevance against zennit on a torch twin -------------------------------------


class _LayerNormIdentity(torch.nn.Module):
  """LayerNorm over the channel axis ``dim`` with its standard deviation
  computed under ``detach``: a linear map of the input (AttnLRP's identity
  on the normalisation), to which zennit's Epsilon then applies."""

  def __init__(self, width, dim, eps=1e-6):
    super().__init__()
    self.weight = torch.nn.Parameter(torch.ones(width))
    self.bias = torch.nn.Parameter(torch.zeros(width))
    self.dim, self.eps = dim, eps

  def forward(self, x):
    centred = x - x.mean(self.dim, keepdim=True)
    std = torch.sqrt((centred**2).mean(self.dim, keepdim=True) + self.eps)
    shape = [1] * x.ndim
    shape[self.dim] = -1
    return (centred / std.detach() * self.weight.view(shape)
            + self.bias.view(shape))


class _GeluIdentity(torch.autograd.Function):
  """GELU whose backward is the identity rule ``R_x = R_y x / stab(x)``
  (zennit's convention: the gradient is the relevance), with the signed
  stabiliser 1e-6 of LXT's identity rule."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return torch.nn.functional.gelu(x)

  @staticmethod
  def backward(ctx, g):
    x, = ctx.saved_tensors
    return g * x / (x + 1e-6 * torch.where(x >= 0, 1.0, -1.0).to(x))


class _Gelu(torch.nn.Module):

  def forward(self, x):
    return _GeluIdentity.apply(x)


class _LayerScale(torch.nn.Module):
  """``x * gamma`` over channels (NCHW); zennit's Pass rule on it."""

  def __init__(self, width):
    super().__init__()
    self.gamma = torch.nn.Parameter(torch.ones(width))

  def forward(self, x):
    return x * self.gamma.view(1, -1, 1, 1)


class _Block(torch.nn.Module):

  def __init__(self, width, hidden):
    super().__init__()
    from zennit.layer import Sum  # pylint: disable=g-import-not-at-top
    self.conv_dw = torch.nn.Conv2d(width, width, 7, padding=3, groups=width)
    self.norm = _LayerNormIdentity(width, -1)
    self.fc1 = torch.nn.Linear(width, hidden)
    self.act = _Gelu()
    self.fc2 = torch.nn.Linear(hidden, width)
    self.layer_scale = _LayerScale(width)
    self.residual = Sum()

  def forward(self, x):
    y = self.conv_dw(x).permute(0, 2, 3, 1)
    y = self.fc2(self.act(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
    return self.residual(torch.stack([self.layer_scale(y), x], dim=-1))


class _Twin(torch.nn.Module):
  """The tiny ConvNeXt written out for zennit: zennit rules by module type
  on its convs, linear layers, residual sums and pooling, explicit modules
  for the LayerNorm, GELU and layer-scale rules zennit lacks."""

  def __init__(self, depths, dims, classes):
    super().__init__()
    self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, dims[0], 4, 4),
                                    _LayerNormIdentity(dims[0], 1))
    self.stages = torch.nn.ModuleList()
    for i, (depth, width) in enumerate(zip(depths, dims)):
      stage = torch.nn.Module()
      stage.downsample = torch.nn.Sequential(
          _LayerNormIdentity(dims[i - 1], 1),
          torch.nn.Conv2d(dims[i - 1], width, 2, 2)) if i else None
      stage.blocks = torch.nn.ModuleList(
          [_Block(width, 4 * width) for _ in range(depth)])
      self.stages.append(stage)
    self.pool = torch.nn.AdaptiveAvgPool2d(1)
    self.norm = _LayerNormIdentity(dims[-1], -1)
    self.fc = torch.nn.Linear(dims[-1], classes)

  def forward(self, x):
    x = self.stem(x)
    for stage in self.stages:
      if stage.downsample is not None:
        x = stage.downsample(x)
      for block in stage.blocks:
        x = block(x)
    return self.fc(self.norm(self.pool(x).flatten(1)))

  def paths(self):
    """Our unit key -> the twin's module whose output is that unit's."""
    out = {'stem.0': self.stem[0], 'head.fc': self.fc}
    for i, stage in enumerate(self.stages):
      if stage.downsample is not None:
        out[f'stages.{i}.downsample.1'] = stage.downsample[1]
      for j, block in enumerate(stage.blocks):
        prefix = f'stages.{i}.blocks.{j}.'
        out[prefix + 'conv_dw'] = block.conv_dw
        out[prefix + 'mlp.fc1'] = block.fc1
        out[prefix + 'mlp.fc2'] = block.fc2
    return out


def _twin_state(timm_state):
  """timm's names -> the twin's."""
  out = {}
  for name, value in timm_state.items():
    name = name.replace('.mlp.', '.').replace('head.norm.', 'norm.')
    name = name.replace('head.fc.', 'fc.')
    if name.endswith('.gamma'):
      name = name[:-len('gamma')] + 'layer_scale.gamma'
    out[name] = value
  return out


def _zennit_relevance(twin, x, targets, composite):
  logits, relevance, grads = torch_twins.zennit_relevance(
      twin, x, targets, composite, twin.paths(), CLASSES)
  units = {}
  for path, g in grads.items():
    if isinstance(twin.paths()[path], torch.nn.Conv2d):
      units[path] = g.sum((2, 3)).numpy()
    else:  # linear layers over NHWC maps, or the head
      units[path] = g.reshape(g.shape[0], -1, g.shape[-1]).sum(1).numpy()
  return logits, relevance, units


def _zennit_composite(purpose):
  from zennit import composites as zc  # pylint: disable=g-import-not-at-top
  from zennit import rules as zr  # pylint: disable=g-import-not-at-top
  from zennit.types import Convolution  # pylint: disable=g-import-not-at-top
  ours = [(_LayerNormIdentity, zr.Epsilon(1e-6)), (_LayerScale, zr.Pass())]
  if purpose == 'heatmaps':
    return zc.EpsilonGammaBox(
        low=torch.from_numpy(LOW).view(1, 3, 1, 1),
        high=torch.from_numpy(HIGH).view(1, 3, 1, 1), gamma=0.25,
        epsilon=1e-6, stabilizer=1e-6, layer_map=ours)
  zplus = zr.ZPlus(stabilizer=1e-6, zero_params='bias')
  return zc.LayerMapComposite(layer_map=ours + zc.layer_map_base(1e-6) + [
      (Convolution, zplus), (torch.nn.Linear, zplus)])


def _relative(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  assert np.abs(theirs).max() > 0, 'zennit gave no relevance here'
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.slow
@pytest.mark.parametrize('purpose', ['heatmaps', 'pruning'])
def test_relevance_matches_zennit_on_a_torch_twin(purpose, x64):
  """The family's default composite (the spec's presets and its LayerNorm,
  GELU and layer-scale rules) against zennit on the twin, float64: logits,
  input relevance and the relevance of every filter and neuron."""
  del x64
  torch_model = _timm_model('convnext_tiny_test')
  model, variables = _load(torch_model, 'convnext_tiny_test')
  constructor, kwargs = TIMM['convnext_tiny_test']
  del constructor
  twin = _Twin(kwargs['depths'], kwargs['dims'], CLASSES).double().eval()
  twin.load_state_dict(_twin_state(torch_model.state_dict()), strict=True)
  x = _images(2, 32)
  with torch.no_grad():
    logits = torch_model(_nchw(x)).numpy()
  targets = np.argmax(logits, -1)
  targets[1:] = np.argmin(logits[1:], -1)  # a negative logit too
  composite = composites.for_model(model, LOW, HIGH, purpose=purpose)
  result = attribute(model, variables, x, targets, composite,
                     init='one_hot')
  z_logits, z_input, z_units = _zennit_relevance(
      twin, x, targets, _zennit_composite(purpose))
  logit_error = float(np.abs(np.asarray(result.logits) - logits).max())
  twin_error = float(np.abs(z_logits - logits).max())
  input_error = _relative(result.input, z_input)
  assert set(result.units) == set(z_units)
  unit_errors = {k: _relative(result.units[k], z_units[k]) for k in z_units}
  worst = max(unit_errors, key=unit_errors.get)
  entries = composite.with_family_rules(models.spec_for(model)).names
  print(f'\nconvnext_tiny_test {purpose} ({entries}): max |logit diff| '
        f'{logit_error:.1e} (twin {twin_error:.1e}); relative error: input '
        f'{input_error:.1e}, worst of {len(unit_errors)} layers '
        f'{unit_errors[worst]:.1e} ({worst})')
  assert logit_error <= 1e-10 and twin_error <= 1e-10
  assert input_error <= 1e-8
  bad = {k: f'{v:.1e}' for k, v in unit_errors.items() if v > 1e-8}
  assert not bad, bad
