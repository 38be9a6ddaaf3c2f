"""Any Flax model: plain ``flax.linen`` classifiers explained and pruned.

The models here use only flax's own modules (``nn.Conv`` including a
depthwise one, ``nn.BatchNorm``, ``nn.Dense``, ``nn.LayerNorm``,
``nn.MultiHeadDotProductAttention``, ``nn.SelfAttention``, ``nn.Dropout``) and
jax functions (``nn.relu``, ``nn.max_pool``, ``+``, ``jnp.mean``), none of
pxp_jax's layers. In the gradient x input convention
the functions follow the plain gradient, which is the rule zennit and LXT give
them: pass for ReLU and max pooling, the proportional (LRP-0) rule for sums
and means.

Oracles, in float64 on both sides, on seeded inputs checked to keep every
max-pooling window and ReLU input away from a tie (``ties``):

- CNN: zennit on a torch twin with the same weights. zennit's convention puts
  relevance in the gradient slot, so the twin's residual sum is zennit's
  ``Sum`` layer and its mean an ``AdaptiveAvgPool2d``, both with the Norm rule
  at a 1e-30 stabiliser (the proportional rule), and each BatchNorm's eps is
  moved into its running variance (zennit's MergeBatchNorm keeps the eps).
- Transformer: the same network written with LXT's explicit rules
  (``lxt.explicit.functional``; ``.grad`` is the relevance). CP-LRP as LXT
  defines it (``lxt.efficient``'s ``cp_LRP``): no relevance through Q and K,
  the plain gradient x input rule on A V; per-head relevance is the
  attention weights' relevance summed over queries and keys.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('zennit')
pytest.importorskip('lxt')

# pylint: disable=g-import-not-at-top,g-bad-import-order
import torch.nn.functional as F
from zennit import composites as zc
from zennit import layer as zl
from zennit import rules as zr
from zennit import types as zt
from zennit.canonizers import NamedMergeBatchNorm
from lxt.explicit import functional as lf

import pxp_jax
from pxp_jax import composites, prune
from pxp_jax.models import structure
from pxp_jax.lrp import rules
from pxp_jax.models import kinds
from pxp_jax.models.kinds import Kind
from pxp_jax.prune import criteria
import ties
import torch_twins
# pylint: enable=g-import-not-at-top,g-bad-import-order

pytestmark = [
    pytest.mark.slow,  # the zennit and LXT oracles on torch twins
    pytest.mark.filterwarnings(
        'ignore:SelfAttention will be deprecated:DeprecationWarning'),
]

# max |ours - oracle| / max |oracle|: float64 rounding (2e-13 or less seen),
# no tie to flip (checked in the fixtures)
TOL = 1e-8
CLASSES = 3


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


def _flat(variables, collection='params'):
  return flax.traverse_util.flatten_dict(
      flax.core.unfreeze(variables[collection]), sep='.')


def _unflat(flat):
  return flax.traverse_util.unflatten_dict(dict(flat), sep='.')


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  assert np.max(np.abs(ref)) > 0, 'the oracle gave no relevance here'
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(
      np.asarray(x).transpose(0, 3, 1, 2)))


def _t(a):
  return torch.from_numpy(np.array(a, np.float64))


# A plain Flax CNN and its torch twin -----------------------------------------


def _bn(name):
  return nn.BatchNorm(use_running_average=True, name=name)


class ResBlock(nn.Module):
  """conv-BN-ReLU-conv-BN, added to the input by a plain ``+``."""

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_bn('bn_a')(nn.Conv(4, (3, 3), name='conv_a')(x)))
    y = _bn('bn_b')(nn.Conv(4, (3, 3), name='conv_b')(y))
    return nn.relu(x + y)


class PlainCNN(nn.Module):
  """Conv-BN-ReLU, max pooling, a residual block, a depthwise conv and a
  1x1 conv without BN, the mean over space and two dense layers."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(_bn('bn1')(nn.Conv(4, (3, 3), name='conv1')(x)))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = ResBlock(name='block')(x)
    x = nn.relu(nn.Conv(4, (3, 3), feature_group_count=4, name='depthwise')(x))
    x = nn.relu(nn.Conv(5, (1, 1), name='conv4')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.relu(nn.Dense(6, name='fc')(x))
    return nn.Dense(CLASSES, name='head')(x)


CNN_FILTERS = ('conv1', 'block.conv_a', 'block.conv_b', 'depthwise', 'conv4')
CNN_BATCH_NORMS = {'conv1': 'bn1', 'block.conv_a': 'block.bn_a',
                   'block.conv_b': 'block.bn_b'}


def _variables(model, x, seed):
  """Random float64 variables of ``model`` (no initialiser runs: op-by-op
  or compiled initialisation costs seconds): kernels N(0, 1/fan_in), biases
  N(0, 0.1^2), scales U(0.5, 1.5), other parameters (class token, position
  embeddings) N(0, 0.5^2); BatchNorm means N(0, 0.1^2), variances
  U(0.5, 1.5)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(x))

  def draw(path, leaf):
    name, shape = str(path[-1].key), leaf.shape
    if name == 'kernel':
      return rng.normal(0, np.prod(shape[:-1])**-0.5, shape)
    if name in ('bias', 'mean'):
      return rng.normal(0, 0.1, shape)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0, 0.5, shape)

  return jax.tree_util.tree_map_with_path(draw, flax.core.unfreeze(shapes))


@pytest.fixture(scope='module')
def cnn():
  """(model, float64 variables, NHWC inputs in [LOW, HIGH], targets)."""
  with jax.enable_x64(True):
    model = PlainCNN()
    rng = np.random.default_rng(0)
    x = rng.uniform(LOW, HIGH, (2, 8, 8, 3))
    variables = _variables(model, x, 1)
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
  # the top class, and for the second input its lowest (negative) logit
  targets = np.array([np.argmax(logits[0]), np.argmin(logits[1])])
  ties.check(ties.torch_gaps(_torch_cnn(variables), _nchw(x)))
  return model, variables, x, targets


class TorchBlock(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.conv_a = torch.nn.Conv2d(4, 4, 3, padding=1)
    self.bn_a = torch.nn.BatchNorm2d(4)
    self.relu = torch.nn.ReLU()
    self.conv_b = torch.nn.Conv2d(4, 4, 3, padding=1)
    self.bn_b = torch.nn.BatchNorm2d(4)

  def forward(self, x):
    return self.bn_b(self.conv_b(self.relu(self.bn_a(self.conv_a(x)))))


class TorchCNN(torch.nn.Module):
  """PlainCNN in torch, with zennit's Sum for the residual ``+`` and an
  average-pooling module for the mean (zennit gives both the Norm rule)."""

  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
    self.bn1 = torch.nn.BatchNorm2d(4)
    self.relu1 = torch.nn.ReLU()
    self.pool = torch.nn.MaxPool2d(2)
    self.block = TorchBlock()
    self.sum = zl.Sum()
    self.relu2 = torch.nn.ReLU()
    self.depthwise = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    self.relu_dw = torch.nn.ReLU()
    self.conv4 = torch.nn.Conv2d(4, 5, 1)
    self.relu3 = torch.nn.ReLU()
    self.mean = torch.nn.AdaptiveAvgPool2d(1)
    self.fc = torch.nn.Linear(5, 6)
    self.relu4 = torch.nn.ReLU()
    self.head = torch.nn.Linear(6, CLASSES)

  def forward(self, x):
    x = self.pool(self.relu1(self.bn1(self.conv1(x))))
    x = self.relu2(self.sum(torch.stack([x, self.block(x)], dim=-1)))
    x = self.relu_dw(self.depthwise(x))
    x = self.mean(self.relu3(self.conv4(x))).flatten(1)
    return self.head(self.relu4(self.fc(x)))


def _torch_cnn(variables):
  """The twin with ``variables``; each BatchNorm's eps moved into its
  running variance (the same function, and zennit's merge then exact)."""
  net = TorchCNN().double().eval()
  modules = dict(net.named_modules())
  params, stats = _flat(variables), _flat(variables, 'batch_stats')
  with torch.no_grad():
    for path, module in modules.items():
      if isinstance(module, torch.nn.Conv2d):
        module.weight.copy_(_t(params[f'{path}.kernel'].transpose(3, 2, 0, 1)))
        module.bias.copy_(_t(params[f'{path}.bias']))
      elif isinstance(module, torch.nn.Linear):
        module.weight.copy_(_t(params[f'{path}.kernel'].T))
        module.bias.copy_(_t(params[f'{path}.bias']))
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.copy_(_t(params[f'{path}.scale']))
        module.bias.copy_(_t(params[f'{path}.bias']))
        module.running_mean.copy_(_t(stats[f'{path}.mean']))
        module.running_var.copy_(_t(np.asarray(stats[f'{path}.var']) + 1e-5))
        module.eps = 0.0  # flax's default eps (1e-5) is in running_var
  return net


LOW = np.array([-1.0, -1.2, -0.8])  # input bounds per channel (ZBox)
HIGH = np.array([1.0, 1.1, 0.9])
# zennit's rule for Sum and average pooling with a negligible stabiliser:
# the proportional rule that the plain gradient gives `+` and `jnp.mean`.
PROPORTIONAL = [(zl.Sum, zr.Norm(stabilizer=1e-30)),
                (zt.AvgPool, zr.Norm(stabilizer=1e-30))]
CNN_COMPOSITES = ('epsilon_plus', 'epsilon_plus_zero_bias',
                  'epsilon_alpha2_beta1', 'epsilon_gamma_box')


def _zennit_composite(name):
  kwargs = dict(epsilon=1e-6, stabilizer=1e-6, layer_map=list(PROPORTIONAL),
                canonizers=[NamedMergeBatchNorm(
                    [([conv], bn) for conv, bn in CNN_BATCH_NORMS.items()])])
  if name == 'epsilon_plus':
    return zc.EpsilonPlus(**kwargs)
  if name == 'epsilon_plus_zero_bias':
    return zc.EpsilonPlus(zero_params='bias', **kwargs)
  if name == 'epsilon_alpha2_beta1':
    return zc.EpsilonAlpha2Beta1(**kwargs)
  return zc.EpsilonGammaBox(low=_t(LOW).view(1, 3, 1, 1),
                            high=_t(HIGH).view(1, 3, 1, 1), gamma=0.25,
                            **kwargs)


def _our_composite(name):
  if name == 'epsilon_plus':
    return composites.epsilon_plus(eps=1e-6, stabilizer=1e-6)
  if name == 'epsilon_plus_zero_bias':
    return composites.epsilon_plus(eps=1e-6, stabilizer=1e-6, zero_bias=True)
  if name == 'epsilon_alpha2_beta1':
    return composites.epsilon_alpha2_beta1(eps=1e-6, stabilizer=1e-6)
  return composites.epsilon_gamma_box(LOW, HIGH, gamma=0.25, eps=1e-6,
                                      stabilizer=1e-6)


def _zennit(net, x, targets, composite):
  """zennit's (logits, NHWC input relevance, {unit key: (batch, units)}):
  a conv's relevance at its BatchNorm's output if it has one."""
  modules = dict(net.named_modules())
  observed = {key: modules[CNN_BATCH_NORMS.get(key, key)]
              for key in (*CNN_FILTERS, 'fc', 'head')}
  logits, relevance, grads = torch_twins.zennit_relevance(
      net, x, targets, composite, observed, CLASSES)
  units = {k: (g.sum((2, 3)) if g.ndim == 4 else g).numpy()
           for k, g in grads.items()}
  assert set(units) == set(observed)
  return logits, relevance, units


def _compare_with_zennit(result, zennit, label):
  z_logits, z_input, z_units = zennit
  errors = {'logits': float(np.max(np.abs(result.logits - z_logits))),
            'input': _rel(result.input, z_input)}
  errors.update({k: _rel(result.units[k], v) for k, v in z_units.items()})
  print(f'\n{label}: ' + ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
  bad = {k: v for k, v in errors.items() if not v <= TOL}
  assert not bad, f'{label}: beyond {TOL}: {bad}'
  return errors


@pytest.mark.parametrize('name', CNN_COMPOSITES)
def test_plain_cnn_matches_zennit(cnn, name):
  model, variables, x, targets = cnn
  net = _torch_cnn(variables)
  with torch.no_grad():
    torch_logits = net(_nchw(x)).numpy()
  # float64 forward passes of the same weights: rounding only
  np.testing.assert_allclose(model.apply(variables, jnp.asarray(x)),
                             torch_logits, rtol=1e-12, atol=1e-12)
  result = jax.device_get(pxp_jax.attribute(
      model, variables, jnp.asarray(x), jnp.asarray(targets),
      _our_composite(name)))
  assert result.input.dtype == np.float64
  assert set(result.units) == {*CNN_FILTERS, 'fc', 'head'}
  _compare_with_zennit(result, _zennit(net, x, targets,
                                       _zennit_composite(name)), name)


# A plain Flax transformer and its LXT twin ----------------------------------

PATCH, WIDTH, HEADS, MLP, DEPTH = 4, 8, 2, 16, 2
HEAD_DIM = WIDTH // HEADS
LN_EPS = 1e-6  # flax's LayerNorm default
EPS = 1e-15  # every stabiliser, ours (signed) and LXT's (unsigned)


class Mlp(nn.Module):
  """fc1 -> ReLU -> dropout (the identity at evaluation) -> fc2."""

  use_bias: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(MLP, use_bias=self.use_bias, name='fc1')(x))
    h = nn.Dropout(0.1, deterministic=not train, name='drop')(h)
    return nn.Dense(x.shape[-1], use_bias=self.use_bias, name='fc2')(h)


class Block(nn.Module):
  """Pre-norm block; block 0 uses MultiHeadDotProductAttention, the others
  the (deprecated) SelfAttention subclass."""

  index: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm(use_bias=self.use_bias, name='ln1')(x)
    if self.index == 0:
      h = nn.MultiHeadDotProductAttention(
          num_heads=HEADS, use_bias=self.use_bias, name='attn')(h)
    else:
      h = nn.SelfAttention(num_heads=HEADS, use_bias=self.use_bias,
                           name='attn')(h)
    x = x + h
    h = nn.LayerNorm(use_bias=self.use_bias, name='ln2')(x)
    return x + Mlp(self.use_bias, name='mlp')(h)


class PlainViT(nn.Module):
  """Patch embedding by a strided nn.Conv, a class token and position
  embeddings (or neither, and the mean over tokens), pre-norm blocks, a
  final LayerNorm and a dense head."""

  cls_token: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(WIDTH, (PATCH, PATCH), strides=(PATCH, PATCH),
                padding='VALID', use_bias=self.use_bias, name='embed')(x)
    x = x.reshape(x.shape[0], -1, WIDTH)
    if self.cls_token:
      cls = self.param('cls', nn.initializers.normal(0.5), (1, 1, WIDTH))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, WIDTH)), x],
                          axis=1)
      x = x + self.param('pos', nn.initializers.normal(0.5),
                         (1, x.shape[1], WIDTH))
    for i in range(DEPTH):
      x = Block(i, self.use_bias, name=f'block{i}')(x)
    x = nn.LayerNorm(use_bias=self.use_bias, name='norm')(x)
    x = x[:, 0] if self.cls_token else jnp.mean(x, axis=1)
    return nn.Dense(CLASSES, use_bias=self.use_bias, name='head')(x)


