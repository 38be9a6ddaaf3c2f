"""The prune job's smaller models: size and speed per rate, and the export.

``measure`` slims the model pruned by each criterion of ``config.slim`` at
every rate (``pxp_jax.prune.slim``: pruned units removed physically) and adds to
the results a ``size`` entry: the dense model's size, the device, and per
criterion per-rate lists of parameters,
FLOPs (XLA's cost analysis), median latency and throughput of a compiled
forward pass on the job's default device, their ratios to the dense model's
measured in the same run, and how many pruned units were removed and how
many stay with zero weights. ``export`` writes the slim model pruned by LRP
at ``config.export_rate`` as a checkpoint folder ``pruned_<rate>`` (plus a
torchvision state dict for the CNNs).
"""

from __future__ import annotations

import hashlib
import pathlib
import platform
from collections.abc import Mapping

import jax
import numpy as np

from pxp_jax import checkpoints, convert, distribute, plot
from pxp_jax.prune import slim as slim_lib
from pxp_jax.models import spec as spec_lib

EXPORT_CRITERION = 'lrp'
TORCHVISION_FILE = 'torchvision.safetensors'


def _row(masks: Mapping[str, np.ndarray], r: int) -> dict[str, np.ndarray]:
  return {k: np.asarray(v[r]) for k, v in masks.items()}


def _digest(row) -> str:
  h = hashlib.sha1()
  for k in sorted(row):
    h.update(k.encode())
    h.update(np.asarray(row[k], np.uint8).tobytes())
  return h.hexdigest()


def _report(size: slim_lib.Size) -> dict:
  return dict(parameters=size.parameters, flops=size.flops,
              latency_s=size.latency_s, throughput=size.throughput)


def measure(task, masks: Mapping, rates, config, results: dict, log) -> None:
  """Adds ``results['size']``: the dense model, the device, the batch and
  ``criteria``, name -> per-rate lists, for every criterion of
  ``config.slim`` (apart from ``results['criteria']``, whose accuracies a
  re-run reproduces exactly, as latencies are not); a model ``slim`` cannot
  narrow is logged and left without sizes."""
  if not config.slim:
    return
  variables = jax.device_get(task.variables)
  size = task.preprocess.crop_size
  shape = (config.size_batch, size, size, 3)
  options = dict(repeats=config.size_repeats, warmup=1)
  dense = slim_lib.size_report(task.model, variables, shape, **options)
  results['size'] = dict(
      dense=_report(dense), device=dense.device,
      platform=jax.devices()[0].platform, machine=platform.machine(),
      batch=config.size_batch, repeats=config.size_repeats, criteria={})
  seen = {}  # the same masks (rate 0, a saturated ranking) measured once
  for name in config.slim:
    rows = masks[name][0]
    out = {k: [] for k in ('parameters', 'flops', 'latency_s', 'throughput',
                           'parameters_ratio', 'flops_ratio', 'speedup',
                           'removed', 'kept_masked')}
    for r in range(len(rates)):
      row = _row(rows, r)
      key = _digest(row)
      if key not in seen:
        try:
          small = slim_lib.slim(task.model, variables, row, (1, *shape[1:]))
        except NotImplementedError as error:
          log(f'no size report for {name}: {error}')
          return
        measured = (dense if all(v.all() for v in row.values()) else
                    slim_lib.size_report(small.model, small.variables, shape,
                                         **options))
        seen[key] = (measured, sum(small.removed.values()),
                     sum(small.kept_masked.values()))
      measured, removed, kept = seen[key]
      for k, v in _report(measured).items():
        out[k].append(v)
      out['parameters_ratio'].append(measured.parameters / dense.parameters)
      out['flops_ratio'].append(measured.flops / dense.flops)
      out['speedup'].append(dense.latency_s / measured.latency_s)
      out['removed'].append(removed)
      out['kept_masked'].append(kept)
    results['size']['criteria'][name] = out
    log(f'slimmed {name} at {len(rates)} rates')


def plot_sizes(workdir: pathlib.Path, results: dict, title: str) -> None:
  """``size.png``: accuracy against parameters and against FLOPs of the
  slim models (process 0 only)."""
  if 'size' not in results or not distribute.is_primary():
    return
  curves = {name: (c['parameters'], c['flops'],
                  results['criteria'][name]['accuracy'])
            for name, c in results['size']['criteria'].items()}
  if not curves:
    return
  dense = results['size']['dense']
  plot.sizes(workdir / 'size.png', curves,
             dense=(dense['parameters'], dense['flops'],
                    results['unpruned_accuracy']), title=title)


def export(task, masks: Mapping, rates, config, results: dict,
           workdir: pathlib.Path, log) -> pathlib.Path | None:
  """Writes the slim model pruned by LRP at ``config.export_rate`` to
  ``workdir/pruned_<rate>`` (a checkpoint: ``checkpoints.load`` and
  ``experiments.evaluate`` read it; its model.json records the source
  checkpoint, the rate, the criterion and the accuracy), and for a ResNet
  or VGG (a family whose spec exports to torchvision) its torchvision state
  dict ``torchvision.safetensors``. A folder
  already written by the same config is kept."""
  if not config.export_rate:
    return None
  rate = float(config.export_rate)
  r = [float(x) for x in rates].index(rate)
  path = workdir / f'pruned_{rate:g}'
  if (path / checkpoints.RECIPE).exists():
    log(f'kept {path.name} (written by an earlier run of this config)')
    return path
  small = slim_lib.slim(task.model, jax.device_get(task.variables),
                        _row(masks[EXPORT_CRITERION][0], r))
  if ('torchvision' in spec_lib.spec_for(small.model).exports
      and distribute.is_primary()):  # before model.json, which marks it whole
    convert.save_torchvision(path / TORCHVISION_FILE, small.model,
                             small.variables)
  source = {k: v for k, v in task.recipe.items()
            if k in ('dataset', 'preprocess')}
  accuracy = results['criteria'][EXPORT_CRITERION]['accuracy'][r]
  checkpoints.save_model(
      path, small.model, small.variables, **source,
      checkpoint=path.name, source_checkpoint=str(config.model), rate=rate,
      criterion=EXPORT_CRITERION, units=task.units_type,
      classes=task.classes, split=results['split'],
      accuracy=float(accuracy), unpruned_accuracy=results['unpruned_accuracy'],
      removed=sum(small.removed.values()),
      kept_masked=sum(small.kept_masked.values()))
  log(f'saved the slim model pruned by {EXPORT_CRITERION} at {rate:.0%} to '
      f'{path}')
  return path
