"""Wall-clock timing shared by the benchmarks: one warm-up call (compilation,
caches), then ``reps`` timed calls, each waiting for JAX's results."""

import statistics
import time

import jax


def times(fn, reps: int) -> list[float]:
  """Seconds of ``reps`` calls of ``fn`` after a warm-up call."""
  jax.block_until_ready(fn())
  out = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - start)
  return out


def median_seconds(fn, reps: int) -> float:
  return statistics.median(times(fn, reps))


def best_seconds(fn, reps: int = 3) -> float:
  return min(times(fn, reps))
