"""Checkpoint conversion: logits against torchvision and timm with the same
weights, the big_vision layouts both ways, and loud failures.

The logits are compared in float64 on both sides (the converted float32
values cast up, torch's model in double): float32 logits of ResNet-50 or
VGG-16 carry rounding of 1e-5 and more that depends on the CPU's convolution
algorithm, so a float32 tolerance would measure the CPU as much as the
conversion. The CNNs see 56x56 crops (torchvision's adaptive pooling serves
any size; the weights and the conversion are the same) to keep float64 fast.
"""

import copy
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from pxp_jax import convert, models
import torch_twins  # pylint: disable=g-bad-import-order

# max |logit difference| / max |logit|: float64 rounding of up to ~50
# layers (about 1e-14 seen); a conversion error shows at 1e-3 or more
TOL = 1e-9


def _images(n, size, dtype=np.float64):
  """``n`` centre crops of sklearn's sample photos, ImageNet-normalised,
  NHWC ``dtype``; ``size`` < 224 subsamples the 224 crop."""
  from sklearn.datasets import load_sample_images  # ships with sklearn
  photos = load_sample_images().images
  crops = [p[101:325, 208:432] for p in photos]
  x = np.stack([crops[i % len(crops)] for i in range(n)]).astype(np.float64)
  x = (x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  return np.ascontiguousarray(x[:, ::224 // size, ::224 // size], dtype)


def _compare(name, torch_model, model, variables, x):
  """Logits of ``torch_model`` and of ``model`` with ``variables``, both in
  float64, agree to ``TOL`` relative to the largest."""
  import torch
  torch_model = copy.deepcopy(torch_model).double()
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  with jax.enable_x64(True):  # one compiled program: op by op is slower
    got = np.asarray(jax.jit(lambda v, x: model.apply(
        jax.tree.map(lambda a: a.astype(np.float64), v), x))(variables, x))
  assert got.dtype == want.dtype == np.float64
  diff = float(np.abs(got - want).max() / np.abs(want).max())
  print(f'\n{name}: max |logit diff| / max |logit| = {diff:.2e} '
        f'(max |logit| = {np.abs(want).max():.2f})')
  assert got.shape == want.shape
  assert diff <= TOL


def _randomise(torch_model, residual_scale=None):
  """Makes BatchNorm statistics and affine parameters non-trivial so folding
  them is really exercised, and perturbs every other parameter that starts
  constant (zero biases and heads, unit LayerNorm scales, a zero class token)
  so that a swapped or dropped array shows in the logits."""
  import torch
  torch_twins.randomise_batch_norms(torch_model)
  for module in torch_model.modules():
    if not isinstance(module, torch.nn.BatchNorm2d):
      for p in module.parameters(recurse=False):
        if p.numel() > 1 and bool(p.min() == p.max()):
          p.data.add_(torch.randn_like(p), alpha=0.1)
  # Residual branches that add at full scale double the variance per block:
  # over ResNet-50's 16 blocks the logits reach the hundreds. Shrink the last
  # norm of each branch instead, for logits of a trained network's size.
  if residual_scale:
    for module in torch_model.modules():
      if hasattr(module, 'bn3'):
        module.bn3.weight.data.uniform_(*residual_scale)
  return torch_model.eval()


@pytest.mark.parametrize('name,batch,residual_scale', [
    ('resnet18', 2, None), ('resnet50', 2, (0.4, 0.8)), ('vgg16_bn', 1, None)])
@pytest.mark.slow
def test_torchvision_cnn_logits_match(name, batch, residual_scale):
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  torch.manual_seed(0)
  tv = _randomise(getattr(torchvision.models, name)(), residual_scale)
  model, variables = convert.from_torchvision(name, tv.state_dict())
  assert set(variables) == {'params', 'batch_stats'}
  _compare(f'torchvision {name}', tv, model, variables, _images(batch, 56))


def test_torchvision_vit_logits_match(tmp_path):
  torch = pytest.importorskip('torch')
  tv_vit = pytest.importorskip('torchvision.models.vision_transformer')
  torch.manual_seed(0)
  tv = tv_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                num_heads=2, hidden_dim=32, mlp_dim=64,
                                num_classes=10)
  tv = _randomise(tv)
  # A .pth file in a {'model': ...} envelope; every size but num_heads is
  # read from the weights.
  torch.save({'model': tv.state_dict()}, tmp_path / 'vit.pth')
  model, variables = convert.from_torchvision('vit', tmp_path / 'vit.pth',
                                              num_heads=2)
  assert (model.image_size, model.patch_size, model.depth, model.width,
          model.mlp_dim, model.num_classes) == (32, 8, 2, 32, 64, 10)
  _compare('torchvision VisionTransformer', tv, model, variables,
           _images(2, 32))
  # torchvision's own argument names work as well as ours
  same, _ = convert.from_torchvision(
      'vit', tv.state_dict(), image_size=32, patch_size=8, num_layers=2,
      num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
  assert same == model
  # errors speak the checkpoint's names
  broken = {k: v for k, v in tv.state_dict().items() if k != 'heads.head.bias'}
  with pytest.raises(convert.CheckpointMismatchError, match='heads.head.bias'):
    convert.from_torchvision('vit', broken, num_heads=2)


def _timm_vit_tiny():
  torch = pytest.importorskip('torch')
  timm = pytest.importorskip('timm')
  torch.manual_seed(0)
  return timm, _randomise(timm.create_model('vit_tiny_patch16_224',
                                            pretrained=False))


@pytest.mark.slow
def test_timm_vit_logits_match():
  _, vit = _timm_vit_tiny()
  model, variables = convert.from_timm('vit_tiny_patch16_224', vit.state_dict())
  assert (model.width, model.depth, model.num_heads) == (192, 12, 3)
  _compare('timm vit_tiny_patch16_224', vit, model, variables, _images(2, 224))


@pytest.mark.slow
def test_big_vision_npz_round_trip_through_timm(tmp_path):
  timm, vit = _timm_vit_tiny()
  model, variables = convert.from_timm('vit_tiny_patch16_224', vit.state_dict())
  path = tmp_path / 'ViT-Ti_16.npz'
  convert.to_big_vision(variables, path, num_heads=model.num_heads)
  assert not any(k.startswith('pre_logits') for k in np.load(path))

  fresh = timm.create_model('vit_tiny_patch16_224', pretrained=False).eval()
  from timm.models.vision_transformer import _load_weights
  _load_weights(fresh, str(path))
  x = _images(2, 224)
  _compare('timm vit_tiny from our .npz', fresh, model, variables, x)

  again, back = convert.from_big_vision(path)
  assert again == model
  jax.tree.map(np.testing.assert_array_equal, back, variables)


def _vit_tiny():
  """Our 32x32 ViT with seeded random variables (drawn with numpy: jitting
  flax's init costs seconds of XLA compilation even for this model)."""
  model = models.create('vit_tiny', num_classes=10)
  x = _images(2, 32, np.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  variables = traverse_util.unflatten_dict({
      path: ((path[-1] == 'scale') + 0.1 * rng.standard_normal(s.shape)
             ).astype(np.float32)
      for path, s in traverse_util.flatten_dict(shapes).items()})
  return model, variables, x


@pytest.mark.parametrize('scanned', [False, True])
def test_big_vision_layout_loads(tmp_path, scanned):
  """big_vision's layout: a params/ prefix, blocks LayerNorm_0, MHA_0,
  LayerNorm_1, MlpBlock_0, optionally scanned along a leading depth axis,
  and position embeddings without the class token's (folded into ``cls``)."""
  model, variables, x = _vit_tiny()
  convert.to_big_vision(variables, tmp_path / 'orig.npz', num_heads=2)
  orig = dict(np.load(tmp_path / 'orig.npz'))
  pos = orig.pop('Transformer/posembed_input/pos_embedding')
  bv = {'pos_embedding': pos[:, 1:], 'cls': orig.pop('cls') + pos[:, :1]}
  blocks = {}
  for k, v in orig.items():
    if k.startswith('Transformer/encoderblock_'):
      i, rest = k[len('Transformer/encoderblock_'):].split('/', 1)
      for old, new in (('MultiHeadDotProductAttention_1',
                        'MultiHeadDotProductAttention_0'),
                       ('LayerNorm_2', 'LayerNorm_1'),
                       ('MlpBlock_3', 'MlpBlock_0')):
        rest = rest.replace(old, new)
      blocks.setdefault(rest, {})[int(i)] = v
    else:
      bv[k] = v
  for rest, per_block in blocks.items():
    if scanned:
      bv[f'Transformer/encoderblock/{rest}'] = np.stack(
          [per_block[i] for i in sorted(per_block)])
    else:
      bv.update({f'Transformer/encoderblock_{i}/{rest}': v
                 for i, v in per_block.items()})
  bv = {f'params/{k}': v for k, v in bv.items()}
  bv['opt/state/mu/head/bias'] = np.zeros(1)  # outside params/: skipped
  np.savez(tmp_path / 'bv.npz', **bv)

  loaded, loaded_vars = convert.from_big_vision(tmp_path / 'bv.npz')
  assert loaded == model
  # float32: cls + pos[0] is folded and unfolded (an ulp), logits ~1
  np.testing.assert_allclose(model.apply(loaded_vars, x),
                             model.apply(variables, x), atol=1e-5)


def _timm_style(params):
  """Our ViT params named and laid out as a timm state dict (numpy)."""
  out = {}
  for path, w in traverse_util.flatten_dict(params).items():
    *modules, leaf = path
    w = np.asarray(w)
    if not modules:
      out[leaf] = w
      continue
    if leaf == 'kernel':
      w = w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T
    # contiguous: safetensors writes an array's buffer, ignoring its strides
    out['.'.join([*modules, 'bias' if leaf == 'bias' else 'weight'])] = (
        np.ascontiguousarray(w))
  return out


def test_mismatch_names_missing_unexpected_and_misshapen():
  _, variables, _ = _vit_tiny()
  state = _timm_style(variables['params'])
  del state['head.bias']
  state['blocks.1.extra.weight'] = np.zeros(3, np.float32)
  state['blocks.1.attn.proj.weight'] = np.zeros((32, 31), np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.from_timm('vit', state, num_heads=2)
  message = str(e.value)
  print('\n' + message)
  assert 'head.bias' in message and e.value.missing == ['head.bias']
  assert e.value.unexpected == ['blocks.1.extra.weight']
  assert 'blocks.1.attn.proj.weight (32, 31)' in message
  assert '(31, 32)' in message and 'expected (32, 32)' in message
  assert isinstance(e.value, ValueError)


def test_unknown_names_are_clear_errors():
  with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'"):
    convert.from_torchvision('resnet19', {})
  with pytest.raises(ValueError, match="unknown timm model 'deit_tiny"):
    convert.from_timm('deit_tiny_patch16_224', {})
  _, variables, _ = _vit_tiny()
  with pytest.raises(ValueError, match='num_heads'):
    convert.from_timm('vit', _timm_style(variables['params']))
  with pytest.raises(TypeError, match='heads'):
    convert.from_timm('vit', _timm_style(variables['params']), heads=2)


def test_files_load_without_torch(tmp_path, monkeypatch):
  from safetensors.numpy import save_file
  model, variables, x = _vit_tiny()
  state = _timm_style(variables['params'])
  save_file(state, tmp_path / 'vit.safetensors')
  np.savez(tmp_path / 'vit.npz', **{f'module.{k}': v for k, v in state.items()})
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails
  want = model.apply(variables, x)
  for path in ('vit.safetensors', 'vit.npz'):
    loaded, loaded_vars = convert.from_timm('vit', tmp_path / path, num_heads=2)
    assert loaded == model
    # float32: the same arrays through the same program, up to rounding
    np.testing.assert_allclose(loaded.apply(loaded_vars, x), want, atol=1e-6)
  # a nested {'state_dict': ...} mapping is unwrapped too
  _, nested = convert.from_timm('vit', {'state_dict': state}, num_heads=2)
  jax.tree.map(np.testing.assert_array_equal, nested, variables)
  (tmp_path / 'vit.pth').write_bytes(b'')
  with pytest.raises(ImportError, match='safetensors'):
    convert.from_timm('vit', tmp_path / 'vit.pth', num_heads=2)


def test_damaged_weight_files_are_named(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  _, variables, _ = _vit_tiny()
  state = _timm_style(variables['params'])
  save_file(state, tmp_path / 'vit.safetensors')
  np.savez(tmp_path / 'vit.npz', **state)
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
             tmp_path / 'vit.pth')
  for name in ('vit.safetensors', 'vit.npz', 'vit.pth'):
    whole = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(whole[:len(whole) // 2])  # cut short
    with pytest.raises(ValueError, match=f'cannot read .*{name} as a '
                       r'\.\w+ weights file .*complete'):
      convert.from_timm('vit', tmp_path / name, num_heads=2)
  with pytest.raises(FileNotFoundError, match='no weights file .*gone.npz'):
    convert.from_timm('vit', tmp_path / 'gone.npz', num_heads=2)
  with pytest.raises(ValueError, match='unknown checkpoint format'):
    convert.from_timm('vit', tmp_path / 'vit.h5', num_heads=2)