HEAD_KEYS = tuple(f'block{i}.attn' for i in range(DEPTH))
NEURON_KEYS = tuple(f'block{i}.mlp.{fc}' for i in range(DEPTH)
                    for fc in ('fc1', 'fc2'))


def _vit_setup(seed=0, **kwargs):
  with jax.enable_x64(True):
    model = PlainViT(**kwargs)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 8, 8, 3))
    variables = _variables(model, x, seed + 1)
    logits = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    # the MLPs' ReLUs: with EPS = 1e-15 their switch is not smoothed
    ties.check({k: ties.relu_gap(v) for k, v in ties.flax_outputs(
        model, variables, jnp.asarray(x), {'fc1'}).items()})
  targets = np.array([np.argmax(logits[0]), np.argmin(logits[1])])
  return model, variables, x, targets


@pytest.fixture(scope='module')
def vit():
  return _vit_setup()


class _ValueProduct(torch.autograd.Function):
  """``A @ V`` under CP-LRP in the explicit convention: the plain gradient
  x input of the product (as ``lxt.efficient``'s cp_LRP leaves it), i.e.
  each factor gets the full epsilon share ``R / (Y + eps)``."""

  @staticmethod
  def forward(ctx, a, v, eps):  # pylint: disable=arguments-differ
    y = a @ v
    ctx.save_for_backward(a, v, y)
    ctx.eps = eps
    return y

  @staticmethod
  def backward(ctx, relevance):  # pylint: disable=arguments-differ
    a, v, y = ctx.saved_tensors
    s = relevance / (y + ctx.eps)
    return a * (s @ v.transpose(-1, -2)), v * (a.transpose(-1, -2) @ s), None


