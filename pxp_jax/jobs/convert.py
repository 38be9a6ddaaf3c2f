"""Pretrained torchvision / timm / big_vision weights -> a checkpoint folder
that the jobs read (``--config.model=<folder>``).

``convert(source, model, weights, out)`` converts with ``pxp_jax.convert``
and saves with ``pxp_jax.checkpoints.save``, recording the preprocessing the
weights were trained with and the dataset they belong to.
"""

from __future__ import annotations

import dataclasses
import pathlib

from pxp_jax import checkpoints, convert as convert_lib, data, models

SOURCES = {'torchvision': convert_lib.from_torchvision,
           'timm': convert_lib.from_timm,
           'big_vision': lambda model, weights: convert_lib.from_big_vision(
               weights)}
# torchvision's eval transform; the Inception-style normalisation of timm's
# and big_vision's ViTs (mean = std = 0.5, crop 224 of 248 = 224 / 0.9).
PREPROCESS = {'imagenet': data.IMAGENET,
              'inception': data.Preprocess(248, 224, mean=(0.5, 0.5, 0.5),
                                           std=(0.5, 0.5, 0.5))}


def convert(source: str, model: str, weights, out, *,
            preprocess: data.Preprocess | str = 'imagenet',
            dataset: str = 'imagenet2012') -> pathlib.Path:
  """Converts ``weights`` and saves them as the checkpoint folder ``out``.

  Args:
    source: ``torchvision``, ``timm`` or ``big_vision``.
    model: the source's model name (``resnet50``, ``vgg16_bn``,
      ``vit_b_16``; timm's ``vit_base_patch16_224``; ignored for big_vision,
      whose file names its sizes).
    weights: the weights file (``.pth``, ``.safetensors``, ``.npz``).
    out: the checkpoint folder to write (must not hold one yet).
    preprocess: a ``data.Preprocess`` or a name in ``PREPROCESS``.
    dataset: the TFDS dataset the model classifies.

  Returns:
    The checkpoint folder; ``checkpoints.load(out)`` gives the model back.
  """
  if source not in SOURCES:
    raise ValueError(f'unknown source {source!r}; use one of '
                     f'{", ".join(SOURCES)}')
  if isinstance(preprocess, str):
    if preprocess not in PREPROCESS:
      raise ValueError(f'unknown preprocess {preprocess!r}; use one of '
                       f'{", ".join(PREPROCESS)} or a data.Preprocess')
    preprocess = PREPROCESS[preprocess]
  if not pathlib.Path(weights).is_file():
    raise FileNotFoundError(f'no weights file {weights}')
  flax_model, variables = SOURCES[source](model, weights)
  name, overrides = models.describe(flax_model)
  return checkpoints.save(out, name, variables,
                          num_classes=flax_model.num_classes,
                          overrides=overrides, dataset=dataset,
                          preprocess=dataclasses.asdict(preprocess),
                          source=f'{source}:{model}:{pathlib.Path(weights).name}')
