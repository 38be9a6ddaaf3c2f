"""The 2024 paper's two further analyses as job outputs: the input
faithfulness of heatmaps (region perturbation) and their stability under
pruning, computed by ``pxp_jax.lrp.faithfulness`` and written to the workdir
(JSON and PNG) by the prune job and the search."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from pxp_jax import distribute, plot
from pxp_jax.lrp import faithfulness

# Region perturbation's baselines (config.perturbation.baseline): a black
# image (zero raw pixels: the normalised input's lower bound) or the
# dataset mean (the normalised zero).
BASELINES = ('black', 'mean')


def split_images(task, split: str, count: int):
  """The first ``count`` images of ``split`` (of the task's classes) and
  their labels, read batch by batch."""
  images, labels, have = [], [], 0
  for batch in task.batches(split):
    images.append(np.asarray(batch['image']))
    labels.append(np.asarray(batch['label']))
    have += len(labels[-1])
    if have >= count:
      break
  if not have:
    raise ValueError(f'split {split!r} has no images')
  return np.concatenate(images)[:count], np.concatenate(labels)[:count]


def check_patch(task, patch_size: int) -> None:
  """A clear error for a region perturbation patch as large as the task's
  images (the image would be one patch)."""
  side = int(min(np.broadcast_to(task.preprocess.crop_size, 2)))
  if patch_size >= side:
    raise ValueError(f'--config.perturbation.patch_size={patch_size} is not '
                     f'smaller than the images ({side} pixels a side): the '
                     'image would be one patch; choose a smaller patch')


def write_faithfulness(task, named, config, split: str, workdir, *,
                       title: str) -> dict:
  """Region perturbation (``pxp_jax.lrp.faithfulness``) of the heatmaps of
  each composite in ``named`` and of random heatmaps, on the first
  ``config.faithfulness`` images of ``split``, with the options of
  ``config.perturbation``; writes ``faithfulness.json`` and
  ``faithfulness.png`` and returns the JSON's dict."""
  options = config.perturbation
  if options.baseline not in BASELINES:
    raise ValueError(f'perturbation.baseline must be one of {BASELINES}, '
                     f'got {options.baseline!r}')
  check_patch(task, options.patch_size)
  images, labels = split_images(task, split, config.faithfulness)
  heatmaps = faithfulness.lrp_heatmaps(task.model, task.variables, images,
                                       labels, named,
                                       batch_size=config.batch_size)
  heatmaps['random'] = faithfulness.random_heatmaps(
      config.seed, images.shape[:3])
  baseline = task.bounds[0] if options.baseline == 'black' else 0.0
  results = faithfulness.compare(
      task.model, task.variables, images, labels, heatmaps,
      patch_size=options.patch_size, order=options.order,
      baseline=baseline, steps=options.steps or None,
      classes=task.classes if task.other_classes == 'excluded' else None)
  results.update(split=split, baseline_name=options.baseline)
  if not distribute.is_primary():
    return results
  workdir = pathlib.Path(workdir)
  (workdir / 'faithfulness.json').write_text(
      json.dumps(results, indent=2) + '\n')
  outputs = ('logit', 'probability')
  heat = results['heatmaps']
  plot.perturbation_curves(
      workdir / 'faithfulness.png', results['fractions'],
      {o: {f"{n} (AOPC {h[o]['aopc']:.3f})": h[o]['curve']
           for n, h in heat.items()} for o in outputs},
      sems={o: {f"{n} (AOPC {h[o]['aopc']:.3f})": h[o]['curve_sem']
                for n, h in heat.items()} for o in outputs},
      title=f'{title}: {options.order.upper()}, {options.patch_size}px '
      f'patches, {len(labels)} {split} images')
  return results


def write_stability(task, composite, masks, rates, config, workdir) -> dict:
  """Heatmap stability (``pxp_jax.lrp.faithfulness.stability``) of the first
  ``config.stability`` images of ``config.eval_split`` under the masks of
  one criterion (unit key -> (rates, units)); writes ``stability.json``
  and ``stability.png`` and returns the JSON's dict."""
  images, labels = split_images(task, config.eval_split, config.stability)
  similarities = faithfulness.stability(
      task.model, task.variables, images, labels, composite, masks,
      batch_size=config.batch_size)
  results = faithfulness.summarize_stability(rates, similarities)
  results.update(criterion='lrp', images=len(labels),
                 split=config.eval_split, units=task.units_type,
                 per_image={k: np.asarray(v).tolist()
                            for k, v in similarities.items()})
  if not distribute.is_primary():
    return results
  workdir = pathlib.Path(workdir)
  (workdir / 'stability.json').write_text(json.dumps(results, indent=2)
                                          + '\n')
  plot.stability(
      workdir / 'stability.png', rates,
      {k: (results[k]['mean'], results[k]['sem']) for k in similarities},
      xlabel=f'pruned {task.units_type} (%), by LRP',
      title=f'{config.model}: LRP heatmaps, pruned vs unpruned '
      f'({len(labels)} images)')
  return results
