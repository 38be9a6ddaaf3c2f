"""Eval preprocessing, identical to torchvision's and timm's eval transform.

``Compose([Resize(r), CenterCrop(c), ToTensor(), Normalize(mean, std)])`` on a
PIL image, but returning HWC float32 (NHWC when batched), Flax's layout.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Resize the shorter side, center-crop, scale to [0, 1], normalise.

  Attributes:
    resize_size: the shorter side after resizing.
    crop_size: the crop, ``s`` for s x s or ``(height, width)``.
    mean: per-channel mean subtracted after scaling to [0, 1].
    std: per-channel standard deviation divided by after that.
  """
  resize_size: int
  crop_size: int | tuple[int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]


IMAGENET = Preprocess(256, 224, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225))
# 32x32 digits pass through unresized (see `preprocess`) to [-1, 1].
DIGITS = Preprocess(32, 32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision's ``Resize(size)``: shorter side -> size, longer truncated."""
  short, long = sorted((height, width))
  long = int(size * long / short)
  return (size, long) if height <= width else (long, size)


def preprocess(image: np.ndarray, settings: Preprocess) -> np.ndarray:
  """Applies the eval transform to one image or a batch.

  The shorter side is resized with PIL's antialiased BILINEAR filter (skipped,
  as torchvision does, when the size would not change), the center crop starts
  at ``round((h - crop_h) / 2)``, then ``(x / 255 - mean) / std`` in float32.

  Args:
    image: uint8 ``(H, W, C)`` with C in {1, 3}, or a batch ``(N, H, W, C)``.
    settings: a ``Preprocess``, e.g. ``IMAGENET`` or ``DIGITS``.

  Returns:
    float32 ``(crop_h, crop_w, C)``, or ``(N, crop_h, crop_w, C)``; a grey
    image (C = 1) broadcasts against a 3-channel mean to C = 3.

  Example::

    x = preprocess(photo, IMAGENET)  # (224, 224, 3)
  """
  image = np.asarray(image)
  if image.ndim == 4:
    return np.stack([preprocess(one, settings) for one in image])
  if image.dtype != np.uint8 or image.ndim != 3:
    raise ValueError(f'expected (H, W, C) uint8, got {image.shape} '
                     f'{image.dtype}')
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  height, width = image.shape[:2]
  size = resized_size(height, width, settings.resize_size)
  if size != (height, width):
    pil = pil.resize(size[::-1], Image.BILINEAR)
  crop_h, crop_w = ((settings.crop_size,) * 2
                    if isinstance(settings.crop_size, int)
                    else settings.crop_size)
  if crop_h > size[0] or crop_w > size[1]:
    raise ValueError(f'crop {(crop_h, crop_w)} exceeds the resized image '
                     f'{size}')
  # Python's round (half to even) is what torchvision's CenterCrop uses.
  top, left = round((size[0] - crop_h) / 2), round((size[1] - crop_w) / 2)
  pil = pil.crop((left, top, left + crop_w, top + crop_h))
  x = np.asarray(pil, np.float32).reshape(crop_h, crop_w, -1) / 255
  return ((x - np.asarray(settings.mean, np.float32))
          / np.asarray(settings.std, np.float32))
