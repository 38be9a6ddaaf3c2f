"""How good are the heatmaps: input faithfulness and stability under pruning.

The two further analyses of "Pruning By Explaining Revisited" (Hatefi et
al., 2024):

- **Region perturbation** (Samek et al., "Evaluating the visualization of
  what a deep neural network has learned", IEEE TNNLS 2017; pixel flipping,
  Bach et al., PLOS ONE 2015): split each image into square patches, remove
  them from the most relevant on (MoRF; or the least relevant, LeRF) by
  setting them to a baseline, and record the model's output for the
  explained label after each step. A faithful heatmap makes the MoRF curve
  fall fast (a large AOPC) and the LeRF curve stay high.
- **Stability under pruning**: LRP heatmaps of the same images on the model
  pruned at each rate against the unpruned model's, by Pearson, Spearman
  and cosine similarity.

All functions are pure; ``perturbation_curves`` runs every step of every
image as one compiled program (the perturbation order is an array, the
steps are mapped inside it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pxp_jax import plot
from pxp_jax.lrp import attribution

ORDERS = ('morf', 'lerf')  # most / least relevant first


# Region perturbation ----------------------------------------------------------


def patch_ids(height: int, width: int, patch_size: int) -> np.ndarray:
  """(H, W) index of each pixel's patch: non-overlapping ``patch_size``
  squares numbered row by row, on a grid centred on the image: where
  ``patch_size`` does not divide a side, the patches along both borders
  are cut (the image padded by half the shortfall on each side, as
  Quantus's RegionPerturbation does)."""
  if patch_size < 1:
    raise ValueError(f'patch_size must be >= 1, got {patch_size}')

  def cells(n):  # cell of each position along a side, and how many
    offset = (-n % patch_size) // 2
    return (np.arange(n) + offset) // patch_size, -(-n // patch_size)

  rows, _ = cells(height)
  columns, count = cells(width)
  return rows[:, None] * count + columns[None, :]


def _maps(relevance) -> jax.Array:
  """(N, H, W) heatmaps of (N, H, W, C) input relevance (``plot.heatmap``,
  not normalised); (N, H, W) heatmaps as they are."""
  relevance = jnp.asarray(relevance)
  return (relevance if relevance.ndim == 3
          else plot.heatmap(relevance, normalize=False))


def patch_relevance(relevance, patch_size: int) -> jax.Array:
  """(N, P): each patch's summed relevance, patches as ``patch_ids``."""
  maps = _maps(relevance)
  ids = patch_ids(*maps.shape[1:], patch_size)
  flat = maps.reshape(maps.shape[0], -1)
  return jnp.zeros((maps.shape[0], int(ids.max()) + 1), flat.dtype).at[
      :, ids.ravel()].add(flat)


def perturbation_order(relevance, patch_size: int, order='morf') -> jax.Array:
  """(N, P): the patches in the order they are perturbed, by summed
  relevance, most relevant first (``'morf'``) or least relevant first
  (``'lerf'``); ties in patch order. ``order`` may be a traced bool
  (True: MoRF)."""
  morf = _is_morf(order)
  scores = patch_relevance(relevance, patch_size)
  return jnp.argsort(jnp.where(morf, -scores, scores), axis=-1, stable=True)


def _is_morf(order):
  if isinstance(order, str):
    if order not in ORDERS:
      raise ValueError(f'order must be one of {ORDERS}, got {order!r}')
    return order == 'morf'
  return order


def removed_counts(patches: int, steps: int | None = None) -> np.ndarray:
  """(steps + 1,) patches perturbed after each step, from 0 to all: one
  patch per step (``steps`` None or at least ``patches``, Samek et al.),
  or ``round(k * patches / steps)`` at step ``k``."""
  steps = patches if not steps else min(int(steps), patches)
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  return np.round(np.arange(steps + 1) * patches / steps).astype(np.int32)


@flax.struct.dataclass
class Curves:
  """Perturbation curves of N images over K steps.

  Attributes:
    fractions: (K + 1,) fraction of the patches perturbed before each
      point (0 first: the unperturbed image).
    logit: (N, K + 1) the explained label's logit at each point.
    probability: (N, K + 1) its softmax probability (over the allowed
      classes).
    order: (N, P) the patches in the order they were perturbed.
  """

  fractions: jax.Array
  logit: jax.Array
  probability: jax.Array
  order: jax.Array


def perturbation_curves(model, variables, images, labels, relevance, *,
                        patch_size: int = 1, order: str = 'morf',
                        baseline=0.0, steps: int | None = None,
                        classes: Sequence[int] | None = None,
                        batch_size: int = 8) -> Curves:
  """Region perturbation (pixel flipping for ``patch_size=1``) of a batch.

  Image ``n`` is cut into patches (``patch_ids``), ordered by their summed
  relevance (``perturbation_order``); ``x_k`` is the image with its first
  ``c_k`` patches set to ``baseline`` (``c_k``: ``removed_counts``), and
  the curve is ``f(x_k)``, the explained label's output, for k = 0..K.
  Every step of every image runs in one compiled program, which is reused
  for other heatmaps, orders and baselines of the same shapes.

  Args:
    model, variables: a flax classifier (``model.apply(variables, x)`` gives
      logits).
    images: (N, H, W, C) model inputs.
    labels: (N,) the explained class of each image.
    relevance: (N, H, W, C) input relevance or (N, H, W) heatmaps.
    patch_size: side of the square patches; 1 flips single pixels.
    order: ``'morf'`` (most relevant first) or ``'lerf'``.
    baseline: the value a perturbed pixel takes: a scalar or (C,) per
      channel, in the model's input space (for normalised inputs a black
      pixel is ``(0 - mean) / std``, the dataset mean is 0).
    steps: points of the curve after 0; None: one patch per step.
    classes: the allowed classes (a few-class task): the probability is the
      softmax over these only. None: all.
    batch_size: steps evaluated together (``batch_size * N`` images per
      model call).

  Returns:
    ``Curves`` with the logit and probability curves.
  """
  shape = np.shape(images)
  if len(shape) != 4 or np.shape(relevance)[:3] != shape[:3] or not (
      np.ndim(relevance) == 3 or np.shape(relevance) == shape):
    raise ValueError(f'images must be (N, H, W, C) and relevance (N, H, W[, '
                     f'C]) of the same images, got {shape} and '
                     f'{np.shape(relevance)}')
  if np.shape(labels) != shape[:1]:
    raise ValueError(f'labels must have shape ({shape[0]},), got '
                     f'{np.shape(labels)}')
  patches = int(patch_ids(*shape[1:3], patch_size).max()) + 1
  counts = removed_counts(patches, steps)
  dtype = jnp.result_type(images)
  # prepared in numpy: a second call with new values compiles nothing
  baseline = np.broadcast_to(np.asarray(baseline, dtype), shape[-1:])
  logit, probability, perturbed = _curves(
      model, variables, images, labels, relevance, np.bool_(_is_morf(order)),
      baseline, counts, None if classes is None else np.asarray(classes),
      patch_size=patch_size, batch_size=max(1, min(batch_size, len(counts))))
  return Curves(fractions=jnp.asarray(counts / patches), logit=logit,
                probability=probability, order=perturbed)


@functools.partial(jax.jit, static_argnames=('model', 'patch_size',
                                             'batch_size'))
def _curves(model, variables, images, labels, relevance, morf, baseline,
            counts, classes, *, patch_size, batch_size):
  """The label's (N, K + 1) logits and probabilities, and the order."""
  maps = _maps(relevance).astype(images.dtype)
  order = perturbation_order(maps, patch_size, morf)
  logits = _perturbed_logits(model, variables, images, order, baseline,
                             counts, patch_size, batch_size)
  allowed = jnp.ones(logits.shape[-1], bool)
  if classes is not None:
    allowed = jnp.zeros_like(allowed).at[classes].set(True)
  probs = jax.nn.softmax(jnp.where(allowed, logits, -jnp.inf), -1)
  pick = lambda a: jnp.take_along_axis(  # noqa: E731
      a, labels[None, :, None], -1)[..., 0].T
  return pick(logits), pick(probs), order


def _perturbed_logits(model, variables, images, order, baseline, counts,
                      patch_size, batch_size):
  """(K + 1, N, classes) logits of every perturbed image: the first
  ``counts[k]`` patches of ``order`` (N, P) set to ``baseline``, the steps
  mapped in chunks of ``batch_size``."""
  n = images.shape[0]
  ids = patch_ids(*images.shape[1:3], patch_size)
  # rank[n, p]: the step (0-based) at which patch p of image n goes
  rank = jnp.zeros_like(order).at[jnp.arange(n)[:, None], order].set(
      jnp.arange(order.shape[1])[None, :])
  pixel_rank = rank[:, ids][..., None]  # (N, H, W, 1)

  def chunk(counts_chunk):  # (B,) -> (B, N, classes)
    removed = pixel_rank[None] < counts_chunk[:, None, None, None, None]
    x = jnp.where(removed, baseline, images[None])
    logits = model.apply(variables, x.reshape((-1,) + images.shape[1:]))
    return logits.reshape(len(counts_chunk), n, -1)

  pad = -len(counts) % batch_size  # repeats of the last count, dropped
  padded = jnp.concatenate([counts, jnp.repeat(counts[-1:], pad)])
  logits = jax.lax.map(chunk, padded.reshape(-1, batch_size))
  return logits.reshape((-1,) + logits.shape[2:])[:len(counts)]


def perturbation_programs() -> int:
  """How many perturbation programs have been compiled in this process."""
  return _curves._cache_size()  # pylint: disable=protected-access


def aopc(curve) -> np.ndarray:
  """(N,) area over the perturbation curve (Samek et al. 2017, eq. 12):
  ``AOPC = 1 / (K + 1) * sum_{k=0..K} (f(x_0) - f(x_k))`` of each image's
  curve ``(N, K + 1)`` (average over images for the paper's value)."""
  curve = np.asarray(curve, np.float64)
  return (curve[:, :1] - curve).mean(1)


def normalized_auc(curve, fractions) -> np.ndarray:
  """(N,) trapezoid area under each curve over the fraction perturbed in
  [0, 1]: its mean height (for probabilities also in [0, 1])."""
  return np.trapezoid(np.asarray(curve, np.float64),
                      np.asarray(fractions, np.float64), axis=1)


def random_heatmaps(seed: int, shape: Sequence[int]) -> jax.Array:
  """Uniform random heatmaps of ``shape`` (N, H, W): a random perturbation
  order, the baseline every explanation should beat."""
  return jax.random.uniform(jax.random.key(seed), tuple(shape))


def _mean_sem(values) -> tuple[np.ndarray, np.ndarray]:
  """Mean over the first axis and its standard error (0 for one row);
  non-finite rows are left out."""
  values = np.asarray(values, np.float64)
  finite = np.isfinite(values)
  n = finite.sum(0)
  kept = np.where(finite, values, 0.0)
  mean = kept.sum(0) / np.maximum(n, 1)
  var = np.where(finite, (values - mean) ** 2, 0.0).sum(0) / np.maximum(
      n - 1, 1)
  return mean, np.sqrt(var / np.maximum(n, 1))


def summarize(curves: Curves) -> dict:
  """JSON-ready: per output (``logit``, ``probability``) the mean curve and
  its standard error over images, AOPC and normalised AUC (mean and
  standard error over images)."""
  out = {'fractions': np.asarray(curves.fractions).tolist()}
  for name in ('logit', 'probability'):
    curve = np.asarray(getattr(curves, name))
    mean, sem = _mean_sem(curve)
    a_mean, a_sem = _mean_sem(aopc(curve))
    u_mean, u_sem = _mean_sem(normalized_auc(curve, curves.fractions))
    out[name] = dict(aopc=float(a_mean), aopc_sem=float(a_sem),
                     auc=float(u_mean), auc_sem=float(u_sem),
                     curve=mean.tolist(), curve_sem=sem.tolist())
  return out


def lrp_heatmaps(model, variables, images, labels,
                 composites: Mapping[str, object], *, masks=None,
                 batch_size: int = 32,
                 check_finite: bool = True) -> dict[str, np.ndarray]:
  """name -> (N, H, W) LRP heatmaps of ``images`` for ``labels`` by each
  composite (``pxp_jax.attribute``, in batches of ``batch_size``, the last
  padded so that one program serves all), on the model pruned by ``masks``
  (unit key -> (units,)) if given; ``check_finite=False`` lets a NaN or a
  zero target logit (a pruned model's) through instead of raising."""
  images, labels = np.asarray(images), np.asarray(labels)
  out = {}
  for name, composite in composites.items():
    out[name] = _batched(lambda x, y, c=composite: plot.heatmap(  # noqa: E731
        attribution.attribute(model, variables, x, y, c, masks=masks,
                              check_finite=check_finite).input,
        normalize=False), images, labels, batch_size)
  return out


def _batched(fn: Callable, images, labels, batch_size: int) -> np.ndarray:
  n = len(labels)
  size = min(batch_size, n)
  parts = []
  for start in range(0, n, size):
    x, y = images[start:start + size], labels[start:start + size]
    pad = size - len(y)  # the last batch: repeat its last image
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, 0)])
    parts.append(np.asarray(fn(jnp.asarray(x), jnp.asarray(y)))[:size - pad])
  return np.concatenate(parts)


