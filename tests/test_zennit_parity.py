"""LRP parity with zennit, the reference implementation of the rules.

The same torchvision model (random weights, randomised BatchNorms) is
explained by zennit's composites, with zennit's canonisers, and by ours on the
converted weights. Compared: the logits, the input relevance and the relevance
of every filter of every conv (at the conv's output after its BatchNorm,
summed over space) and of every dense neuron.

zennit's convention is that the gradient at a tensor is its relevance, so its
per-layer relevance is read with tensor hooks on the layers' outputs while
its composite is active.

Both sides run in float64 on inputs with a little seeded noise: LRP is
discontinuous at max-pooling ties, so in float32 one window whose two
largest values differ by an ulp sends relevance to different pixels on
different CPUs. In float64 the two implementations agree to about 1e-14, and
every test checks (``ties``) that no pooling window or ReLU input of its
seeded inputs comes within 1e-10 of a tie, so no rounding can flip one.
"""

import copy
import time

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the zennit oracle on full-size torchvision models

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
pytest.importorskip('zennit')

# pylint: disable=g-import-not-at-top,g-bad-import-order
from zennit import composites as zc
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from pxp_jax import attribute, composites, convert
import ties  # pylint: disable=g-bad-import-order
import torch_twins  # pylint: disable=g-bad-import-order
# pylint: enable=g-import-not-at-top,g-bad-import-order

# Max relative error of relevances, max abs error of logits: float64
# rounding of sums over ~20 layers (1e-14 or less seen), with no tie to flip.
TOL = 1e-8
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# The bounds of ImageNet-normalised images, per channel (for ZBox).
LOW = (0 - MEAN) / STD
HIGH = (1 - MEAN) / STD

# Small inputs keep the suite fast; torchvision's adaptive average pooling
# serves any size (VGG's 1x1 feature map is spread over its 7x7 grid).
MODELS = {
    'resnet18': dict(size=64, batch=2, canonizer=ResNetCanonizer),
    'vgg16_bn': dict(size=32, batch=1, canonizer=VGGCanonizer),
}


def _zennit_composite(name, canonizer):
  kwargs = dict(epsilon=1e-6, stabilizer=1e-6, canonizers=[canonizer()])
  if name == 'epsilon_plus':
    return zc.EpsilonPlus(**kwargs)
  if name == 'epsilon_alpha2_beta1':
    return zc.EpsilonAlpha2Beta1(**kwargs)
  return zc.EpsilonGammaBox(low=torch.from_numpy(LOW).view(1, 3, 1, 1),
                            high=torch.from_numpy(HIGH).view(1, 3, 1, 1),
                            gamma=0.25, **kwargs)


def _our_composite(name):
  if name == 'epsilon_plus':
    return composites.epsilon_plus(eps=1e-6, stabilizer=1e-6)
  if name == 'epsilon_alpha2_beta1':
    return composites.epsilon_alpha2_beta1(eps=1e-6, stabilizer=1e-6)
  return composites.epsilon_gamma_box(LOW, HIGH, gamma=0.25, eps=1e-6,
                                      stabilizer=1e-6)


def _images(n, size):
  """``n`` of sklearn's sample photos: a 256x256 crop, block-averaged down to
  ``size``, with seeded noise of 1/255 (flat regions otherwise give exact
  max-pooling ties), ImageNet-normalised; NHWC float64 (inside [LOW,
  HIGH])."""
  from sklearn.datasets import load_sample_images  # ships with sklearn
  photos = load_sample_images().images
  rng = np.random.default_rng(0)
  k = 256 // size
  out = []
  for i in range(n):
    crop = photos[i % len(photos)][85:341, 192:448].astype(np.float64) / 255
    crop = crop.reshape(size, k, size, k, 3).mean(axis=(1, 3))
    crop = np.clip(crop + rng.uniform(-1, 1, crop.shape) / 255, 0, 1)
    out.append((crop - MEAN) / STD)
  return np.stack(out)


