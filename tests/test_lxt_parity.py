"""LRP parity with LXT, the reference implementation of AttnLRP and CP-LRP.

A small torchvision ViT with random weights is explained by LXT and by ours on
the converted weights, both in float64 (so that the stabilisers, zennit's
signed ``eps * sign(z)`` here and LXT's unsigned ``+ eps``, are negligible).
Compared: the logits, the input relevance, the relevance of every neuron of
every dense layer of the MLPs (at the layer's output, summed over tokens) and
of every attention head (at the softmax output, summed over queries and keys).

- CP-LRP: LXT's own patch map for torchvision's ViT (``lxt.efficient``), which
  follows the gradient x input convention: the relevance of a tensor ``a`` is
  ``a * a.grad`` after a backward pass of gradient 1 from the target logit,
  i.e. the initial relevance is the logit (our ``init='logit'``). The patch is
  process-global, so it is undone after the test. The attention weights are
  observed by a stand-in for torch's fused attention kernel that computes the
  same softmax(Q K^T / sqrt(d)) V explicitly.
- AttnLRP: torchvision has no AttnLRP map in LXT, so the same network is
  written here with LXT's explicit rules (``lxt.explicit.functional``), whose
  convention is that ``.grad`` is the relevance: the backward pass starts from
  relevance 1 at the target (our ``init='one_hot'``).
"""

import contextlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the LXT oracle on a torchvision ViT

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')
pytest.importorskip('lxt')

# pylint: disable=g-import-not-at-top,g-bad-import-order
import jax
import jax.numpy as jnp
import torch.nn.functional as F
from torchvision.models import vision_transformer
from lxt.efficient import monkey_patch
from lxt.efficient.models.vit_torch import cp_LRP
from lxt.explicit import functional as lf

from pxp_jax import attribute, composites, convert
# pylint: enable=g-import-not-at-top,g-bad-import-order

# max relative error, max |ours - LXT| / max |LXT|: the two stabilisers'
# conventions at eps = 1e-10 (signed and unsigned; 3e-8 seen) and float64
# rounding. The ViT (GELU, softmax, LayerNorm; no pooling or ReLU) has no
# tie or switch that rounding can flip.
TOL = 1e-6
SIZE, PATCH, LAYERS, HEADS, WIDTH, MLP, CLASSES = 32, 8, 2, 2, 32, 64, 10
BATCH = 2
TARGETS = np.array([3, 7])


def _torch_vit():
  torch.manual_seed(0)
  net = torchvision.models.VisionTransformer(
      image_size=SIZE, patch_size=PATCH, num_layers=LAYERS, num_heads=HEADS,
      hidden_dim=WIDTH, mlp_dim=MLP, num_classes=CLASSES)
  # Perturb every parameter (the head, the biases and the class token start
  # at zero) so that no relevance path is trivially empty.
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in net.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return net.double().eval()


@pytest.fixture(scope='module')
def setup():
  net = _torch_vit()
  rng = np.random.default_rng(2)
  x = rng.standard_normal((BATCH, 3, SIZE, SIZE))  # NCHW, float64
  state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
  model, variables = convert.from_torchvision(
      'vit', {k: v.numpy() for k, v in state.items()}, num_heads=HEADS)
  return net, state, x, model, variables


def _ours(model, variables, x, composite, init):
  """Our attribution in float64 (x64 only inside this call)."""
  with jax.enable_x64(True):
    variables64 = jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a), jnp.float64), variables)
    return jax.device_get(attribute(
        model, variables64, jnp.asarray(x.transpose(0, 2, 3, 1)),
        jnp.asarray(TARGETS), composite, init=init))


