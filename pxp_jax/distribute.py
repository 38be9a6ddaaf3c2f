"""Devices and processes: the job's mesh, its batches, and process 0.

A job runs as one program over a ``jax.sharding.Mesh`` (JAX's SPMD): the
``data`` axis splits every batch, the ``rows`` axis splits the sweep's mask
rows (criteria x rates), parameters are replicated. On a pod every host runs
the same program (JAX's multi-controller runtime, ``initialize``): each
process reads its own part of every batch (``process_rows``), the arrays are
assembled into global ones (``global_batch``), results come back to every
process (``to_host``), and files are written by process 0 (``is_primary``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ('data', 'rows')


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Starts JAX's multi-process runtime, once, before any computation.

  With ``coordinator_address`` (``host:port`` of process 0), every process
  passes the same address and count and its own id; without it the
  runtime is started only where JAX detects a cluster by itself (a
  multi-host Cloud TPU slice, SLURM, Open MPI), and a single process is
  left alone. ``jax.distributed.initialize``'s errors name what is wrong.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and '
                       '--process_id (this process, 0 to num_processes - 1)')
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id must lie in [0, {num_processes}), got '
                       f'{process_id}')
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif num_processes not in (None, 1) or process_id not in (None, 0):
    raise ValueError('--num_processes and --process_id need '
                     '--coordinator_address (host:port of process 0)')
  elif _detected_cluster():
    jax.distributed.initialize()


def _detected_cluster() -> bool:
  """A multi-host TPU slice or a SLURM / Open MPI job of several tasks: the
  clusters ``jax.distributed.initialize()`` configures itself."""
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return (',' in hosts or int(os.environ.get('SLURM_NTASKS', '1')) > 1
          or int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The job's mesh over ``devices`` (default: every device of every
  process) with axes ``AXES``; ``shape`` gives their sizes, one of them -1
  for the devices the others leave (default: all ``data``)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = {'data': -1, 'rows': 1, **dict(shape or {})}
  unknown = set(sizes) - set(AXES)
  if unknown:
    raise ValueError(f'mesh axes are {AXES}, got {sorted(unknown)}')
  free = [a for a in AXES if sizes[a] == -1]
  fixed = math.prod(sizes[a] for a in AXES if sizes[a] != -1)
  if len(free) > 1 or any(sizes[a] < 1 for a in AXES if a not in free):
    raise ValueError(f'mesh sizes must be positive, one of them may be -1; '
                     f'got {sizes}')
  if free:
    if len(devices) % fixed:
      raise ValueError(f'mesh {sizes}: {len(devices)} devices are not a '
                       f'multiple of {fixed}')
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f'mesh {sizes} needs {math.prod(sizes.values())} '
                     f'devices, this job has {len(devices)}: set '
                     '--config.mesh.data=-1 or sizes whose product is that')
  if sizes['data'] % jax.process_count():
    raise ValueError(f'mesh {sizes}: with {jax.process_count()} processes the '
                     'data axis must be a multiple of the process count')
  grid = np.asarray(devices).reshape([sizes[a] for a in AXES])
  return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (parameters, masks)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over the ``data`` axis."""
  return NamedSharding(mesh, PartitionSpec('data'))


def replicate(tree, mesh: Mesh):
  """``tree``'s arrays placed on every device of ``mesh`` (the same values
  on every process)."""
  sharding = replicated(mesh)

  def put(x):
    if _on(x, sharding):
      return x
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)

  return jax.tree.map(put, tree)


def _on(x, sharding) -> bool:
  return isinstance(x, jax.Array) and x.sharding == sharding


def batch_multiple(mesh: Mesh) -> int:
  """A global batch's size must be a multiple of this (the data axis)."""
  return mesh.shape['data']


def process_rows(global_size: int) -> slice:
  """The rows of a global batch of ``global_size`` that this process reads
  (contiguous, equal parts: ``global_size`` is a multiple of the process
  count, as it is of the data axis)."""
  count, index = jax.process_count(), jax.process_index()
  if global_size % count:
    raise ValueError(f'a global batch of {global_size} does not split over '
                     f'{count} processes')
  part = global_size // count
  return slice(index * part, (index + 1) * part)