def compare(model, variables, images, labels,
            heatmaps: Mapping[str, jax.Array], *, patch_size: int = 1,
            order: str = 'morf', baseline=0.0, steps: int | None = None,
            classes: Sequence[int] | None = None,
            batch_size: int = 8) -> dict:
  """Region perturbation of several heatmaps of the same images (see
  ``perturbation_curves``; one compiled program serves all of them).

  Returns:
    JSON-ready ``{'patch_size', 'order', 'steps', 'images', 'fractions',
    'heatmaps': {name: {'logit': summary, 'probability': summary}}}`` with
    ``summarize``'s AOPC, normalised AUC and mean curve per heatmap.
  """
  results = {}
  for name, maps in heatmaps.items():
    curves = perturbation_curves(
        model, variables, images, labels, maps, patch_size=patch_size,
        order=order, baseline=baseline, steps=steps, classes=classes,
        batch_size=batch_size)
    results[name] = summarize(curves)
  fractions = next(iter(results.values())).pop('fractions')
  for summary in results.values():
    summary.pop('fractions', None)
  return {'patch_size': patch_size, 'order': order,
          'steps': len(fractions) - 1, 'images': len(labels),
          'baseline': np.asarray(baseline, np.float64).tolist(),
          'fractions': fractions, 'heatmaps': results}