def _rel(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _compare(name, result, logits, inputs, neurons, heads):
  """Relative errors of input, neuron and head relevance; all <= TOL."""
  errors = {'logits': float(np.max(np.abs(result.logits - logits))),
            'input': _rel(result.input.transpose(0, 3, 1, 2), inputs)}
  errors.update({k: _rel(result.units[k], v) for k, v in neurons.items()})
  errors.update({k: _rel(result.units[k], v) for k, v in heads.items()})
  worst_neuron = max(errors[k] for k in neurons)
  worst_head = max(errors[k] for k in heads)
  print(f'\n{name}: logits abs {errors["logits"]:.2e}, input rel '
        f'{errors["input"]:.2e}, worst neuron rel {worst_neuron:.2e}, worst '
        f'head rel {worst_head:.2e}')
  bad = {k: v for k, v in errors.items() if not v <= TOL}
  assert not bad, f'{name}: errors above {TOL}: {bad}'
  # The references are not degenerate.
  assert np.max(np.abs(inputs)) > 0
  for v in list(neurons.values()) + list(heads.values()):
    assert np.max(np.abs(v)) > 0


# CP-LRP by LXT's efficient patches ------------------------------------------


@contextlib.contextmanager
def _lxt_patched(patch_map):
  """LXT's monkey patch of torch classes, undone on exit."""
  saved = {cls: {a: cls.__dict__[a] for a in ('forward', 'original_forward')
                 if a in cls.__dict__} for cls in patch_map}
  try:
    monkey_patch(vision_transformer, patch_map, verbose=False)
    yield
  finally:
    for cls, attrs in saved.items():
      for a in ('forward', 'original_forward'):
        if a in attrs:
          setattr(cls, a, attrs[a])
        elif a in cls.__dict__:
          delattr(cls, a)


@contextlib.contextmanager
def _recording_attention(store):
  """torch's fused attention replaced by the same explicit computation that
  keeps the attention weights (and their gradient) in ``store``."""
  original = F.scaled_dot_product_attention

  def explicit(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    assert attn_mask is None and not is_causal and dropout_p == 0.0
    a = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1]**-0.5, dim=-1)
    a.retain_grad()
    store.append(a)
    return a @ v

  F.scaled_dot_product_attention = explicit
  try:
    yield
  finally:
    F.scaled_dot_product_attention = original


def test_cp_lrp_matches_lxt_efficient(setup):
  net, _, x, model, variables = setup
  originals = {cls: cls.forward for cls in cp_LRP}
  attention, mlp_outputs = [], {}
  hooks = []
  for i in range(LAYERS):
    mlp = net.encoder.layers[i].mlp
    for j, name in ((0, 'fc1'), (3, 'fc2')):
      def keep(module, args, out, key=f'blocks.{i}.mlp.{name}'):
        del module, args
        out.retain_grad()
        mlp_outputs[key] = out
      hooks.append(mlp[j].register_forward_hook(keep))
  inputs = torch.tensor(x, requires_grad=True)
  try:
    with _lxt_patched(cp_LRP), _recording_attention(attention):
      assert all(cls.forward is not originals[cls] for cls in cp_LRP)
      logits = net(inputs)
      # Gradient 1 at each target logit: the initial relevance is the logit.
      logits[torch.arange(BATCH), torch.from_numpy(TARGETS)].sum().backward()
  finally:
    for h in hooks:
      h.remove()
  assert all(cls.forward is originals[cls] for cls in cp_LRP)
  assert len(attention) == LAYERS
  ref_input = (inputs * inputs.grad).detach().numpy()
  neurons = {k: (o * o.grad).sum(1).detach().numpy()
             for k, o in mlp_outputs.items()}
  heads = {f'blocks.{i}.attn': (a * a.grad).sum((2, 3)).detach().numpy()
           for i, a in enumerate(attention)}

  result = _ours(model, variables, x, composites.cp_lrp(eps=1e-10), 'logit')
  _compare('CP-LRP', result, logits.detach().numpy(), ref_input, neurons,
           heads)


# AttnLRP by LXT's explicit rules --------------------------------------------

EPS = 1e-10  # every stabiliser, ours and LXT's


class _IdentityRule(torch.autograd.Function):
  """GELU with AttnLRP's identity rule: relevance in = relevance out."""

  @staticmethod
  def forward(ctx, x):  # pylint: disable=arguments-differ
    del ctx
    return F.gelu(x)

  @staticmethod
  def backward(ctx, relevance):  # pylint: disable=arguments-differ
    del ctx
    return relevance


