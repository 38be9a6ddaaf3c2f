"""The gradient-based pruning criteria against oracles we did not write.

Gradient, Taylor and integrated gradients of conv filters are compared with
PyTorch autograd on torchvision's ResNet-18 with the same weights (random,
BatchNorms randomised), both sides in float64: the scores are computed from
torch's gradients at each conv's output (before its BatchNorm, a forward
hook on the ``nn.Conv2d``) by the formulas of the PXP reference code
(``filterprune.py`` of seulkiyeom/LRP_pruning for gradient and Taylor,
``pxp/attribute.py`` of erfanhatefi/Pruning-by-eXplaining-in-PyTorch for
integrated gradients). The reductions of a ViT's neurons (per token) and
heads (over keys, per query) are checked on a tiny ViT against gradients
taken directly with flax's method interception. Every call scores more
samples than ``batch_size``, so the padded last batch is exercised.

Gradients jump where a max-pooling window ties or a ReLU input crosses 0, so
the ResNet's seeded inputs (and every scaled input of integrated gradients)
are checked to keep a margin from both (``ties``); the ViT has neither.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxp_jax import convert, models
from pxp_jax.models import structure
from pxp_jax.prune import criteria
import ties  # pylint: disable=g-bad-import-order
import torch_twins  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow  # the torch oracle of every criterion, in float64

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

# max relative error (to the largest score of the layer): float64 rounding
# (about 1e-14 seen), no tie to flip (margins checked)
TOL = 1e-9
SIZE, LABELS = 32, np.array([3, 917, 42])
BATCH = 2  # < len(LABELS): the last batch is padded


def _relative(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  assert np.abs(theirs).max() > 0
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _check(test, ours, theirs):
  assert set(ours) == set(theirs), set(ours) ^ set(theirs)
  errors = {k: _relative(ours[k], theirs[k]) for k in theirs}
  worst = max(errors, key=errors.get)
  print(f'\n{test}: max relative error {errors[worst]:.1e} ({worst})')
  assert errors[worst] <= TOL, errors


@pytest.fixture(scope='module')
def resnet():
  """(torch model, our model, float64 variables, NHWC inputs, filters)."""
  torch.manual_seed(0)
  torch_model = torchvision.models.resnet18(weights=None).eval()
  torch_twins.randomise_batch_norms(torch_model)
  torch_model = torch_model.double()  # float32 values, float64 arithmetic
  model, variables = convert.from_torchvision('resnet18',
                                              torch_model.state_dict())
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  x = np.random.default_rng(0).normal(size=(len(LABELS), SIZE, SIZE, 3))
  ties.check(ties.torch_gaps(torch_model, _nchw(x)))
  filters = structure.trace(model, variables, x.shape).units('filters')
  return torch_model, model, variables, x, filters


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_outputs(torch_model, x, backward, modules):
  """{path: (output, gradient)} at the outputs of ``modules`` (path ->
  module) for inputs ``x`` (NHWC), ``backward(logits)`` giving the scalar
  whose gradient is taken; both (N, C, H, W) numpy."""
  outputs = {}

  def keep(path):
    def hook(module, inputs, output):
      del module, inputs
      output.retain_grad()
      outputs[path] = output
      # a copy flows on: torchvision's in-place ReLU and residual sum would
      # change the BatchNorm outputs we read
      return output.clone()
    return hook

  handles = [m.register_forward_hook(keep(p)) for p, m in modules.items()]
  try:
    inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    backward(torch_model(inputs)).backward()
  finally:
    for handle in handles:
      handle.remove()
  return {p: (o.detach().numpy(), o.grad.numpy()) for p, o in outputs.items()}


def _convs(torch_model):
  return {p: m for p, m in torch_model.named_modules()
          if isinstance(m, torch.nn.Conv2d)}


def _norms_after_convs(torch_model):
  """Conv path -> the BatchNorm that follows it (our mask site)."""
  named = list(torch_model.named_modules())
  return {p: after for (p, m), (_, after) in zip(named, named[1:])
          if isinstance(m, torch.nn.Conv2d)
          and isinstance(after, torch.nn.BatchNorm2d)}


def _ce_mean(logits):
  """``nn.CrossEntropyLoss()`` as the 2021 reference's pruning pass uses it
  (the mean over the batch)."""
  return torch.nn.CrossEntropyLoss()(logits, torch.from_numpy(LABELS))


def _label_logits(logits):
  return logits[torch.arange(len(LABELS)), torch.from_numpy(LABELS)].sum()


def test_gradient_and_taylor_are_the_2021_reference(resnet, x64):
  """filterprune.py on one batch of all N samples: the conv output's
  gradient of the mean cross-entropy, summed over batch and space and
  divided by N*H*W (Taylor: times the output), |.| at the end. Ours is the
  same up to the common factor N^2 (the per-sample sum of the loss and of
  the samples' means), with the samples in padded batches of 2."""
  del x64
  torch_model, model, variables, x, filters = resnet
  found = _torch_outputs(torch_model, x, _ce_mean, _convs(torch_model))
  n = len(LABELS)
  for name, quantity in (('gradient', lambda a, g: g),
                         ('taylor', lambda a, g: a * g)):
    reference = {}
    for path, (a, g) in found.items():
      _, _, h, w = a.shape
      reference[path] = np.abs(quantity(a, g).sum((0, 2, 3)) / (n * h * w))
    ours = criteria.get(name).score(model, variables, x, LABELS, filters,
                                    batch_size=BATCH)
    _check(name, ours, {k: n**2 * v for k, v in reference.items()})


@pytest.mark.parametrize('name', ['gradient_logit', 'taylor_logit'])
def test_logit_variants_at_the_mask_site(resnet, x64, name):
  """The earlier definitions: the label logit's gradient at the BatchNorm's
  output, |mean over space| per sample, summed over samples."""
  del x64
  torch_model, model, variables, x, filters = resnet
  found = _torch_outputs(torch_model, x, _label_logits,
                         _norms_after_convs(torch_model))
  taylor = name.startswith('taylor')
  expected = {p: np.abs((a * g if taylor else g).mean((2, 3))).sum(0)
              for p, (a, g) in found.items()}
  ours = criteria.get(name).score(model, variables, x, LABELS, filters,
                                  batch_size=BATCH)
  _check(name, ours, expected)
  # the variants are the main classes with the earlier options
  variant, cls = criteria.get(name), (criteria.Taylor if taylor
                                      else criteria.Gradient)
  assert isinstance(variant, cls)
  assert dataclasses.asdict(variant) == dataclasses.asdict(
      cls(loss='logit', before_norm=False, abs_per_sample=True))


@pytest.mark.parametrize('form', ['reference', 'conductance'])
def test_integrated_gradients_against_torch(resnet, x64, form):
  """The reference's loop: alpha in torch.linspace(1/20, 1, 20), zero
  baseline, the label logit's gradient at each conv's output averaged over
  the steps; reference: |sum over space| per sample; conductance:
  |sum over space of (a(x) - a(0)) x the averaged gradient| per sample."""
  del x64
  torch_model, model, variables, x, filters = resnet
  convs = _convs(torch_model)
  steps = 20
  averaged = {}
  for alpha in torch.linspace(1.0 / steps, 1.0, steps, dtype=torch.float64):
    ties.check(ties.torch_gaps(torch_model, _nchw(float(alpha) * x)))
    found = _torch_outputs(torch_model, float(alpha) * x, _label_logits,
                           convs)
    for path, (_, g) in found.items():
      averaged[path] = averaged.get(path, 0) + g / steps
  if form == 'reference':
    expected = {p: np.abs(g.sum((2, 3))).sum(0) for p, g in averaged.items()}
  else:
    at_x = _torch_outputs(torch_model, x, _label_logits, convs)
    at_0 = _torch_outputs(torch_model, 0 * x, _label_logits, convs)
    expected = {p: np.abs(((at_x[p][0] - at_0[p][0]) * g).sum((2, 3))).sum(0)
                for p, g in averaged.items()}
  criterion = criteria.get('integrated_gradients', form=form)
  assert criterion.steps == steps
  ours = criterion.score(model, variables, x, LABELS, filters,
                         batch_size=BATCH)
  _check(f'integrated_gradients[{form}]', ours, expected)


def test_weight_is_the_sum_of_absolute_kernel_weights(resnet):
  torch_model, model, variables, x, filters = resnet
  ours = criteria.get('weight').score(model, variables, x, LABELS, filters)
  expected = {p: m.weight.detach().abs().sum((1, 2, 3)).numpy()
              for p, m in _convs(torch_model).items()}
  _check('weight', ours, expected)


# A tiny ViT: neurons per token, heads over queries and keys -----------------


@pytest.fixture(scope='module')
def vit():
  model = models.create('vit_tiny', num_classes=10)
  x = np.random.default_rng(1).normal(size=(3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x[:1].astype(np.float32))
  rng = np.random.default_rng(2)  # the head starts at zero: give it weights
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  head = variables['params']['head']
  head['kernel'] = rng.normal(size=head['kernel'].shape)
  found = structure.trace(model, variables, x.shape)
  units = {**found.units('neurons'), **found.units('heads')}
  labels = np.array([1, 7, 4])
  return model, variables, x, labels, units


def _direct(model, variables, x, labels, paths, loss):
  """{path: (output, gradient)} of ``loss`` ('cross_entropy' or 'logit',
  summed over samples) at the outputs of the modules ``paths``, by flax's
  method interception (not pxp_jax's taps)."""

  def run(deltas, x):
    outputs = {}

    def add(f, args, kwargs, context):
      out = f(*args, **kwargs)
      path = '.'.join(context.module.path)
      if context.method_name == '__call__' and path in paths:
        outputs[path] = out
        if deltas is not None:
          out = out + deltas[path]
      return out

    with nn.intercept_methods(add):
      logits = model.apply(variables, x)
    if loss == 'cross_entropy':
      logits = -jax.nn.log_softmax(logits)
    return logits[np.arange(len(labels)), labels].sum(), outputs

  _, outputs = run(None, x)
  zeros = {p: jnp.zeros_like(o) for p, o in outputs.items()}
  grads = jax.grad(lambda d: run(d, x)[0])(zeros)
  return {p: (np.asarray(outputs[p]), np.asarray(grads[p])) for p in paths}


def test_vit_neurons_and_heads(vit, x64):
  """Gradient and Taylor: signed means over tokens (heads: queries and
  keys), |.| of the sum over samples; integrated gradients: the reference's
  |.| per token (heads: summed over keys, |.| per query) and the
  conductance's |sum over everything| per sample."""
  del x64
  model, variables, x, labels, units = vit
  layer = {u.layer: k for k, u in units.items()}
  assert any(u.type == 'heads' for u in units.values())
  heads = lambda k: units[k].type == 'heads'  # noqa: E731
  everything = lambda k: (2, 3) if heads(k) else 1  # noqa: E731

  found = _direct(model, variables, x, labels, set(layer), 'cross_entropy')
  found = {layer[p]: v for p, v in found.items()}
  for name, quantity in (('gradient', lambda a, g: g),
                         ('taylor', lambda a, g: a * g)):
    expected = {k: np.abs(quantity(a, g).mean(everything(k)).sum(0))
                for k, (a, g) in found.items()}
    ours = criteria.get(name).score(model, variables, x, labels, units,
                                    batch_size=BATCH)
    _check(f'vit {name}', ours, expected)

  steps = 5
  averaged = {}
  for alpha in np.arange(1, steps + 1) / steps:
    for p, (_, g) in _direct(model, variables, alpha * x, labels, set(layer),
                             'logit').items():
      averaged[layer[p]] = averaged.get(layer[p], 0) + g / steps
  reference = {
      k: (np.abs(g.sum(3)).sum((0, 2)) if heads(k) else np.abs(g).sum((0, 1)))
      for k, g in averaged.items()}
  at_x = _direct(model, variables, x, labels, set(layer), 'logit')
  at_0 = _direct(model, variables, 0 * x, labels, set(layer), 'logit')
  conductance = {
      k: np.abs(((at_x[units[k].layer][0] - at_0[units[k].layer][0]) * g)
                .sum(everything(k))).sum(0)
      for k, g in averaged.items()}
  for form, expected in (('reference', reference),
                         ('conductance', conductance)):
    ours = criteria.get('integrated_gradients', steps=steps, form=form).score(
        model, variables, x, labels, units, batch_size=BATCH)
    _check(f'vit integrated_gradients[{form}]', ours, expected)


def test_one_program_for_any_sample_count(vit, monkeypatch, x64):
  """The model is traced once per score call, whatever the number of
  batches; padding changes nothing."""
  del x64
  model, variables, x, labels, units = vit
  traces = []
  original = structure.trace
  monkeypatch.setattr(structure, 'trace',
                      lambda *a, **k: traces.append(1) or original(*a, **k))
  criterion = criteria.get('taylor')
  padded = criterion.score(model, variables, x, labels, units, batch_size=2)
  assert len(traces) == 1  # 2 batches, the second padded: 1 trace
  whole = criterion.score(model, variables, x, labels, units, batch_size=3)
  for k in units:
    # float64 sums of the same scores in other batches
    np.testing.assert_allclose(padded[k], whole[k], rtol=1e-12)


def test_conductance_is_the_same_before_and_after_a_batchnorm(x64):
  """A BatchNorm is affine per channel: across it a(x) - a(0) scales by its
  scale and the gradient by the inverse, so their product is unchanged."""
  del x64
  model = models.create('resnet_tiny', num_classes=10)
  x = np.random.default_rng(3).normal(size=(3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x.astype(np.float32))
  variables = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
  # BatchNorms far from the identity
  rng = np.random.default_rng(4)
  for path, value in list(_flat(variables['batch_stats']).items()):
    value[...] = (rng.uniform(0.5, 1.5, value.shape) if path.endswith('var')
                  else rng.normal(0, 0.1, value.shape))
  for path, value in _flat(variables['params']).items():
    if path.endswith('scale'):
      value[...] = rng.uniform(0.5, 1.5, value.shape)
  filters = structure.trace(model, variables, x.shape).units('filters')
  assert all(u.site != u.layer for u in filters.values())
  labels = np.array([1, 2, 3])

  def conductance(before_norm):
    criterion = criteria.get('integrated_gradients', steps=3,
                             form='conductance', before_norm=before_norm)
    return criterion.score(model, variables, x, labels, filters,
                           batch_size=BATCH)

  before, after = conductance(True), conductance(False)
  for k in filters:
    # float64 rounding: the BatchNorm's scale and its inverse cancel
    np.testing.assert_allclose(before[k], after[k], rtol=1e-10)


def _flat(tree):
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.flatten_dict(tree, sep='.')


def test_options_are_checked():
  with pytest.raises(ValueError, match='unknown loss'):
    criteria.get('gradient', loss='hinge')
  with pytest.raises(ValueError, match='unknown form'):
    criteria.get('integrated_gradients', form='path')
  with pytest.raises(ValueError, match='steps'):
    criteria.get('integrated_gradients', steps=0)
  assert set(criteria.CRITERIA) < set(criteria.REGISTRY)
  assert {'gradient_logit', 'taylor_logit'} <= set(criteria.REGISTRY)