def _explicit_vit(variables, images, *, cp=False, masks=None, record=None,
                  cls_token=True, use_bias=True):
  """PlainViT with LXT's explicit rules (``.grad`` is relevance): AttnLRP, or
  CP-LRP with ``cp``. ``masks`` (unit key -> 0/1) multiply the attention
  weights of heads and the outputs of MLP neurons; ``record`` collects the
  attention weights (pre-mask) and MLP layer outputs with their grads."""
  p = {k: _t(v) for k, v in _flat(variables).items()}
  b = (lambda name: p[name]) if use_bias else (lambda name: None)
  masks = masks or {}
  record = {} if record is None else record
  n = images.shape[0]

  def linear(t, path, kernel=None):
    kernel = p[f'{path}.kernel'] if kernel is None else kernel
    bias = b(f'{path}.bias')
    return lf.linear_epsilon(t, kernel, None if bias is None else
                             bias.reshape(-1), epsilon=EPS)

  def layer_norm(t, path):
    return lf.layer_norm_grad_fn.apply(t, p[f'{path}.scale'],
                                       b(f'{path}.bias'), LN_EPS, EPS)

  def heads(t):  # (n, T, H*D) -> (n, H, T, D)
    return t.reshape(n, -1, HEADS, HEAD_DIM).transpose(1, 2)

  patches = F.unfold(images, PATCH, stride=PATCH).transpose(1, 2)
  kernel = p['embed.kernel'].permute(3, 2, 0, 1).reshape(WIDTH, -1)
  x = linear(patches, 'embed', kernel)
  if cls_token:
    x = torch.cat([p['cls'].expand(n, -1, -1), x], dim=1)
    x = lf.add2(x, p['pos'].expand_as(x), epsilon=EPS)
  for i in range(DEPTH):
    pre = f'block{i}'
    h = layer_norm(x, f'{pre}.ln1')
    q, k, v = (heads(linear(h, f'{pre}.attn.{name}',
                            p[f'{pre}.attn.{name}.kernel'].reshape(
                                WIDTH, -1).T))
               for name in ('query', 'key', 'value'))
    if cp:  # no relevance through Q K^T; the weights are a leaf
      scores = (q.detach() * HEAD_DIM**-0.5) @ k.detach().transpose(-1, -2)
      a = F.softmax(scores, -1).detach().requires_grad_(True)
    else:
      scores = lf.matmul(lf.mul2(q, HEAD_DIM**-0.5), k.transpose(-1, -2),
                         epsilon=EPS)
      a = lf.softmax(scores, -1)
      if a.requires_grad:
        a.retain_grad()
    record[f'{pre}.attn'] = a
    if f'{pre}.attn' in masks:
      a = a * _t(masks[f'{pre}.attn']).view(1, -1, 1, 1)
    out = _ValueProduct.apply(a, v, EPS) if cp else lf.matmul(a, v,
                                                              epsilon=EPS)
    out = out.transpose(1, 2).reshape(n, -1, WIDTH)
    out = linear(out, f'{pre}.attn.out',
                 p[f'{pre}.attn.out.kernel'].reshape(-1, WIDTH).T)
    x = lf.add2(x, out, epsilon=EPS)
    h = layer_norm(x, f'{pre}.ln2')
    for fc in ('fc1', 'fc2'):
      key = f'{pre}.mlp.{fc}'
      h = linear(h, key, p[f'{key}.kernel'].T)
      if h.requires_grad:
        h.retain_grad()
      record[key] = h
      if key in masks:
        h = h * _t(masks[key])
      if fc == 'fc1':
        h = F.relu(h)
    x = lf.add2(x, h, epsilon=EPS)
  x = layer_norm(x, 'norm')
  x = x[:, 0] if cls_token else lf.mean(x, 1, False, EPS)
  return linear(x, 'head', p['head.kernel'].T)