def _torch_model(name):
  """torchvision's ``name`` with seeded random weights and BatchNorms whose
  statistics and affine parameters are far from the identity."""
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None).eval()
  torch_twins.randomise_batch_norms(model)
  for module in model.modules():  # shrink residual branches: moderate logits
    if isinstance(module, torchvision.models.resnet.BasicBlock):
      module.bn2.weight.data.uniform_(0.4, 0.8)
  # float32 values (what convert reads) computed in float64
  return model.double()


@pytest.fixture(scope='module', params=list(MODELS))
def setup(request):
  """(name, torch model, our model, our variables, NHWC inputs, targets,
  torch logits), built once per model."""
  name = request.param
  spec = MODELS[name]
  torch_model = _torch_model(name)
  # converted before zennit sees the model
  model, variables = convert.from_torchvision(name, torch_model.state_dict())
  # convert gives float32; the comparison runs in float64 (under x64)
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  x = _images(spec['batch'], spec['size'])
  ties.check(ties.torch_gaps(torch_model, _nchw(x)))
  with torch.no_grad():
    logits = torch_model(_nchw(x)).numpy()
  # the top class, and for a second input a class with a negative logit
  targets = np.argmax(logits, -1)
  targets[1:] = np.argmin(logits[1:], -1)
  return name, torch_model, model, variables, x, targets, logits


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _for_zennit(torch_model):
  """A copy of the model for zennit, with each BatchNorm's ``eps`` moved into
  its ``running_var`` (the same function).

  zennit's ``MergeBatchNorm`` leaves a merged BatchNorm with unit variance
  but its ``eps``, so it scales by ``1 / sqrt(1 + eps)`` instead of 1: a
  relative shrink of 5e-6 per BatchNorm that here shifts zennit's logits by
  4e-5 and, where a residual sum nearly cancels, a conv's relevance by 3e-4.
  With ``eps = 0`` the canonised model computes the original one.
  """
  model = copy.deepcopy(torch_model)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_var.add_(module.eps)
      module.eps = 0.0
  return model


def _observed_layers(torch_model):
  """Layer path -> the module whose output carries that layer's relevance:
  a conv's BatchNorm if one follows it (its output is the conv's after
  canonisation), else the conv or dense layer itself."""
  named = list(torch_model.named_modules())
  out = {}
  for (path, module), (_, after) in zip(named, named[1:] + [('', None)]):
    if isinstance(module, torch.nn.Conv2d):
      out[path] = after if isinstance(after, torch.nn.BatchNorm2d) else module
    elif isinstance(module, torch.nn.Linear):
      out[path] = module
  return out


def _zennit_relevance(torch_model, x, targets, composite):
  """zennit's (logits, NHWC input relevance, {layer: (batch, units)})."""
  layers = _observed_layers(torch_model)
  logits, relevance, grads = torch_twins.zennit_relevance(
      torch_model, x, targets, composite, layers, 1000)
  units = {p: (g.sum((2, 3)) if g.ndim == 4 else g).numpy()
           for p, g in grads.items()}
  assert set(units) == set(layers), set(layers) - set(units)
  return logits, relevance, units


