"""Random-access image sources: prepared TFDS datasets and users' folders.

A source has ``len(source)``, ``source[i] -> {'image': (H, W, C) uint8,
'label': int}``, ``labels`` (all labels, int64) and ``num_classes``.

Nothing here downloads: ``load`` reads TFDS datasets already prepared as
array_record files (which needs no TensorFlow), prepares ``digits`` from
scikit-learn, and prepares manual-download datasets such as ``imagenet2012``
from the archives in ``manual_dir``. Everything else fails at once with a
message saying what to put where.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import textwrap

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from pxp_jax.data import digits

ENV_DATA_DIR = 'PXP_JAX_DATA_DIR'
# The suffixes torchvision's ImageFolder accepts.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                  '.tiff', '.webp')
_FILE_FORMAT = 'array_record'  # random access without TensorFlow
_OFFLINE_BUILDERS = (digits.Digits,)  # prepared from files we already have


class DatasetNotFoundError(FileNotFoundError):
  """A dataset is missing on disk and may not be downloaded."""


class TfdsSource:
  """One split of a prepared TFDS dataset."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str):
    self.name, self.split = builder.name, split
    self._builder = builder
    self._records = builder.as_data_source(split=split)
    label = builder.info.features['label']
    self.num_classes = label.num_classes
    self.class_names = tuple(label.names)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict:
    record = self._records[i]
    return {**record, 'label': int(record['label'])}

  @functools.cached_property
  def labels(self) -> np.ndarray:
    # Skipping the image decoder makes this a read of the records only.
    records = self._builder.as_data_source(
        split=self.split, decoders={'image': tfds.decode.SkipDecoding()})
    rows = records.__getitems__(range(len(self)))
    return np.array([r['label'] for r in rows], np.int64)

  def __repr__(self) -> str:
    return f'TfdsSource({self.name!r}, {self.split!r}, {len(self)} records)'


class ImageFolderSource:
  """Images in ``root/<class>/...``, read with PIL as RGB uint8."""

  def __init__(self, root: pathlib.Path, class_names: tuple[str, ...],
               paths: tuple[pathlib.Path, ...], labels: np.ndarray):
    self.root, self.class_names = root, class_names
    self.num_classes = len(class_names)
    self.paths, self.labels = paths, labels

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict:
    with Image.open(self.paths[i]) as image:
      return {'image': np.asarray(image.convert('RGB')),
              'label': int(self.labels[i])}

  def __repr__(self) -> str:
    return f'ImageFolderSource({str(self.root)!r}, {len(self)} images)'


def default_data_dir() -> str | None:
  """``$PXP_JAX_DATA_DIR``, else None for TFDS's default.

  TFDS's default is ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.
  """
  return os.environ.get(ENV_DATA_DIR) or None


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         manual_dir: str | os.PathLike | None = None) -> TfdsSource:
  """Opens one split of a TFDS dataset for random access, never downloading.

  Args:
    name: a TFDS name, e.g. ``'digits'`` (ours, prepared here on first use),
      ``'imagenet2012'``, ``'mnist'``; ``'name:1.2.3'`` picks a version.
    split: a split name such as ``'train'``, with TFDS slicing allowed
      (``'train[:10%]'``, ``'train+validation'``).
    data_dir: where prepared datasets live; defaults to ``$PXP_JAX_DATA_DIR``,
      else TFDS's default.
    manual_dir: a folder with the hand-downloaded files of a manual dataset
      (``imagenet2012``: ``ILSVRC2012_img_train.tar`` and
      ``ILSVRC2012_img_val.tar``), used to prepare it once into ``data_dir``.

  Returns:
    A ``TfdsSource``: ``len``, ``source[i] -> {'image', 'label', ...}``,
    ``labels``, ``num_classes``, ``class_names``.

  Raises:
    DatasetNotFoundError: the dataset is unknown, or not prepared and cannot
      be prepared offline; the message says which files to put where.
    ValueError: ``split`` is not one of the dataset's splits.

  Example::

    train = load('digits', 'train')
    train[0]['image'].shape  # (32, 32, 3)
  """
  data_dir = os.fspath(data_dir) if data_dir else default_data_dir()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(f'{name!r} is not a TFDS dataset.') from None
  if not builder.is_prepared():
    _prepare(builder, manual_dir)
  available = sorted(builder.info.splits)
  for part in split.split('+'):
    if re.sub(r'\[.*\]$', '', part.strip()) not in available:
      raise ValueError(f'{name!r} has no split {part!r}; its splits are '
                       f'{available}.')
  return TfdsSource(builder, split)


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir) -> None:
  """Prepares ``builder``'s data if that needs no download, else raises."""
  # Never let TFDS reach for the network: offline it waits minutes first.
  offline = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir else None,
      try_download_gcs=False)
  if isinstance(builder, _OFFLINE_BUILDERS):
    builder.download_and_prepare(file_format=_FILE_FORMAT,
                                 download_config=offline)
    return
  failure = None
  if manual_dir is not None and builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    try:
      builder.download_and_prepare(file_format=_FILE_FORMAT,
                                   download_config=offline)
      return
    except Exception as e:  # pylint: disable=broad-except
      failure = e
  raise DatasetNotFoundError(_missing_message(builder, manual_dir, failure))