def _lxt(variables, x, targets, cp, masks=None, **kwargs):
  """The twin's (logits, NHWC input relevance, {unit key: (batch, units)})
  from relevance 1 at each target."""
  images = _nchw(x).requires_grad_(True)
  record = {}
  logits = _explicit_vit(variables, images, cp=cp, masks=masks,
                         record=record, **kwargs)
  logits.backward(F.one_hot(torch.from_numpy(targets), CLASSES).double())
  units = {k: t.grad.sum((2, 3) if t.ndim == 4 else 1).numpy()
           for k, t in record.items()}
  return (logits.detach().numpy(),
          images.grad.numpy().transpose(0, 2, 3, 1), units)


def _lxt_composite(cp):
  return composites.cp_lrp(eps=EPS) if cp else composites.attn_lrp(eps=EPS)


def _compare_with_lxt(result, reference, label):
  ref_logits, ref_input, ref_units = reference
  errors = {'logits': float(np.max(np.abs(result.logits - ref_logits))),
            'input': _rel(result.input, ref_input)}
  errors.update({k: _rel(result.units[k], v) for k, v in ref_units.items()
                 if np.any(v)})
  print(f'\n{label}: ' + ', '.join(f'{k} {v:.1e}' for k, v in errors.items()))
  bad = {k: v for k, v in errors.items() if not v <= TOL}
  assert not bad, f'{label}: beyond {TOL}: {bad}'


