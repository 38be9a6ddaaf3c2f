"""Training configs: ``--config=train:model=NAME``.

NAME is a recipe below (``resnet_digits``, ``vit_digits``); append
``,runlocal`` for a two-epoch smoke run.
"""

import ml_collections

from pxp_jax.experiments.configs.options import parse

DIGITS_PREPROCESS = dict(resize_size=32, crop_size=32, mean=(0.5, 0.5, 0.5),
                         std=(0.5, 0.5, 0.5))

RECIPES = {
    # ResNet-18 with a 3x3 stem and a quarter of the width, 32x32 digits.
    'resnet_digits': dict(
        model='resnet18_small', model_overrides={}, optimizer='sgd',
        learning_rate=0.1, momentum=0.9, weight_decay=5e-4, num_epochs=30,
        warmup_epochs=2, batch_size=64),
    # A 4-block, 64-wide ViT with 4 heads on 4x4 patches of the 32x32 digits.
    'vit_digits': dict(
        model='vit_small_input',
        model_overrides=dict(width=64, depth=4, num_heads=4, mlp_dim=128),
        optimizer='adamw',
        learning_rate=1e-3, momentum=0.0, weight_decay=0.05, num_epochs=100,
        warmup_epochs=5, batch_size=64),
}


def get_config(arg: str = 'model=resnet_digits') -> ml_collections.ConfigDict:
  """The config for ``arg`` = ``model=NAME[,runlocal]``."""
  options = parse(arg, model='resnet_digits', runlocal=False)
  name = options.model
  if name not in RECIPES:
    raise ValueError(f'unknown training recipe {name!r}; known: '
                     f'{", ".join(sorted(RECIPES))}')
  config = ml_collections.ConfigDict(dict(
      name=name, dataset='digits', data_dir='', num_classes=10,
      splits=dict(train='train', validation='validation', test='test'),
      preprocess=DIGITS_PREPROCESS, seed=0, eval_batch_size=256,
      augment_shift=2, label_smoothing=0.0,
      tensorboard=True,  # clu metric writers in workdir/tensorboard
      mesh=dict(data=-1, rows=1),  # data-parallel over every device
      **RECIPES[name]))
  if options.runlocal:
    config.num_epochs = 2
    config.warmup_epochs = 0
  return config
