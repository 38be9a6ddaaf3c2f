"""Smaller models on disk: slim checkpoints round-trip, the prune job's size
report and export, and the torchvision export checked against torchvision's
own ResNet and VGG modules in float64."""

import json
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
# torch before the prune job loads TensorFlow (its logs): torch's import
# after TensorFlow's crashes in triton's native libraries
import torch  # pylint: disable=g-bad-import-order
import torchvision  # pylint: disable=g-bad-import-order

import pxp_jax
from pxp_jax import checkpoints, convert, data, models
from pxp_jax.models import structure
from pxp_jax.prune import criteria, ranking

TOL = 1e-10  # float64 logits, relative to the largest


@pytest.fixture(scope='module')
def digits():
  test = data.load('digits', 'test')
  batch = next(iter(data.batches(test, data.DIGITS, 8)))
  return jnp.asarray(batch['image']), jnp.asarray(batch['label'])


def _weight_masks(model, variables, x, y, rate, unit_types=('filters',),
                  per_layer=False):
  """One rate's masks of the weight criterion."""
  found = structure.trace(model, variables, (1, *x.shape[1:]))
  units = {k: u for t in unit_types for k, u in found.units(t).items()}
  scores = criteria.get('weight').score(model, variables, x, y, units)
  rows = ranking.masks(scores, [rate], per_layer=per_layer)
  return {k: np.asarray(m[0]) for k, m in rows.items()}


def _random_variables(model, shape, seed=0):
  """Random variables with BatchNorm statistics away from the identity."""
  rng = np.random.default_rng(seed)
  tree = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  flat = flax.traverse_util.flatten_dict(tree, sep='.')
  for name, leaf in flat.items():
    if name.endswith('kernel'):
      value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
    elif name.endswith('var'):
      value = rng.uniform(0.5, 2.0, leaf.shape)
    elif name.endswith('scale'):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.normal(0, 0.2, leaf.shape)
    flat[name] = jnp.asarray(value, jnp.float32)
  return flax.traverse_util.unflatten_dict(flat, sep='.')


# Checkpoints -----------------------------------------------------------------


@pytest.mark.parametrize('name, units, attributes', [
    ('resnet_digits', ('filters',), ('widths',)),
    ('vit_digits', ('heads', 'neurons'), ('block_heads', 'block_mlp_dims')),
])
@pytest.mark.slow
def test_slim_checkpoint_round_trip(digits, tmp_path, name, units, attributes):
  x, y = digits
  model, variables = checkpoints.load(name)
  masks = _weight_masks(model, variables, x, y, 0.5, units, per_layer=True)
  small = pxp_jax.prune.slim(model, variables, masks)
  recipe = checkpoints.recipe(name)
  path = checkpoints.save_model(tmp_path / 'pruned', small.model,
                                small.variables,
                                preprocess=recipe['preprocess'])
  written = json.loads((path / 'model.json').read_text())
  assert written['model'] == recipe['model']
  assert set(attributes) <= set(written['overrides'])
  assert all(isinstance(written['overrides'][a], list) for a in attributes)
  loaded, loaded_variables = checkpoints.load(path)
  assert loaded == small.model  # widths back as tuples, the module equal
  for a in attributes:
    assert isinstance(getattr(loaded, a), tuple)
  want = np.asarray(small.model.apply(small.variables, x))
  got = np.asarray(loaded.apply(loaded_variables, x))
  np.testing.assert_array_equal(got, want)
  assert (sum(np.size(a) for a in jax.tree.leaves(loaded_variables['params']))
          < sum(np.size(a) for a in jax.tree.leaves(variables['params'])))
  with pytest.raises(FileExistsError, match='already holds a checkpoint'):
    checkpoints.save_model(path, small.model, small.variables)


# The prune job -----------------------------------------------------------------