def _missing_message(builder, manual_dir, failure) -> str:
  lines = [f'Dataset {builder.name!r} is not prepared in data_dir='
           f'{os.fspath(builder.data_dir_root)!r} (looked for '
           f'{os.fspath(builder.data_path)!r}) and is never downloaded here.']
  instructions = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  if instructions:
    lines += ['It is prepared from files you download yourself:',
              textwrap.indent(textwrap.dedent(instructions).strip(), '  '),
              'Put them in one folder and pass manual_dir=<that folder>; it is '
              'then prepared once into data_dir (array_record). Preparing it '
              'needs TensorFlow (pip install tensorflow-cpu); reading it '
              'afterwards does not.']
    if failure is not None:
      lines.append(f'Preparing from manual_dir={os.fspath(manual_dir)!r} '
                   f'failed: {type(failure).__name__}: {failure}')
  else:
    lines.append(
        'Prepare it once where there is network (this needs TensorFlow): '
        f'tfds.builder({builder.name!r}, data_dir=...).download_and_prepare('
        f'file_format={_FILE_FORMAT!r}), then point data_dir (or '
        f'${ENV_DATA_DIR}) at that data_dir.')
  return '\n'.join(lines)


def image_folder(root: str | os.PathLike,
                 split: str | None = None) -> ImageFolderSource:
  """Opens a folder of images laid out as ``root/[split/]<class>/<image>``.

  Classes are the sub-folders sorted by name and images are found recursively
  in sorted order, so indices and labels match torchvision's ``ImageFolder``.
  Needs no TensorFlow (unlike TFDS's ImageFolder).

  Args:
    root: the folder.
    split: an optional sub-folder of ``root``, e.g. ``'train'`` or ``'val'``.

  Returns:
    An ``ImageFolderSource``: ``len``, ``source[i] -> {'image': (H, W, 3)
    uint8, 'label': int}``, ``labels``, ``class_names``, ``num_classes``.

  Raises:
    DatasetNotFoundError: the folder is missing, or a class has no images.

  Example::

    val = image_folder('~/imagenet', 'val')
  """
  root = pathlib.Path(root).expanduser()
  folder = root / split if split is not None else root
  if not folder.is_dir():
    found = (sorted(p.name for p in root.iterdir() if p.is_dir())
             if root.is_dir() else [])
    hint = f'; the folders in {str(root)!r} are {found}' if found else ''
    raise DatasetNotFoundError(f'No image folder {str(folder)!r}{hint}.')
  class_names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))
  if not class_names:
    raise DatasetNotFoundError(f'No class folders in {str(folder)!r}; '
                               'expected <class>/<image>.')
  paths, labels, empty = [], [], []
  for label, name in enumerate(class_names):
    # os.walk order, as torchvision walks, so nested folders index alike.
    files = [pathlib.Path(d, f)
             for d, _, names in sorted(os.walk(folder / name, followlinks=True))
             for f in sorted(names) if f.lower().endswith(IMAGE_SUFFIXES)]
    paths += files
    labels += [label] * len(files)
    if not files:
      empty.append(name)
  if empty:
    raise DatasetNotFoundError(f'No images for classes {empty} in '
                               f'{str(folder)!r}; the image suffixes are '
                               f'{IMAGE_SUFFIXES}.')
  return ImageFolderSource(folder, class_names, tuple(paths),
                           np.asarray(labels, np.int64))
