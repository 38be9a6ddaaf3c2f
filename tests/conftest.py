"""Shared fixtures: the embedded digits dataset, prepared once per run."""

import pytest


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir holding the prepared `digits` dataset."""
  from pxp_jax import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('tfds')
  data.load('digits', 'train', data_dir=str(path))
  return str(path)