@pytest.mark.slow
def test_prune_job_size_report_and_export(digits_dir, tmp_path):
  from experiments.configs import prune as prune_configs  # pylint: disable=g-import-not-at-top
  from pxp_jax.jobs import prune  # pylint: disable=g-import-not-at-top
  config = prune_configs.get_config('model=resnet_digits,runlocal')
  config.update(dict(data_dir=digits_dir, criteria=('lrp', 'weight'),
                     slim=('lrp', 'weight'), n_per_class=2, heatmaps=0,
                     rates=(0.0, 0.4, 0.8), export_rate=0.4))
  results = prune.prune(config, tmp_path)
  written = json.loads((tmp_path / 'results.json').read_text())
  assert written['size'] == results['size']
  model, variables = checkpoints.load('resnet_digits')
  dense = written['size']['dense']
  assert dense['parameters'] == sum(
      np.size(a) for a in jax.tree.leaves(variables['params']))
  assert written['size']['device'] == jax.devices()[0].device_kind
  rates = list(config.rates)
  for name in ('lrp', 'weight'):
    size = written['size']['criteria'][name]
    assert all(len(v) == len(rates) for v in size.values())
    assert size['parameters'][0] == dense['parameters']
    assert size['parameters_ratio'][0] == size['flops_ratio'][0] == 1
    assert np.all(np.diff(size['parameters']) <= 0)  # nested masks
    assert np.all(np.diff(size['flops']) <= 0)
    assert size['parameters'][-1] < 0.5 * dense['parameters']
    assert size['flops'][-1] < 0.8 * dense['flops']
    # every pruned unit is removed or kept zeroed
    with jax.default_device(jax.devices('cpu')[0]):
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      with ocp.StandardCheckpointer() as ckptr:
        scores = ckptr.restore(tmp_path / 'scores' / name)
    rows = ranking.masks(scores, rates)
    pruned = [sum(int((m[r] == 0).sum()) for m in rows.values())
              for r in range(len(rates))]
    assert [a + b for a, b in zip(size['removed'], size['kept_masked'])] == \
        pruned
  assert (tmp_path / 'size.png').stat().st_size > 1000

  # The export: a checkpoint folder with its provenance, read by evaluate.
  folder = tmp_path / 'pruned_0.4'
  recipe = checkpoints.recipe(folder)
  accuracy = written['criteria']['lrp']['accuracy'][rates.index(0.4)]
  assert recipe['source_checkpoint'] == 'resnet_digits'
  assert recipe['rate'] == 0.4 and recipe['criterion'] == 'lrp'
  assert recipe['accuracy'] == accuracy
  lrp = written['size']['criteria']['lrp']
  pruned_model, pruned_variables = checkpoints.load(folder)
  assert pruned_model.widths is not None
  assert sum(np.size(a) for a in jax.tree.leaves(
      pruned_variables['params'])) == lrp['parameters'][rates.index(0.4)]
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.evaluate',
       f'--checkpoints={folder}', f'--data_dir={digits_dir}', '--splits=test',
       f'--workdir={tmp_path / "evaluated"}', '--heatmaps=0'],
      capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  row, = json.loads((tmp_path / 'evaluated' / 'results.json').read_text())
  assert row['test'] == pytest.approx(accuracy, abs=1e-9)
  # The torchvision export beside it is the slim model's.
  exported = convert.read_checkpoint(folder / 'torchvision.safetensors')
  assert exported.keys() == convert.to_torchvision(
      pruned_model, pruned_variables).keys()

  # A rate off the grid and slimming an unscored criterion are refused
  # before any work.
  config.export_rate = 0.5
  with pytest.raises(ValueError, match='export_rate 0.5 is not one of'):
    prune.prune(config, tmp_path / 'other')
  config.export_rate, config.slim = 0.0, ('gradient',)
  with pytest.raises(ValueError, match=r"config.slim names \['gradient'\]"):
    prune.prune(config, tmp_path / 'other')


# The torchvision export against torchvision ------------------------------------