@pytest.mark.parametrize('cp', [False, True], ids=['attn_lrp', 'cp_lrp'])
def test_plain_transformer_matches_lxt(vit, cp):
  model, variables, x, targets = vit
  reference = _lxt(variables, x, targets, cp)
  # float64 forward passes of the same weights: rounding only
  np.testing.assert_allclose(model.apply(variables, jnp.asarray(x)),
                             reference[0], rtol=1e-12, atol=1e-12)
  result = jax.device_get(pxp_jax.attribute(
      model, variables, jnp.asarray(x), jnp.asarray(targets),
      _lxt_composite(cp)))
  assert set(HEAD_KEYS) | set(NEURON_KEYS) <= set(result.units)
  assert result.units['block0.attn'].shape == (2, HEADS)
  _compare_with_lxt(result, reference, 'CP-LRP' if cp else 'AttnLRP')


# Units and pruning ------------------------------------------------------------


def test_units_of_plain_models(cnn, vit):
  model, variables, x, _ = cnn
  found = structure.trace(model, variables, x.shape, x.dtype)
  filters = found.units('filters')
  assert set(filters) == set(CNN_FILTERS)
  assert {k: u.site for k, u in filters.items()} == {
      **CNN_BATCH_NORMS, 'depthwise': 'depthwise', 'conv4': 'conv4'}
  assert [filters[k].size for k in CNN_FILTERS] == [4, 4, 4, 4, 5]
  assert set(found.units('neurons')) == {'fc'}
  with pytest.raises(ValueError, match='no heads'):
    found.units('heads')
  assert found.first_linear == 'conv1' and found.output_layer == 'head'

  model, variables, x, _ = vit
  found = structure.trace(model, variables, x.shape, x.dtype)
  assert set(found.units('filters')) == {'embed'}
  assert set(found.units('neurons')) == set(NEURON_KEYS)
  heads = found.units('heads')
  assert set(heads) == set(HEAD_KEYS)
  for key, unit in heads.items():
    assert (unit.size, unit.layer, unit.axis) == (HEADS, f'{key}.softmax', 1)
  assert found.output_layer == 'head'
  # dropout is the identity at evaluation: no operation, no rule needed
  assert not any('drop' in op.path for op in found.ops)
  # the attention's projections are read, never pruned
  assert found.units()['block1.attn.value'].type == 'projection'


def _all_ones(found):
  return {k: jnp.ones(u.size) for k, u in found.units().items()}


