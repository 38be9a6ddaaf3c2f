"""The PXP papers' ImageNet experiments:
``--config=imagenet:job=prune,arch=resnet50,classes=3``.

``job``: ``prune`` (Yeom et al. 2021 / Hatefi et al. 2024, Table 1: every
criterion at every rate) or ``search`` (Hatefi et al. 2024, Table 2: the
optimised composite against the usual ones); ``arch``: ``vgg16``,
``vgg16_bn``, ``resnet18``, ``resnet50`` or ``vit_b16``, read from the
checkpoint folder ``<checkpoints>/<arch>`` that ``pxp-convert``
writes from torchvision's (timm's, for the ViT) ImageNet weights;
``classes``: 3, 100 or 1000, the few-class task, drawn at random with the
run's seed (which also draws the reference samples) and repeated over
``draws`` seeds, reported as the mean and its standard error.

The reference samples (10 per class) come from the train split; the search
scores its trials on a holdout of the train split disjoint from them and
reports on the official validation split, which the prune job evaluates on.
Splits of 100 or more classes are streamed, never held in memory. Append
``,runlocal`` for a smoke run (2 samples per class, 5 rates, 2 draws).
"""

import ml_collections

from pxp_jax.experiments.configs import prune as prune_configs
from pxp_jax.experiments.configs import search as search_configs
from pxp_jax.experiments.configs.options import parse

ARCHS = ('vgg16', 'vgg16_bn', 'resnet18', 'resnet50', 'vit_b16')
JOBS = {'prune': prune_configs, 'search': search_configs}
DRAWS = {3: 5, 100: 3, 1000: 1}  # repeats of each task size (1000: all)


def get_config(arg: str = 'job=prune,arch=resnet50,classes=3'
               ) -> ml_collections.ConfigDict:
  options = parse(arg, job='prune', arch='resnet50', classes=3,
                  checkpoints='ckpt', runlocal=False)
  if options.job not in JOBS:
    raise ValueError(f'unknown job {options.job!r}; use one of '
                     f'{", ".join(JOBS)}')
  if options.arch not in ARCHS:
    raise ValueError(f'unknown arch {options.arch!r}; the papers use '
                     f'{", ".join(ARCHS)}')
  if not 2 <= options.classes <= 1000:
    raise ValueError(f'classes must lie in [2, 1000], got {options.classes}')
  config = JOBS[options.job].get_config(
      f'model={options.checkpoints}/{options.arch}')
  config.dataset = 'imagenet2012'
  config.reference_split = 'train'
  config.n_per_class = 10
  config.class_draw = options.classes if options.classes < 1000 else 0
  config.draws = DRAWS.get(options.classes, 3)
  config.batch_size = 16 if options.arch == 'vit_b16' else 32
  config.eval_batch_size = 128
  config.perturbation.patch_size = 16  # 196 patches of a 224 x 224 image
  if options.job == 'prune':
    config.eval_split = 'validation'
  else:
    config.validation_split = 'train'  # a holdout disjoint from references
    config.holdout_per_class = 10
    config.test_split = 'validation'
    config.cache_eval = options.classes < 100
  if options.runlocal:
    config.n_per_class = 2
    config.rates = (0.0, 0.2, 0.4, 0.6, 0.8)
    config.random_seeds = 2
    config.draws = 2
    if options.job == 'prune':
      config.ig_steps = 4
    else:
      config.holdout_per_class = 2
  return config