def _sized_like(torch_model, state) -> None:
  """Replaces (in place) every conv, BatchNorm and linear layer of
  ``torch_model`` whose shapes differ from ``state`` by one of the state's
  shapes, keeping its stride, padding and bias: torchvision's classes at a
  slim model's per-layer widths."""
  for name, module in list(torch_model.named_modules()):
    weight = state.get(f'{name}.weight')
    if weight is None or tuple(module.weight.shape) == weight.shape:
      continue
    if isinstance(module, torch.nn.Conv2d):
      new = torch.nn.Conv2d(weight.shape[1], weight.shape[0],
                            weight.shape[2:], module.stride, module.padding,
                            bias=module.bias is not None)
    elif isinstance(module, torch.nn.BatchNorm2d):
      new = torch.nn.BatchNorm2d(weight.shape[0], eps=module.eps)
    elif isinstance(module, torch.nn.Linear):
      new = torch.nn.Linear(weight.shape[1], weight.shape[0])
    else:
      raise TypeError(f'{name}: {type(module).__name__}')
    parent, _, leaf = name.rpartition('.')
    setattr(torch_model.get_submodule(parent) if parent else torch_model,
            leaf, new)


def _compare(torch_model, model, variables, x):
  """Loads the export strictly and compares float64 logits."""
  state = convert.to_torchvision(model, variables)
  torch_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                               state.items()}, strict=True)
  torch_model = torch_model.double().eval()
  x = np.asarray(x, np.float64)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(model.apply(
      jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables),
      jnp.asarray(x)))
  assert got.dtype == np.float64
  assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < TOL


def _torch_resnet18(model, state):
  """torchvision's ResNet-18 at the widths of ``state``, with the small-input
  stem (3x3 stride-1 conv, no max-pool) where ``model`` has it."""
  torch_model = torchvision.models.resnet18(num_classes=model.num_classes)
  if model.small_input:
    torch_model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    torch_model.maxpool = torch.nn.Identity()
  _sized_like(torch_model, state)
  return torch_model


@pytest.mark.slow
def test_slim_resnet_digits_export_loads_into_torchvision(digits, x64):
  del x64
  x, y = digits
  model, variables = checkpoints.load('resnet_digits')
  small = pxp_jax.prune.slim(model, variables,
                       _weight_masks(model, variables, x, y, 0.5))
  assert small.removed
  state = convert.to_torchvision(small.model, small.variables)
  # the names of torchvision's resnet18, the shapes of the slim model
  assert state.keys() == torchvision.models.resnet18().state_dict().keys()
  _compare(_torch_resnet18(small.model, state), small.model, small.variables,
           x)


@pytest.mark.slow
def test_resnet18_export_loads_into_plain_torchvision(x64, tmp_path):
  del x64
  model = models.create('resnet18', num_classes=10)
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3))
  variables = _random_variables(model, (1, 64, 64, 3))
  path = convert.save_torchvision(tmp_path / 'resnet18.npz', model, variables)
  torch_model = torchvision.models.resnet18(num_classes=10)
  torch_model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                               convert.read_checkpoint(path).items()},
                              strict=True)
  _compare(torch_model, model, variables, x)
  with pytest.raises(TypeError, match='to_big_vision'):
    convert.to_torchvision(*checkpoints.load('vit_digits'))
  with pytest.raises(ValueError, match='.safetensors or .npz'):
    convert.save_torchvision(tmp_path / 'resnet18.pth', model, variables)


@pytest.mark.parametrize('rate', [0.0, 0.5])
@pytest.mark.slow
def test_vgg_export_loads_into_torchvision(digits, x64, rate):
  del x64
  x, y = digits
  model = models.create('vgg_tiny', num_classes=10)
  variables = _random_variables(model, (1, 32, 32, 3))
  masks = _weight_masks(model, variables, x, y, rate, ('filters', 'neurons'))
  small = pxp_jax.prune.slim(model, variables, masks)
  if rate:
    assert small.model.config != model.config
  # torchvision's own builder of the feature stack takes the slim widths
  torch_model = torchvision.models.vgg.VGG(
      torchvision.models.vgg.make_layers(list(small.model.config),
                                         batch_norm=True), num_classes=10)
  torch_model.avgpool = torch.nn.AdaptiveAvgPool2d(tuple(model.pool_size))
  _sized_like(torch_model, convert.to_torchvision(small.model,
                                                  small.variables))
  _compare(torch_model, small.model, small.variables, x)
