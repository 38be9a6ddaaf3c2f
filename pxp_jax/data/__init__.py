"""Data: TFDS access without downloads, the `digits` dataset, preprocessing.

  source = load('digits', 'train')              # or image_folder(root, 'train')
  for batch in batches(source, DIGITS, 128): ...
  images, labels = reference_batch(source, DIGITS, n_per_class=10)

Importing registers the `digits` TFDS builder; nothing touches the disk until
a source is opened.
"""

from pxp_jax.data import digits  # registers the `digits` builder
from pxp_jax.data.pipeline import Images
from pxp_jax.data.pipeline import Subset
from pxp_jax.data.pipeline import as_arrays
from pxp_jax.data.pipeline import batches
from pxp_jax.data.pipeline import labels_of
from pxp_jax.data.pipeline import reference_batch
from pxp_jax.data.pipeline import reference_samples
from pxp_jax.data.preprocess import DIGITS
from pxp_jax.data.preprocess import IMAGENET
from pxp_jax.data.preprocess import Preprocess
from pxp_jax.data.preprocess import preprocess
from pxp_jax.data.sources import DatasetNotFoundError
from pxp_jax.data.sources import image_folder
from pxp_jax.data.sources import load

__all__ = [
    'DIGITS', 'DatasetNotFoundError', 'IMAGENET', 'Images', 'Preprocess',
    'Subset', 'as_arrays', 'batches', 'labels_of', 'digits', 'image_folder', 'load', 'preprocess',
    'reference_batch', 'reference_samples',
]
