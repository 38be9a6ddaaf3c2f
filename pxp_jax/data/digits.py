"""`digits`: scikit-learn's handwritten digits as a TFDS dataset, built offline.

The 1,797 8x8 images of ``sklearn.datasets.load_digits`` (the test part of the
UCI "Optical Recognition of Handwritten Digits" set; grey levels 0..16) are
served as 32x32x3 uint8 images:

  1. scale to 0..255: ``v * 255 / 16`` (kept as float),
  2. upsample 8x8 -> 32x32 with PIL's BILINEAR filter on the float image
     (half-pixel centres, edge pixels clamped, i.e. ``np.interp`` along each
     axis), then round once to uint8,
  3. replicate the grey channel to 3 channels.

Splits are stratified: each class is permuted with ``RandomState(0)`` and cut
60/20/20 (rounded per class), giving

  train 1,078, validation 359, test 360 (1,797 in all).

Records keep sklearn's order within a split and carry ``index``, the row in
``load_digits``. Everything needed ships with scikit-learn, so preparing needs
no network and no TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

SIZE = 32
FRACTIONS = {'train': 0.6, 'validation': 0.2}  # test takes the rest
SEED = 0

_CITATION = """\
@misc{alpaydin1998digits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}"""
_HOMEPAGE = ('https://archive.ics.uci.edu/ml/datasets/'
             'Optical+Recognition+of+Handwritten+Digits')


def upsample(image: np.ndarray) -> np.ndarray:
  """One 8x8 digit with grey levels 0..16 -> (32, 32, 3) uint8 (see above)."""
  grey = Image.fromarray(np.asarray(image, np.float32) * (255 / 16))
  grey = np.asarray(grey.resize((SIZE, SIZE), Image.BILINEAR))
  grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Stratified, seeded split of ``labels`` -> sorted indices per split."""
  # RandomState, not Generator: its stream is frozen across numpy releases, so
  # the split can never change under a user.
  rng = np.random.RandomState(SEED)
  parts = {name: [] for name in (*FRACTIONS, 'test')}
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    start = 0
    for name, fraction in FRACTIONS.items():
      stop = start + int(round(fraction * len(idx)))
      parts[name].append(idx[start:stop])
      start = stop
    parts['test'].append(idx[start:])
  return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, upsampled to 32x32x3."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # TFDS 4.9.10 derives this through the `importlib_resources` backport, which
  # it only installs on Python < 3.9; preparing would fail without it.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: `dataset_info_from_configs` would look for
    # README/CITATIONS files next to this module.
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "scikit-learn's handwritten digits (UCI optical recognition of "
            'handwritten digits, test part): 1,797 8x8 images, 10 classes, '
            'bilinearly upsampled to 32x32x3 uint8.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(SIZE, SIZE, 3),
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with scikit-learn
    # Imported here: only preparing needs it, and it is slow to import.
    import sklearn.datasets  # pylint: disable=g-import-not-at-top

    digits = sklearn.datasets.load_digits()
    return {name: self._generate_examples(digits.images, digits.target, idx)
            for name, idx in split_indices(digits.target).items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': upsample(images[i]), 'label': int(labels[i]),
                     'index': int(i)}