@pytest.mark.parametrize('which', ['cnn', 'vit'])
def test_masked_apply_with_ones_is_apply(cnn, vit, which):
  model, variables, x, _ = cnn if which == 'cnn' else vit
  found = structure.trace(model, variables, x.shape, x.dtype)
  ours = prune.masked_apply(model, variables, jnp.asarray(x),
                            _all_ones(found))
  # float64: a mask of ones multiplies by exactly 1
  np.testing.assert_allclose(ours, model.apply(variables, jnp.asarray(x)),
                             rtol=1e-13, atol=1e-13)


# Every filter and hidden neuron has a mask (ones: kept), so that the masked
# programs of the tests below are one compiled program.
CNN_MASKS = {'conv1': np.ones(4), 'block.conv_a': np.array([1., 0, 1, 1]),
             'block.conv_b': np.ones(4), 'depthwise': np.array([1., 1, 0, 1]),
             'conv4': np.array([0., 1, 1, 0, 1]),
             'fc': np.array([1., 1, 0, 1, 1, 1])}


def _cnn_zeroed(variables, masks):
  """The PXP reference's pruning: a filter's conv weights and bias and its
  BatchNorm's scale and shift zeroed; a neuron's weights and bias zeroed."""
  params = _flat(variables)
  for key, mask in masks.items():
    keep = np.asarray(mask)
    params[f'{key}.kernel'] = params[f'{key}.kernel'] * keep
    params[f'{key}.bias'] = params[f'{key}.bias'] * keep
    if key in CNN_BATCH_NORMS:
      bn = CNN_BATCH_NORMS[key]
      params[f'{bn}.scale'] = params[f'{bn}.scale'] * keep
      params[f'{bn}.bias'] = params[f'{bn}.bias'] * keep
  return {**variables, 'params': _unflat(params)}


def test_pruned_cnn_matches_zeroed_twin_and_zennit(cnn):
  model, variables, x, targets = cnn
  zeroed = _cnn_zeroed(variables, CNN_MASKS)
  net = _torch_cnn(zeroed)
  with torch.no_grad():
    expected = net(_nchw(x)).numpy()
  masked = prune.masked_apply(model, variables, jnp.asarray(x), CNN_MASKS)
  # float64 forward passes of the same weights: rounding only
  np.testing.assert_allclose(masked, expected, rtol=1e-12, atol=1e-12)
  assert np.max(np.abs(expected - model.apply(variables, jnp.asarray(x)))
                ) > 1e-3  # pruning changed the function

  result = jax.device_get(pxp_jax.attribute(
      model, variables, jnp.asarray(x), jnp.asarray(targets),
      _our_composite('epsilon_plus'), masks=CNN_MASKS))
  for key, mask in CNN_MASKS.items():
    assert np.all(result.units[key][:, mask == 0] == 0), key
    assert np.any(result.units[key][:, mask == 1] != 0), key
  _compare_with_zennit(result, _zennit(net, x, targets,
                                       _zennit_composite('epsilon_plus')),
                       'pruned CNN, EpsilonPlus')


def test_pruned_cnn_conserves_relevance(cnn):
  """With biases left out of the rules and negligible stabilisers, the
  layers that every path passes through after the residual block (conv4, fc,
  head) hold all the relevance, pruned or not, and the input all that reaches
  conv1. (Inside the block ZPlus drops the relevance of outputs whose inputs
  are all zero, as zennit does, so the whole chain need not sum to 1.) The
  pruned units are drawn at random (``prune.masks``, rates 0 and 0.4)."""
  model, variables, x, targets = cnn
  composite = composites.epsilon_plus(eps=1e-12, stabilizer=1e-12,
                                      zero_bias=True)
  found = structure.trace(model, variables, x.shape, x.dtype)
  units = {k: found.units()[k] for k in CNN_MASKS}
  scores = criteria.get('random', seed=1).score(model, variables, x, targets,
                                                units)
  rows = prune.masks(scores, [0.0, 0.4])
  assert sum(int((m[1] == 0).sum()) for m in rows.values()) == int(27 * 0.4)
  for r in range(2):
    # float64 masks, as in the test above: the same compiled program
    masks = {k: np.asarray(m[r], np.float64) for k, m in rows.items()}
    result = jax.device_get(pxp_jax.attribute(
        model, variables, jnp.asarray(x), jnp.asarray(targets), composite,
        masks=masks))
    for key in ('conv4', 'fc', 'head'):
      # float64; eps = 1e-12 absorbs ~1e-12 of each layer's relevance
      np.testing.assert_allclose(result.units[key].sum(-1), 1.0, rtol=0,
                                 atol=1e-9, err_msg=key)
    np.testing.assert_allclose(result.input.sum((1, 2, 3)),
                               result.units['conv1'].sum(-1), rtol=0,
                               atol=1e-9)
    for key, mask in masks.items():
      assert np.all(result.units[key][:, np.asarray(mask) == 0] == 0)
      if r == 0:
        assert np.any(result.units[key] != 0)


