"""Shared fixtures: the embedded digits dataset, prepared once per run."""

import pytest


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir holding the prepared `digits` dataset."""
  from pxp_jax import data  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp('tfds')
  data.load('digits', 'train', data_dir=str(path))
  return str(path)


@pytest.fixture
def x64():
  """float64 computations inside one test; the global flag is restored."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.jax_enable_x64
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', previous)