# Stability under pruning --------------------------------------------------------


def _flat(a) -> jax.Array:
  a = jnp.asarray(a)
  return a.reshape(a.shape[0], -1)


def cosine(a, b) -> jax.Array:
  """(N,) cosine similarity ``<a, b> / (|a| |b|)`` of each pair of
  heatmaps (0 where one is all zero)."""
  a, b = _flat(a), _flat(b)
  den = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(b * b, -1))
  num = jnp.sum(a * b, -1)
  # sqrt(s * s) == s exactly in binary floating point: identical maps give 1
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0.0)


def pearson(a, b) -> jax.Array:
  """(N,) Pearson correlation of each pair of heatmaps: the cosine
  similarity of the centred maps (0 where one is constant)."""
  a, b = _flat(a), _flat(b)
  return cosine(a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True))


def ranks(a) -> jax.Array:
  """(N, D) ranks (1..D) of each flattened row, ties given their average
  rank (as ``scipy.stats.rankdata``)."""
  a = _flat(a)
  ordered = jnp.sort(a, -1)
  below = jax.vmap(functools.partial(jnp.searchsorted, side='left'))(
      ordered, a)
  up_to = jax.vmap(functools.partial(jnp.searchsorted, side='right'))(
      ordered, a)
  return (below + up_to + 1) / 2