def _explicit_vit(state, images, attention, mlp_outputs):
  """torchvision's ViT forward with LXT's explicit rules (``.grad`` is the
  relevance); records the attention weights and the MLP layers' outputs."""
  p = lambda name: state[name]  # noqa: E731
  n = images.shape[0]
  # Patch embedding: the strided conv as a linear layer over the patches.
  patches = F.unfold(images, PATCH, stride=PATCH).transpose(1, 2)
  w = p('conv_proj.weight')
  x = lf.linear_epsilon(patches, w.reshape(w.shape[0], -1),
                        p('conv_proj.bias'), epsilon=EPS)
  x = torch.cat([p('class_token').expand(n, -1, -1), x], dim=1)
  # The position embedding takes its share, like a bias: keep x's share only.
  x = lf.add2(x, p('encoder.pos_embedding').expand_as(x), epsilon=EPS)
  head_dim = WIDTH // HEADS

  def split(t):
    return t.reshape(n, -1, HEADS, head_dim).transpose(1, 2)

  def layer_norm(t, prefix, eps=1e-6):
    return lf.layer_norm_grad_fn.apply(t, p(prefix + '.weight'),
                                       p(prefix + '.bias'), eps, EPS)

  for i in range(LAYERS):
    pre = f'encoder.layers.encoder_layer_{i}.'
    h = layer_norm(x, pre + 'ln_1')
    qkv = lf.linear_epsilon(h, p(pre + 'self_attention.in_proj_weight'),
                            p(pre + 'self_attention.in_proj_bias'),
                            epsilon=EPS)
    q, k, v = (split(t) for t in qkv.chunk(3, dim=-1))
    scores = lf.matmul(lf.mul2(q, head_dim**-0.5), k.transpose(-1, -2),
                       epsilon=EPS)
    a = lf.softmax(scores, -1)
    a.retain_grad()
    attention.append(a)
    out = lf.matmul(a, v, epsilon=EPS).transpose(1, 2).reshape(n, -1, WIDTH)
    out = lf.linear_epsilon(out, p(pre + 'self_attention.out_proj.weight'),
                            p(pre + 'self_attention.out_proj.bias'),
                            epsilon=EPS)
    x = lf.add2(x, out, epsilon=EPS)
    h = layer_norm(x, pre + 'ln_2')
    h = lf.linear_epsilon(h, p(pre + 'mlp.0.weight'), p(pre + 'mlp.0.bias'),
                          epsilon=EPS)
    h.retain_grad()
    mlp_outputs[f'blocks.{i}.mlp.fc1'] = h
    h = _IdentityRule.apply(h)
    h = lf.linear_epsilon(h, p(pre + 'mlp.3.weight'), p(pre + 'mlp.3.bias'),
                          epsilon=EPS)
    h.retain_grad()
    mlp_outputs[f'blocks.{i}.mlp.fc2'] = h
    x = lf.add2(x, h, epsilon=EPS)
  x = layer_norm(x, 'encoder.ln')
  return lf.linear_epsilon(x[:, 0], p('heads.head.weight'),
                           p('heads.head.bias'), epsilon=EPS)


def test_attn_lrp_matches_lxt_explicit(setup):
  net, state, x, model, variables = setup
  inputs = torch.tensor(x, requires_grad=True)
  attention, mlp_outputs = [], {}
  logits = _explicit_vit(state, inputs, attention, mlp_outputs)
  with torch.no_grad():
    # float64 rounding: the explicit forward is torchvision's function
    torch.testing.assert_close(logits, net(inputs), rtol=1e-10, atol=1e-10)
  # Relevance 1 at each target.
  one_hot = F.one_hot(torch.from_numpy(TARGETS), CLASSES).double()
  logits.backward(one_hot)
  ref_input = inputs.grad.numpy()
  neurons = {k: o.grad.sum(1).numpy() for k, o in mlp_outputs.items()}
  heads = {f'blocks.{i}.attn': a.grad.sum((2, 3)).numpy()
           for i, a in enumerate(attention)}

  result = _ours(model, variables, x, composites.attn_lrp(eps=EPS), 'one_hot')
  _compare('AttnLRP', result, logits.detach().numpy(), ref_input, neurons,
           heads)
