"""Margins that keep the oracle tests away from ties.

Max pooling sends all of a window's gradient (and LRP relevance) to its
largest value, and a ReLU's gradient switches at 0; both turn on the last bit
of the values before them. Two implementations, or one on two CPUs, that
round a convolution differently can pick different winners: the relevance
then moves to another pixel and no tolerance covers it. The oracle tests run
in float64 and check with these helpers that their seeded inputs keep every
window's two largest values, and every ReLU input, a margin away from a tie,
far above float64 rounding (about 1e-16 of the values), so a seed with a
near-tie fails with a message instead of flipping silently.

A window whose largest value is exactly 0 is skipped: after a ReLU it holds
zeros that are exactly 0 on both sides (the ReLU margin keeps them there),
which pass no relevance and tie-break alike (the first maximum).
"""

import numpy as np

# Smallest allowed gap, relative to the largest |value| at that layer: 1e6
# times float64 rounding, and far below what seeded noise leaves (1e-7 and
# more seen).
MARGIN = 1e-10


def pool_gap(x, window, stride, padding=0):
  """The smallest gap between the largest and second-largest value of a
  square max-pooling window over NHWC ``x`` (padded with -inf), relative to
  max |x|, among windows whose largest value is not 0; inf if none."""
  x = np.asarray(x, np.float64)
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  xp = np.pad(x, pad, constant_values=-np.inf)
  windows = np.lib.stride_tricks.sliding_window_view(
      xp, (window, window), axis=(1, 2))[:, ::stride, ::stride]
  windows = windows.reshape(*windows.shape[:4], window * window)
  top2 = np.partition(windows, -2, axis=-1)[..., -2:]
  live = top2[..., 1] != 0
  if not live.any():
    return np.inf
  return float((top2[..., 1] - top2[..., 0])[live].min() / np.abs(x).max())


def relu_gap(z):
  """min |z| / max |z|: how close a ReLU input comes to the switch at 0."""
  z = np.abs(np.asarray(z, np.float64))
  return float(z.min() / z.max())


def check(gaps, margin=MARGIN):
  """Fails, naming the layer, if any gap in ``{layer: gap}`` is below
  ``margin``."""
  assert gaps, 'no max pooling or ReLU was observed'
  close = {k: f'{v:.1e}' for k, v in gaps.items() if not v > margin}
  assert not close, (
      f'the seeded input comes within {margin} (relative) of a tie at '
      f'{close}: the winner of a max-pooling window or the side of a ReLU '
      'could differ between implementations or CPUs; change the seed')


def torch_gaps(torch_model, inputs, relu=True):
  """{module path: gap} of every ``MaxPool2d`` (and ``ReLU`` input) of
  ``torch_model`` on NCHW ``inputs``, read by forward pre-hooks (before an
  in-place ReLU changes its input)."""
  import torch  # pylint: disable=g-import-not-at-top
  gaps = {}

  def keep(path, module):
    def hook(_, args):
      a = args[0].detach().permute(0, 2, 3, 1).numpy() if args[0].ndim == 4 \
          else args[0].detach().numpy()
      if isinstance(module, torch.nn.MaxPool2d):
        size = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731
        gap = pool_gap(a, size(module.kernel_size),
                       size(module.stride or module.kernel_size),
                       size(module.padding))
      else:
        gap = relu_gap(a)
      gaps[path] = min(gaps.get(path, np.inf), gap)  # a ReLU runs many times
    return hook

  kinds = (torch.nn.MaxPool2d, torch.nn.ReLU) if relu else (
      torch.nn.MaxPool2d,)
  handles = [m.register_forward_pre_hook(keep(p, m))
             for p, m in torch_model.named_modules() if isinstance(m, kinds)]
  try:
    with torch.no_grad():
      torch_model(inputs)
  finally:
    for handle in handles:
      handle.remove()
  return gaps


def flax_outputs(model, variables, x, names):
  """{module path: output} of the submodules of ``model`` named one of
  ``names``, by flax's method interception."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  seen = {}

  def keep(f, args, kwargs, context):
    out = f(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name in names:
      seen['.'.join(context.module.path)] = np.asarray(out)
    return out

  with nn.intercept_methods(keep):
    model.apply(variables, x)
  return seen