def spearman(a, b) -> jax.Array:
  """(N,) Spearman rank correlation: the Pearson correlation of the
  average ranks (``ranks``)."""
  return pearson(ranks(a), ranks(b))


SIMILARITIES: dict[str, Callable] = {'pearson': pearson,
                                     'spearman': spearman, 'cosine': cosine}


def stability(model, variables, images, labels, composite, masks: Mapping, *,
              batch_size: int = 32) -> dict[str, np.ndarray]:
  """Heatmap stability under pruning.

  LRP heatmaps of ``images`` on the model pruned by each row of ``masks``
  against the heatmaps of the unpruned model (all-ones masks, the same
  compiled program: identical maps give exactly 1).

  Args:
    model, variables, images, labels: the model and the explained images.
    composite: the LRP composite of the heatmaps.
    masks: unit key -> (R, units) masks, one row per pruning rate
      (``pxp_jax.prune.ranking.masks``).
    batch_size: images per relevance pass.

  Returns:
    similarity name (``SIMILARITIES``) -> (R, N) similarity of each image's
    heatmap at each rate with its unpruned heatmap: 0 where the pruned
    heatmap is all zero (a model pruned so far that its logits no longer
    depend on the input), NaN where its relevance is not finite.
  """
  masks = {k: np.asarray(v) for k, v in masks.items()}
  rows = len(next(iter(masks.values())))
  heat = functools.partial(lrp_heatmaps, model, variables, images, labels,
                           {'lrp': composite}, batch_size=batch_size,
                           check_finite=False)
  reference = heat(masks={k: np.ones_like(v[0]) for k, v in masks.items()})
  reference = jnp.asarray(reference['lrp'])
  out = {name: [] for name in SIMILARITIES}
  for r in range(rows):
    pruned = jnp.asarray(heat(masks={k: v[r] for k, v in masks.items()})[
        'lrp'])
    finite = jnp.all(jnp.isfinite(_flat(pruned)), -1)
    for name, similarity in SIMILARITIES.items():
      value = similarity(reference, jnp.where(jnp.isfinite(pruned), pruned, 0))
      out[name].append(np.asarray(jnp.where(finite, value, jnp.nan)))
  return {name: np.stack(v) for name, v in out.items()}


def summarize_stability(rates: Sequence[float],
                        similarities: Mapping[str, np.ndarray]) -> dict:
  """JSON-ready ``{'rates', name: {'mean', 'sem'}}``: per rate the mean
  similarity over images and its standard error (finite values only)."""
  out = {'rates': [float(r) for r in rates]}
  for name, values in similarities.items():
    mean, sem = _mean_sem(np.asarray(values).T)
    out[name] = {'mean': mean.tolist(), 'sem': sem.tolist()}
  return out
