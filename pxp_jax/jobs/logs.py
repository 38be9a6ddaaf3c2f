"""TensorBoard logs of the jobs through clu metric writers.

``writer(workdir, config)`` returns a clu ``MetricWriter`` writing event files
into ``workdir/tensorboard`` (the config already written as hparams), or a
writer that does nothing: on every process but process 0 (multi-host runs
log once), when ``config.tensorboard`` is off, and when clu or TensorFlow is
not installed (one line says so: the ``tensorboard`` extra brings them).

clu's ``metric_writers`` imports TensorFlow for its summary writer, so clu is
imported here, lazily, only when a writer is made: TensorFlow stays out of
the runtime dependencies and out of processes that do not log. Once
imported, TensorFlow is kept off the accelerators and to one thread, so it
takes neither device memory nor cores from JAX.

View the logs with ``tensorboard --logdir WORKDIR/tensorboard``.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
from typing import Any, Mapping

import jax

SUBDIR = 'tensorboard'
EXTRA = "pip install -e '.[tensorboard]': clu, tensorflow-cpu, tensorboard"


class NoOpWriter:
  """A ``MetricWriter`` that writes nothing (clu's interface, no clu)."""

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_scalars(self, step, scalars):
    del step, scalars

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    pass

  def close(self):
    pass


def writer(workdir, config):
  """The job's metric writer: a clu ``SummaryWriter`` into
  ``workdir/tensorboard`` with ``hparams(config)`` written, or a
  ``NoOpWriter`` (not process 0, ``config.tensorboard`` off or missing, or
  clu / TensorFlow not installed)."""
  if not config.get('tensorboard', False) or jax.process_index() != 0:
    return NoOpWriter()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # no C++ INFO lines
  try:
    metric_writers = importlib.import_module('clu.metric_writers')
  except ImportError as error:
    print(f'TensorBoard logs are off ({error}): install the tensorboard '
          f'extra ({EXTRA}) or set --config.tensorboard=false', flush=True)
    return NoOpWriter()
  _quiet_tensorflow()
  out = metric_writers.SummaryWriter(str(pathlib.Path(workdir) / SUBDIR))
  out.write_hparams(hparams(config))
  out.flush()
  return out


def hparams(config) -> dict[str, bool | int | float | str]:
  """The config flattened to ``{'mesh.data': -1, 'rates': '[0.0, 0.2]'}``:
  nested keys joined by '.', as ``--config.a.b`` names them; values that
  TensorBoard's hparams do not take (tuples, lists, None) as JSON text."""
  flat = {}

  def visit(prefix, value):
    if isinstance(value, Mapping):
      for key, inner in value.items():
        visit(f'{prefix}.{key}' if prefix else str(key), inner)
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix] = value
    else:
      flat[prefix] = json.dumps(value, default=str)

  visit('', config.to_dict() if hasattr(config, 'to_dict') else config)
  return flat


def write_pruning(out, results: Mapping[str, Any]) -> None:
  """The scalars of a pruning evaluation (``report.evaluate``'s results):
  ``accuracy/<criterion>`` against the pruning rate (step = the rate in
  percent, rounded: rates finer than 1% share a step), ``a_pr/<criterion>``
  and ``auc/<criterion>`` at step 0, and, where a criterion was fine-tuned,
  ``fine_tuned/<criterion>/before`` and ``/after`` at its rate."""
  for name, c in results['criteria'].items():
    for rate, accuracy in zip(c['rates'], c['accuracy']):
      out.write_scalars(_percent(rate), {f'accuracy/{name}': accuracy})
    out.write_scalars(0, {f'a_pr/{name}': c['a_pr'], f'auc/{name}': c['auc']})
    if 'fine_tuned' in c:
      tuned = c['fine_tuned']
      out.write_scalars(_percent(tuned['rate']), {
          f'fine_tuned/{name}/before': tuned['accuracy_before'],
          f'fine_tuned/{name}/after': tuned['accuracy_after']})
  out.flush()


def _percent(rate: float) -> int:
  return int(round(100 * float(rate)))


def _quiet_tensorflow() -> None:
  """Keeps TensorFlow (imported by clu) off the GPUs and to one thread, so
  that it leaves the devices' memory and the cores to JAX."""
  tf = importlib.import_module('tensorflow')
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
  except RuntimeError:  # TensorFlow already initialised by the caller
    pass