def local_batch(global_size: int, mesh: Mesh) -> int:
  """This process's examples of a global batch of ``global_size``: an equal
  part, rounded up to a multiple of its devices on the data axis."""
  share = batch_multiple(mesh) // jax.process_count()
  part = -(-global_size // jax.process_count())
  return -(-part // share) * share


def process_part(source):
  """This process's contiguous part of a random-access data source (all of
  it on one process): the examples it reads."""
  if jax.process_count() == 1:
    return source
  from pxp_jax import data  # pylint: disable=import-outside-toplevel
  parts = np.array_split(np.arange(len(source)), jax.process_count())
  return data.Subset(source, parts[jax.process_index()])


def batch_count(examples: int, local_size: int) -> int:
  """Batches of ``local_size`` every process runs over ``examples`` split
  into ``process_part``s (the largest part's count)."""
  largest = -(-examples // jax.process_count())
  return -(-largest // local_size)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh,
                 global_size: int) -> dict[str, jax.Array]:
  """Global arrays of ``global_size`` rows, split over the data axis, from
  this process's rows ``local`` (its ``process_rows``)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (global_size, *np.shape(v)[1:]))
          for k, v in local.items()}


def on_devices(batch: Mapping[str, np.ndarray], mesh: Mesh | None
               ) -> dict[str, jax.Array]:
  """A training batch as arrays: this process's rows made global over the
  data axis of ``mesh`` (every process passes its own part), or as they
  are without a mesh."""
  if mesh is None:
    return {k: jnp.asarray(v) for k, v in batch.items()}
  size = len(next(iter(batch.values()))) * jax.process_count()
  return global_batch(batch, mesh, size)


def global_batches(batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh,
                   n_batches: int | None = None,
                   batch_size: int | None = None
                   ) -> Iterator[dict[str, jax.Array]]:
  """Global ``{'image', 'label'}`` batches split over the data axis, from
  this process's ``batches``, each padded to ``batch_size`` rows per process
  (default: the first batch's, rounded up to the process's devices; zero
  images, label -1: never a class). On several processes every process
  passes the same ``n_batches`` and ``batch_size``; one out of batches
  contributes padding."""
  share = batch_multiple(mesh) // jax.process_count()
  batches = iter(batches)
  done, empty = 0, None
  while n_batches is None or done < n_batches:
    batch = next(batches, None)
    if batch is None and n_batches is None:
      return
    if batch is None:  # this process is out of data: padding only
      if empty is None:
        raise ValueError('this process has no examples to evaluate: use '
                         'fewer processes than examples')
      batch = empty
    image, label = np.asarray(batch['image']), np.asarray(batch['label'])
    if batch_size is None:
      batch_size = -(-len(label) // share) * share
    if len(label) > batch_size:
      raise ValueError(f'a batch of {len(label)} exceeds batch_size '
                       f'{batch_size}')
    empty = dict(image=image[:0], label=label[:0])
    missing = batch_size - len(label)
    padded = dict(
        image=np.concatenate([image, np.zeros((missing, *image.shape[1:]),
                                              image.dtype)]),
        label=np.concatenate([label, np.full(missing, -1, label.dtype)]))
    yield global_batch(padded, mesh, batch_size * jax.process_count())
    done += 1


def to_host(x) -> np.ndarray:
  """A global array's value on every process."""
  if (isinstance(x, jax.Array) and not x.is_fully_addressable
      and not x.is_fully_replicated):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def is_primary() -> bool:
  """Process 0 writes the job's files."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches ``name`` (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def describe(mesh: Mesh | None = None) -> dict[str, object]:
  """What a job ran on: device and process counts, platform, mesh."""
  out = dict(devices=jax.device_count(), processes=jax.process_count(),
             platform=jax.devices()[0].platform,
             device_kind=jax.devices()[0].device_kind)
  if mesh is not None:
    out['mesh'] = dict(mesh.shape)
  return out