VIT_MASKS = {'block0.attn': np.array([0., 1]),
             'block1.attn': np.array([1., 0]),
             'block1.mlp.fc1': (np.arange(MLP) % 3 != 0).astype(np.float64)}


def _vit_value_zeroed(variables, masks):
  """A head pruned by zeroing its value projection (kernel and bias): its
  A V is then 0, as with its attention weights zeroed; an MLP neuron by
  zeroing its weights and bias."""
  params = _flat(variables)
  for key, mask in masks.items():
    keep = np.asarray(mask)
    if key in HEAD_KEYS:
      params[f'{key}.value.kernel'] = (params[f'{key}.value.kernel']
                                       * keep[None, :, None])
      params[f'{key}.value.bias'] = params[f'{key}.value.bias'] * keep[:, None]
    else:
      params[f'{key}.kernel'] = params[f'{key}.kernel'] * keep
      params[f'{key}.bias'] = params[f'{key}.bias'] * keep
  return {**variables, 'params': _unflat(params)}


def test_masked_heads_match_zeroed_attention(vit):
  model, variables, x, _ = vit
  masked = prune.masked_apply(model, variables, jnp.asarray(x),
                              {k: jnp.asarray(v) for k, v in VIT_MASKS.items()})
  with torch.no_grad():
    twin = _explicit_vit(variables, _nchw(x), masks=VIT_MASKS).numpy()
  zeroed = model.apply(_vit_value_zeroed(variables, VIT_MASKS),
                       jnp.asarray(x))
  # float64 forward passes of the same weights: rounding only
  np.testing.assert_allclose(masked, twin, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(masked, zeroed, rtol=1e-12, atol=1e-12)
  assert np.max(np.abs(masked - model.apply(variables, jnp.asarray(x)))
                ) > 1e-3  # pruning changed the function
  # one head alone
  one = prune.masked_apply(model, variables, jnp.asarray(x),
                           {'block1.attn': jnp.array([1., 0])})
  with torch.no_grad():
    expected = _explicit_vit(variables, _nchw(x),
                             masks={'block1.attn': np.array([1., 0])}).numpy()
  # float64 forward passes of the same weights: rounding only
  np.testing.assert_allclose(one, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('cp', [False, True], ids=['attn_lrp', 'cp_lrp'])
def test_pruned_transformer_matches_lxt(vit, cp):
  model, variables, x, targets = vit
  masks = {k: jnp.asarray(v) for k, v in VIT_MASKS.items()}
  result = jax.device_get(pxp_jax.attribute(
      model, variables, jnp.asarray(x), jnp.asarray(targets),
      _lxt_composite(cp), masks=masks))
  for key, mask in VIT_MASKS.items():
    assert np.all(result.units[key][:, mask == 0] == 0), key
    assert np.any(result.units[key][:, mask == 1] != 0), key
  reference = _lxt(variables, x, targets, cp, masks=VIT_MASKS)
  # the twin's pruned units hold their pre-mask relevance times 0
  for key, mask in VIT_MASKS.items():
    assert np.all(reference[2][key][:, mask == 0] == 0)
  _compare_with_lxt(result, reference,
                    ('CP-LRP' if cp else 'AttnLRP') + ', pruned')
  # the same as explaining the model with the value projections zeroed
  zeroed = jax.device_get(pxp_jax.attribute(
      model, _vit_value_zeroed(variables, VIT_MASKS), jnp.asarray(x),
      jnp.asarray(targets), _lxt_composite(cp)))
  # float64 rounding: the masked and the zeroed model compute the same
  assert _rel(result.input, zeroed.input) <= 1e-12
  for key in NEURON_KEYS:
    assert _rel(result.units[key], zeroed.units[key]) <= 1e-12, key


def test_pruned_transformer_conserves_relevance_under_cp_lrp():
  """Without biases, position embeddings or a class token (mean over
  tokens), CP-LRP conserves relevance: it all flows through the values, and
  LayerNorm's identity rule, the proportional sums and Epsilon on bias-free
  layers pass it on whole. Pruning heads and neurons (half of each layer's,
  at random) does not change that, and the twin agrees on the pruned model."""
  model, variables, x, targets = _vit_setup(seed=3, cls_token=False,
                                            use_bias=False)
  composite = composites.cp_lrp(eps=EPS)
  found = structure.trace(model, variables, x.shape, x.dtype)
  units = {**found.units('heads'), **found.units('neurons')}
  scores = criteria.get('random', seed=0).score(model, variables, x, targets,
                                                units)
  rows = prune.masks(scores, [0.0, 0.5], per_layer=True)
  assert {k: int((m[1] == 0).sum()) for k, m in rows.items()} == {
      k: u.size // 2 for k, u in units.items()}
  for r in range(2):
    masks = {k: m[r] for k, m in rows.items()}
    result = jax.device_get(pxp_jax.attribute(
        model, variables, jnp.asarray(x), jnp.asarray(targets), composite,
        masks=masks))
    # float64; eps = 1e-15 absorbs ~1e-15 of each layer's relevance
    np.testing.assert_allclose(result.input.sum((1, 2, 3)), 1.0, rtol=0,
                               atol=1e-9)
    np.testing.assert_allclose(result.units['embed'].sum(-1), 1.0, rtol=0,
                               atol=1e-9)
    for key, mask in masks.items():
      assert np.all(result.units[key][:, np.asarray(mask) == 0] == 0)
  reference = _lxt(variables, x, targets, True,
                   masks={k: np.asarray(v) for k, v in masks.items()},
                   cls_token=False, use_bias=False)
  _compare_with_lxt(result, reference, 'CP-LRP, bias-free, pruned')


def test_criteria_on_plain_transformer(vit):
  """LRP scores are the summed |relevance| (per token) of ``attribute``,
  and rank the units; weight scores of heads are the L1 norms of their
  query, key and value weights."""
  model, variables, x, targets = vit
  found = structure.trace(model, variables, x.shape, x.dtype)
  units = {**found.units('heads'), **found.units('neurons')}
  composite = composites.attn_lrp(eps=EPS)
  scores = criteria.get('lrp', composite=composite).score(
      model, variables, x, targets, units, batch_size=2)
  result = pxp_jax.attribute(model, variables, jnp.asarray(x),
                             jnp.asarray(targets), composite,
                             absolute_tokens=True)
  for key in units:
    # float64 sums of the same relevance in another order
    np.testing.assert_allclose(scores[key],
                               np.abs(result.units[key]).sum(0), rtol=1e-12)
  weights = criteria.get('weight').score(model, variables, x, targets,
                                         found.units('heads'))
  params = _flat(variables)
  for key in HEAD_KEYS:
    expected = sum(np.abs(params[f'{key}.{p}.kernel']).sum((0, 2))
                   for p in ('query', 'key', 'value'))
    # float64 sums of |weights|
    np.testing.assert_allclose(weights[key], expected, rtol=1e-12)
  # the masks of a global ranking prune the least relevant units
  rows = prune.masks(scores, [0.5])
  flat = np.concatenate([scores[k] for k in units])
  pruned = np.concatenate([np.asarray(rows[k][0]) == 0 for k in units])
  assert pruned.sum() == int(flat.size * 0.5)
  assert flat[pruned].max() <= flat[~pruned].min()


# Modules of unknown classes ---------------------------------------------------


class Swish(nn.Module):
  """An activation module pxp_jax does not know."""

  @nn.compact
  def __call__(self, x):
    return x * nn.sigmoid(x)


class SwishNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name='conv')(x)
    x = nn.Dropout(0.5, deterministic=True, name='drop')(x)
    x = Swish(name='act')(x)
    return nn.Dense(CLASSES, name='head')(jnp.mean(x, axis=(1, 2)))


class Wrapper(nn.Module):

  @nn.compact
  def __call__(self, x):
    return SwishNet(name='net')(x)


def test_unknown_leaf_module_is_an_error_naming_it():
  model = Wrapper()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3), jnp.float64)
  variables = _variables(model, x, 1)
  targets = jnp.array([0, 1])
  with pytest.raises(ValueError) as error:
    pxp_jax.attribute(model, variables, x, targets, composites.epsilon_plus())
  message = str(error.value)
  assert 'net.act' in message and 'Swish' in message
  assert 'pxp_jax.models.kinds.register' in message
  assert all(f'net.{name}' not in message for name in ('conv', 'drop', 'head'))
  # so does a criterion, with a transformer composite
  with pytest.raises(ValueError, match=r'net\.act \(Swish'):
    criteria.get('lrp', composite=composites.attn_lrp()).score(
        model, variables, x, targets,
        structure.trace(model, variables, x.shape, x.dtype).units('filters'),
        batch_size=2)

  # Declared an elementwise activation, it takes the identity rule of a
  # composite that has one (R_in = R_out, so bias-free layers conserve) ...
  kinds.register(Swish, Kind.GELU)  # Swish is this test's own class
  with pytest.raises(ValueError, match=r'net\.act \(gelu\)'):
    pxp_jax.attribute(model, variables, x, targets, composites.epsilon_plus())
  composite = composites.Composite.of([
      ('linear', composites.Select((Kind.CONV, Kind.DENSE)),
       rules.epsilon(1e-12, zero_bias=True)),
      ('activation', composites.Select((Kind.GELU,)), rules.Identity(1e-12)),
  ])
  result = pxp_jax.attribute(model, variables, x, targets, composite)
  # float64; eps = 1e-12 absorbs ~1e-12 of each layer's relevance
  np.testing.assert_allclose(result.units['net.conv'].sum(-1), 1.0, atol=1e-9)
  np.testing.assert_allclose(result.input.sum((1, 2, 3)), 1.0, atol=1e-9)
  # ... which the plain gradient (what an unchecked module would get) is not
  composite = composite.with_rule('activation', rules.Gradient())
  result = pxp_jax.attribute(model, variables, x, targets, composite)
  assert np.max(np.abs(result.units['net.conv'].sum(-1) - 1.0)) > 1e-3
