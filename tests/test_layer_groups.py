"""PXP's layer groups are the reference's, by stage.

The expected lists are the layer names of the composites of the PXP reference
code (Hatefi et al., 2024; its ``get_NameMapComposite``), written out here in
torchvision's and timm's names, which are our module paths.
"""

import pytest

from pxp_jax import composites, models


def _names(prefix, indices):
  return [f'{prefix}.{i}' for i in indices]


VGG16_BN = dict(low=_names('features', [0, 3, 7, 10]),
                middle=_names('features', [14, 17, 20, 24, 27]),
                high=_names('features', [30, 34, 37, 40]),
                fc=_names('classifier', [0, 3, 6]))
VGG16 = dict(low=_names('features', [0, 2, 5, 7]),
             middle=_names('features', [10, 12, 14, 17, 19]),
             high=_names('features', [21, 24, 26, 28]),
             fc=_names('classifier', [0, 3, 6]))


def _resnet_stage(stage, blocks, convs, downsample):
  names = []
  for b in range(blocks):
    names += [f'layer{stage}.{b}.conv{c}' for c in range(1, convs + 1)]
    if b == 0 and downsample:
      names.append(f'layer{stage}.0.downsample.0')
  return names


RESNET18 = dict(
    low=['conv1', *_resnet_stage(1, 2, 2, False)],
    middle=[*_resnet_stage(2, 2, 2, True), *_resnet_stage(3, 2, 2, True)],
    high=_resnet_stage(4, 2, 2, True), fc=['fc'])
RESNET50 = dict(
    low=['conv1', *_resnet_stage(1, 3, 3, True)],
    middle=[*_resnet_stage(2, 4, 3, True), *_resnet_stage(3, 6, 3, True)],
    high=_resnet_stage(4, 3, 3, True), fc=['fc'])


def _vit_blocks(blocks):
  return [f'blocks.{i}.{layer}' for i in blocks
          for layer in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')]


# The reference leaves the patch embedding to the gradient; ours puts it in
# the low group (it carries no units and only shapes input heatmaps).
VIT_B16 = dict(low=['patch_embed.proj', *_vit_blocks(range(0, 3))],
               middle=_vit_blocks(range(3, 9)),
               high=_vit_blocks(range(9, 12)), fc=['head'])
VIT_L16 = dict(low=['patch_embed.proj', *_vit_blocks(range(0, 6))],
               middle=_vit_blocks(range(6, 18)),
               high=_vit_blocks(range(18, 24)), fc=['head'])


@pytest.mark.parametrize('name,overrides,expected', [
    ('vgg16_bn', {}, VGG16_BN),
    ('vgg16', {}, VGG16),
    ('resnet18', {}, RESNET18),
    ('resnet50', {}, RESNET50),
    ('vit_b16', {}, VIT_B16),
    ('vit_b16', dict(depth=24, width=64, num_heads=4, mlp_dim=64), VIT_L16),
])
@pytest.mark.slow
def test_groups_are_the_reference_stages(name, overrides, expected):
  model = models.create(name, num_classes=10, **overrides)
  groups = composites.layer_groups(model)
  assert {g: sorted(v) for g, v in groups.items()} == {
      g: sorted(v) for g, v in expected.items()}
  low, middle, high = (len(expected[g]) for g in ('low', 'middle', 'high'))
  print(f'{name}: {low}/{middle}/{high}')


def test_fractions_cut_the_layers_in_call_order_instead():
  model = models.create('resnet18', num_classes=10)
  groups = composites.layer_groups(model, boundaries=(1 / 3, 2 / 3))
  assert [len(groups[g]) for g in ('low', 'middle', 'high')] == [7, 7, 6]
  assert groups['low'][0] == 'conv1' and groups['high'][-1] == 'layer4.1.conv2'
  # The composites follow the same groups; an empty tuple means stages.
  assert composites.from_json({'preset': 'pxp_groups',
                               'args': {'boundaries': []}}).selects[-1] \
      .boundaries is None


def test_a_model_without_stages_is_cut_by_order():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Plain(nn.Module):

    @nn.compact
    def __call__(self, x):
      for i in range(6):
        x = nn.relu(nn.Conv(4, (3, 3), name=f'conv{i}')(x))
      return nn.Dense(3, name='out')(x.mean((1, 2)))

  groups = composites.layer_groups(Plain())
  assert groups == {'low': ['conv0', 'conv1'], 'middle': ['conv2', 'conv3'],
                    'high': ['conv4', 'conv5'], 'fc': ['out']}
