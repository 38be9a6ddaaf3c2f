r"""Speed of pxp_jax.attribute against the gradient, zennit and LXT.

  python benchmarks/attribution_speed.py [--batches=1,8] [--models=resnet18,vgg16_bn,vit] [--reps=5]

Everything is measured in this one run on this machine, on the same random
weights and 224x224 inputs: the plain input gradient of the same model in JAX
(``jax.vjp``, jitted), ``attribute`` with three composites, and the PyTorch
references (zennit's composites with their canonisers for the CNNs, LXT's
efficient CP-LRP patch for torchvision's ViT; ViT-Ti/16 sizes). Times are the
median of ``--reps`` calls after a warm-up call (compilation excluded).

The floor of each composite is its own arithmetic relative to the gradient:
Epsilon needs the gradient's convolutions (1.0x), ZPlus on non-negative
inputs one extra forward conv per layer (about 1.5x), Gamma two extra forward
and two extra backward convs (about 2.5x).
"""

import contextlib
import copy
import os

# torch's OpenMP threads otherwise spin after each call and slow the JAX
# measurements that follow on the same cores.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top
import torchvision  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from pxp_jax import attribute, composites, convert, rules  # pylint: disable=g-import-not-at-top

import timing  # benchmarks/timing.py  # pylint: disable=g-import-not-at-top

_BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes.')
_MODELS = flags.DEFINE_list('models', ['resnet18', 'vgg16_bn', 'vit'],
                            'Models.')
_REPS = flags.DEFINE_integer('reps', 5, 'Timed calls per measurement.')

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
LOW, HIGH = (0 - MEAN) / STD, (1 - MEAN) / STD


def _torch_model(name):
  torch.manual_seed(0)
  if name == 'vit':  # ViT-Ti/16 sizes; LXT patches torchvision's ViT
    model = torchvision.models.VisionTransformer(
        image_size=224, patch_size=16, num_layers=12, num_heads=3,
        hidden_dim=192, mlp_dim=768)
  else:
    model = getattr(torchvision.models, name)()
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
  return model.eval()


def _ours(name, torch_model):
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  if name == 'vit':
    return convert.from_torchvision('vit', state, num_heads=3)
  return convert.from_torchvision(name, state)


def _composites(name):
  if name == 'vit':
    return {'cp_lrp': (composites.cp_lrp(), 1.0),
            'attn_lrp': (composites.attn_lrp(), 1.0)}
  eps = rules.epsilon()
  return {
      'epsilon': (composites.pxp_groups(eps, eps, eps, eps), 1.0),
      'epsilon_plus': (composites.epsilon_plus(), 1.5),
      'epsilon_gamma_box': (composites.epsilon_gamma_box(LOW, HIGH), 2.5),
  }


def _zennit(torch_model, name, composite_name, x, targets):
  """A zennit attribution call, hooks registered once (outside the timing)."""
  from zennit import composites as zc  # pylint: disable=g-import-not-at-top
  from zennit.attribution import Gradient  # pylint: disable=g-import-not-at-top
  from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # pylint: disable=g-import-not-at-top
  canonizers = [ResNetCanonizer() if 'resnet' in name else VGGCanonizer()]
  low = torch.tensor(LOW).view(1, 3, 1, 1).expand_as(x)
  high = torch.tensor(HIGH).view(1, 3, 1, 1).expand_as(x)
  composite = {
      'epsilon_plus': lambda: zc.EpsilonPlus(canonizers=canonizers),
      'epsilon_gamma_box': lambda: zc.EpsilonGammaBox(
          low=low, high=high, canonizers=canonizers),
  }[composite_name]()
  one_hot = torch.nn.functional.one_hot(targets, 1000).float()
  stack = contextlib.ExitStack()
  attributor = stack.enter_context(Gradient(copy.deepcopy(torch_model),
                                            composite))
  return (lambda: attributor(x, one_hot)), stack


def _lxt(torch_model, x, targets):
  """LXT's efficient CP-LRP on torchvision's ViT, patched for the call."""
  from lxt.efficient import monkey_patch  # pylint: disable=g-import-not-at-top
  from lxt.efficient.models.vit_torch import cp_LRP  # pylint: disable=g-import-not-at-top
  monkey_patch(torchvision.models.vision_transformer, cp_LRP, verbose=False)

  def call():
    inputs = x.clone().requires_grad_()
    logits = torch_model(inputs)
    logits.gather(1, targets[:, None]).sum().backward()
    return inputs * inputs.grad

  return call


def main(argv):
  del argv
  torch.set_grad_enabled(True)
  rows = []
  print(f'devices: {jax.devices()}; torch threads: {torch.get_num_threads()}')
  for name in _MODELS.value:
    torch_model = _torch_model(name)
    model, variables = _ours(name, torch_model)
    for batch in map(int, _BATCHES.value):
      rng = np.random.default_rng(batch)
      x_nhwc = rng.normal(size=(batch, 224, 224, 3)).astype(np.float32)
      targets = rng.integers(0, 1000, size=batch)
      x = jnp.asarray(x_nhwc)
      grad_fn = jax.jit(lambda v, x: jax.vjp(
          lambda a: model.apply(v, a), x)[1](jnp.ones((x.shape[0], 1000)))[0])
      grad = timing.median_seconds(
          lambda: jax.block_until_ready(grad_fn(variables, x)), _REPS.value)
      x_torch = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
      t_torch = torch.from_numpy(targets)
      for comp_name, (composite, floor) in _composites(name).items():
        ours = timing.median_seconds(lambda: jax.block_until_ready(attribute(
            model, variables, x, jnp.asarray(targets), composite,
            check_finite=False).input), _REPS.value)
        reference = None
        if name != 'vit' and comp_name != 'epsilon':
          call, stack = _zennit(torch_model, name, comp_name, x_torch, t_torch)
          with stack:
            reference = timing.median_seconds(call, _REPS.value)
        elif name == 'vit' and comp_name == 'cp_lrp':
          reference = timing.median_seconds(_lxt(torch_model, x_torch, t_torch),
                                      _REPS.value)
        row = dict(model=name, batch=batch, composite=comp_name,
                   grad_ms=grad * 1e3, ours_ms=ours * 1e3,
                   vs_grad=ours / grad, floor=floor,
                   ref_ms=None if reference is None else reference * 1e3,
                   speedup=None if reference is None else reference / ours)
        rows.append(row)
        print(_format(row), flush=True)
  print()
  print('| model | batch | composite | gradient ms | attribute ms | x gradient '
        '| floor | reference ms | speed-up vs reference |')
  print('|---|---|---|---|---|---|---|---|---|')
  for row in rows:
    print(_format(row))


def _format(row):
  ref = '-' if row['ref_ms'] is None else f"{row['ref_ms']:.0f}"
  speed = '-' if row['speedup'] is None else f"{row['speedup']:.2f}x"
  return (f"| {row['model']} | {row['batch']} | {row['composite']} | "
          f"{row['grad_ms']:.0f} | {row['ours_ms']:.0f} | "
          f"{row['vs_grad']:.2f} | {row['floor']:.1f} | {ref} | {speed} |")


if __name__ == '__main__':
  app.run(main)
