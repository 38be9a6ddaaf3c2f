"""Data: TFDS access without downloads, the `digits` dataset, preprocessing.

  source = load('digits', 'train')              # or image_folder(root, 'train')
  for batch in batches(source, DIGITS, 128): ...
  images, labels = reference_batch(source, DIGITS, n_per_class=10)
  task = FewClass.drawn(num_classes=10, count=3, seed=0)   # tasks.py
  refs = Draw(n_per_class=10, seed=0).references(source, task.classes)

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
from pxp_jax.data.tasks import OTHER_CLASSES
from pxp_jax.data.tasks import Draw
from pxp_jax.data.tasks import FewClass
from pxp_jax.data.tasks import draw_classes

__all__ = [
    'DIGITS', 'DatasetNotFoundError', 'Draw', 'FewClass', 'IMAGENET',
    'Images', 'OTHER_CLASSES', 'Preprocess', 'Subset', 'as_arrays', 'batches',
    'digits', 'draw_classes', 'image_folder', 'labels_of', 'load',
    'preprocess', 'reference_batch', 'reference_samples',
]