def _relative(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  assert np.abs(theirs).max() > 0, 'zennit gave no relevance here'
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize('composite', ['epsilon_plus', 'epsilon_alpha2_beta1',
                                       'epsilon_gamma_box'])
def test_relevance_matches_zennit(setup, composite, x64):
  del x64
  start = time.perf_counter()
  name, torch_model, model, variables, x, targets, torch_logits = setup
  # zennit's canonisers change the model in place: it gets a copy
  z_logits, z_input, z_units = _zennit_relevance(
      _for_zennit(torch_model), x, targets,
      _zennit_composite(composite, MODELS[name]['canonizer']))
  result = attribute(model, variables, x, targets, _our_composite(composite),
                     init='one_hot')

  logit_error = float(np.abs(np.asarray(result.logits) - torch_logits).max())
  zennit_logit_error = float(np.abs(z_logits - torch_logits).max())
  input_error = _relative(result.input, z_input)
  assert set(result.units) == set(z_units)
  unit_errors = {k: _relative(result.units[k], z_units[k]) for k in z_units}
  modules = dict(torch_model.named_modules())
  convs = {k: v for k, v in unit_errors.items()
           if isinstance(modules[k], torch.nn.Conv2d)}
  dense = {k: v for k, v in unit_errors.items() if k not in convs}
  worst_conv = max(convs, key=convs.get)
  worst_dense = max(dense, key=dense.get)
  print(f'\n{name} {composite}: max |logit diff| {logit_error:.1e} '
        f'(zennit\'s canonised model: {zennit_logit_error:.1e}); relative '
        f'error: input {input_error:.1e}, worst of {len(convs)} convs '
        f'{convs[worst_conv]:.1e} ({worst_conv}), worst of {len(dense)} dense '
        f'{dense[worst_dense]:.1e} ({worst_dense}); '
        f'{time.perf_counter() - start:.1f} s')
  assert logit_error <= TOL
  assert zennit_logit_error <= TOL  # the oracle explains the same function
  assert input_error <= TOL
  bad = {k: f'{v:.1e}' for k, v in unit_errors.items() if v > TOL}
  assert not bad, f'layers beyond {TOL}: {bad}'


def test_pxp_filter_ranking_matches_the_reference_procedure(x64):
  """The PXP reference's per-filter criterion, rebuilt with zennit: one
  EpsilonPlus pass per reference sample (batch 1), one-hot 1.0 at the true
  label, relevance at each conv output summed over space, absolute value,
  summed over samples; one global ranking. pxp_jax's collector must rank the
  filters the same way."""
  del x64
  from scipy.stats import spearmanr  # pylint: disable=g-import-not-at-top
  from pxp_jax import prune  # pylint: disable=g-import-not-at-top
  from pxp_jax.models import structure
  from pxp_jax.prune import criteria  # pylint: disable=g-import-not-at-top
  torch_model = _torch_model('resnet18')
  model, variables = convert.from_torchvision('resnet18',
                                              torch_model.state_dict())
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  x = _images(4, 64)
  ties.check(ties.torch_gaps(torch_model, _nchw(x)))
  labels = np.array([3, 3, 7, 7])  # two classes, two samples each
  reference = None
  for i in range(len(x)):
    _, _, units = _zennit_relevance(
        _for_zennit(torch_model), x[i:i + 1], labels[i:i + 1],
        _zennit_composite('epsilon_plus', ResNetCanonizer))
    sample = {k: np.abs(v[0]) for k, v in units.items() if k != 'fc'}
    reference = sample if reference is None else {
        k: reference[k] + sample[k] for k in reference}
  found = structure.trace(model, variables, x[:1].shape)
  filters = found.units('filters')
  ours = criteria.get('lrp', composite=_our_composite('epsilon_plus')).score(
      model, variables, x, labels, filters, batch_size=4)
  keys = sorted(filters)
  rho = spearmanr(np.concatenate([reference[k] for k in keys]),
                  np.concatenate([ours[k] for k in keys])).statistic
  print(f'Spearman rank correlation of {sum(map(len, ours.values()))} '
        f'filters: {rho:.6f}')
  # float64 scores equal to ~1e-14, so only exact or near ties among the
  # 4800 filter scores could reorder them
  assert rho >= 0.999
  rates = [0.1, 0.3, 0.5]
  flat_ref = np.concatenate([reference[k] for k in keys])
  theirs_masks, our_masks = (prune.masks(reference, rates),
                              prune.masks(ours, rates))
  for r, rate in enumerate(rates):
    theirs = np.concatenate([np.asarray(theirs_masks[k][r]) for k in keys])
    mine = np.concatenate([np.asarray(our_masks[k][r]) for k in keys])
    threshold = np.sort(flat_ref)[int(flat_ref.size * rate)]
    differ = np.flatnonzero(theirs != mine)
    print(f'rate {rate}: {differ.size} of {flat_ref.size} filters differ')
    # only near-ties at the threshold may fall on either side: the scores
    # agree to ~1e-14, so 1e-4 of the largest score is a wide margin
    assert np.all(np.abs(flat_ref[differ] - threshold)
                  <= 1e-4 * np.abs(flat_ref).max())
