r"""Evaluates checkpoints on their dataset and prints a table.

  pxp-evaluate                      # the shipped checkpoints
  pxp-evaluate --checkpoints=DIR1,resnet_digits --workdir=DIR

Each checkpoint is a shipped name (``pxp_jax.checkpoints.names()``) or a folder
written by ``pxp-train`` or by the prune job (``pruned_<rate>``, a
slim model with its per-layer widths); it is evaluated on the dataset and with the
preprocessing recorded in its ``model.json``. With a workdir, it also writes
``results.json`` and ``heatmaps_<checkpoint>.png``: LRP input relevance for a
few test images (EpsilonGammaBox for CNNs, AttnLRP for ViTs).
"""

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pxp_jax import attribute, checkpoints, data, plot, prune
from pxp_jax.experiments import cli
from pxp_jax.jobs import task as task_lib

_CHECKPOINTS = flags.DEFINE_list(
    'checkpoints', None, 'Checkpoint names or folders (default: all shipped).')
_SPLITS = flags.DEFINE_list('splits', ['validation', 'test'], 'Splits.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'If set, results.json and heatmap PNGs are written there.')
_HEATMAPS = flags.DEFINE_integer('heatmaps', 8,
                                 'Test images per heatmap figure (0: none).')


def main(argv):
  cli.start(argv)
  if _WORKDIR.value:
    pathlib.Path(_WORKDIR.value).mkdir(parents=True, exist_ok=True)
  names = _CHECKPOINTS.value or checkpoints.names()
  if not names:
    raise app.UsageError('no checkpoints given and none shipped')
  rows = []
  for name in names:
    start = time.time()
    task = task_lib.Task.load(name, data_dir=_DATA_DIR.value or '',
                              eval_batch_size=256)
    row = dict(checkpoint=str(name), model=task.recipe['model'],
               params=sum(x.size for x in
                          jax.tree.leaves(task.variables['params'])))
    for split in _SPLITS.value:
      row[split] = prune.accuracy(task.model, task.variables,
                                  task.batches(split))
    if _WORKDIR.value and _HEATMAPS.value:
      row['heatmaps'] = _heatmaps(name, task)
    row['seconds'] = round(time.time() - start, 1)
    rows.append(row)
    print(f'evaluated {name} in {row["seconds"]} s', flush=True)

  header = ['checkpoint', 'model', 'params', *_SPLITS.value]
  for row in rows:
    if 'heatmaps' in row:
      print(f"wrote {row['heatmaps']}")
  widths = [max(len(h), *(len(_cell(r[h])) for r in rows)) for h in header]
  line = lambda cells: '  '.join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
  print(line(header))
  for r in rows:
    print(line([_cell(r[h]) for h in header]))
  if _WORKDIR.value:
    (pathlib.Path(_WORKDIR.value) / 'results.json').write_text(
        json.dumps(rows, indent=2) + '\n')


def _heatmaps(name, task) -> str:
  """Input relevance of the first test images of each class, as a PNG."""
  source = task.split('test')
  count = _HEATMAPS.value
  labels = source.labels
  first = [int(np.flatnonzero(labels == c)[0])
           for c in np.unique(labels)][:count]
  images = np.stack([data.preprocess(source[i]['image'], task.preprocess)
                     for i in first])
  targets = jnp.asarray(labels[first])
  mean, std = task.preprocess.mean, task.preprocess.std
  result = attribute(task.model, task.variables, jnp.asarray(images), targets,
                     task.heatmap_composite())
  out = pathlib.Path(_WORKDIR.value) / f'heatmaps_{pathlib.Path(name).name}.png'
  return plot.heatmaps(
      images, np.asarray(result.input), out, mean=mean, std=std,
      titles=[f'label {int(t)}' for t in targets],
      suptitle=f'{name}: LRP input relevance (red +, blue -)')


def _cell(value) -> str:
  return f'{value:.2%}' if isinstance(value, float) else str(value)


def run():
  """The ``pxp-evaluate`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
