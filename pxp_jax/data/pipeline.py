"""From a source to model inputs: batches, whole splits and reference samples.

Every function takes a random-access source (``pxp_jax.data.load`` or
``image_folder``) and a ``Preprocess``; images come out float32 NHWC, labels
int32. Restricting to ``classes`` keeps the original label values, so a
1000-way model can be evaluated on a few of its classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

from pxp_jax.data.preprocess import Preprocess
from pxp_jax.data.preprocess import preprocess as apply_preprocess


def labels_of(source) -> np.ndarray:
  """All labels of ``source`` (its ``labels`` attribute when it has one)."""
  labels = getattr(source, 'labels', None)
  if labels is None:
    labels = [source[i]['label'] for i in range(len(source))]
  return np.asarray(labels, np.int64)


def _indices(source, classes: Sequence[int] | None) -> np.ndarray:
  if classes is None:
    return np.arange(len(source))
  return np.flatnonzero(np.isin(labels_of(source), classes))


def _example(source, settings: Preprocess, index) -> dict[str, np.ndarray]:
  record = source[int(index)]
  return {'image': apply_preprocess(record['image'], settings),
          'label': np.int32(record['label'])}


def _stack(source, settings: Preprocess,
           indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  examples = [_example(source, settings, i) for i in indices]
  if not examples:
    raise ValueError('no examples selected')
  return (np.stack([e['image'] for e in examples]),
          np.array([e['label'] for e in examples], np.int32))


def batches(source, preprocess: Preprocess, batch_size: int, *,
            shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
            classes: Sequence[int] | None = None,
            num_epochs: int | None = 1) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over preprocessed batches of a source, in a fixed order.

  Reading and preprocessing run in grain's threads; the order depends only on
  ``shuffle`` and ``seed`` (each epoch is permuted differently).

  Args:
    source: a random-access source of ``{'image', 'label'}`` records.
    preprocess: the ``Preprocess`` settings, e.g. ``IMAGENET``.
    batch_size: examples per batch.
    shuffle: permute the examples (per epoch) with ``seed``.
    seed: the shuffle seed.
    drop_remainder: drop a last batch smaller than ``batch_size``.
    classes: keep only examples with these labels (the labels keep their
      values).
    num_epochs: passes over the data; None repeats forever.

  Returns:
    An iterator of ``{'image': float32 (B, H, W, C), 'label': int32 (B,)}``.

  Example::

    for batch in batches(load('digits', 'test'), DIGITS, 128):
      logits = model.apply(variables, batch['image'])
  """
  ds = grain.MapDataset.source(_indices(source, classes))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.map(lambda i: _example(source, preprocess, i))
  return iter(ds.to_iter_dataset().batch(batch_size,
                                         drop_remainder=drop_remainder))


def as_arrays(source, preprocess: Preprocess,
              classes: Sequence[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """A whole (small) split in memory: images (N, H, W, C) f32, labels (N,) i32.

  Examples are in the source's order; ``classes`` keeps only those labels.
  """
  return _stack(source, preprocess, _indices(source, classes))


def reference_samples(source, n_per_class: int, *, seed: int = 0,
                      classes: Sequence[int] | None = None) -> np.ndarray:
  """Draws ``n_per_class`` examples of each class, without replacement.

  These are the reference samples that relevance-based pruning attributes
  over. Each class is drawn with its own ``np.random.default_rng((seed,
  class))``, so a class's samples do not depend on which other classes are
  asked for.

  Args:
    source: a random-access source, usually a train split.
    n_per_class: samples per class.
    seed: the sampling seed; the same seed gives the same indices.
    classes: the classes to draw; defaults to all ``num_classes`` (or every
      label present when the source does not know ``num_classes``).

  Returns:
    Sorted int64 indices into ``source``, ``n_per_class * len(classes)`` long.

  Raises:
    ValueError: a class has fewer than ``n_per_class`` examples.

  Example::

    idx = reference_samples(load('digits', 'train'), 10, seed=0)
  """
  labels = labels_of(source)
  if classes is None:
    num_classes = getattr(source, 'num_classes', None)
    classes = range(num_classes) if num_classes else np.unique(labels)
  picked = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    if len(members) < n_per_class:
      raise ValueError(f'class {c} has {len(members)} examples, fewer than '
                       f'n_per_class={n_per_class}')
    rng = np.random.default_rng((seed, int(c)))
    picked.append(rng.choice(members, n_per_class, replace=False))
  return np.sort(np.concatenate(picked)).astype(np.int64)


def reference_batch(source, preprocess: Preprocess, n_per_class: int, *,
                    seed: int = 0, classes: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """``reference_samples`` as arrays: images (N, H, W, C) f32, labels i32."""
  indices = reference_samples(source, n_per_class, seed=seed, classes=classes)
  return _stack(source, preprocess, indices)


class Subset:
  """The examples ``indices`` of a random-access source, itself a source
  (``len``, ``[i]``, ``labels``, ``num_classes``)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    self.num_classes = getattr(source, 'num_classes', None)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[i])]

  @property
  def labels(self) -> np.ndarray:
    return labels_of(self.source)[self.indices]

  def __repr__(self) -> str:
    return f'Subset({self.source!r}, {len(self)} examples)'


class Images:
  """Preprocessed images of ``source[indices]``, read when indexed: an
  array-like (``len``, ``shape``, ``[slice or index array]`` -> float32
  (n, H, W, C)) for sample sets too large to hold in memory (10 reference
  samples of each of ImageNet's 1000 classes are 6 GB as float32)."""

  def __init__(self, source, preprocess: Preprocess, indices):
    self.source, self.preprocess = source, preprocess
    self.indices = np.asarray(indices, np.int64)
    first = _example(source, preprocess, self.indices[0])['image']
    self.shape = (len(self.indices), *first.shape)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, key) -> np.ndarray:
    chosen = np.atleast_1d(self.indices[key])
    return _stack(self.source, self.preprocess, chosen)[0]
