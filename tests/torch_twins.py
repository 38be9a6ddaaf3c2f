"""What the oracle tests do to torch models before comparing with ours."""


def randomise_batch_norms(torch_model) -> None:
  """Gives every BatchNorm2d of ``torch_model`` (in place, from torch's
  global seed) statistics and affine parameters far from the identity, so
  that folding them is really exercised."""
  import torch  # pylint: disable=g-import-not-at-top
  for module in torch_model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.normal_(0, 0.1)
      module.running_var.uniform_(0.5, 1.5)
      module.weight.data.uniform_(0.5, 1.5)
      module.bias.data.normal_(0, 0.1)


def zennit_relevance(model, x, targets, composite, observed, num_classes):
  """zennit's attribution of ``model`` (float64) at the NHWC images ``x``
  with one-hot ``targets`` of ``num_classes``: ``(logits, NHWC input
  relevance, {path: relevance at the output of observed[path]})``."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from zennit.attribution import Gradient  # pylint: disable=g-import-not-at-top
  grads = {}

  def capture(path):
    def hook(module, inputs, output):
      del module, inputs
      output.register_hook(lambda g: grads.__setitem__(path, g.detach()))
    return hook

  inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  inputs.requires_grad_(True)
  one_hot = torch.nn.functional.one_hot(torch.from_numpy(targets).long(),
                                        num_classes).double()
  with Gradient(model, composite) as attributor:
    handles = [m.register_forward_hook(capture(p))
               for p, m in observed.items()]
    try:
      logits, relevance = attributor(inputs, one_hot)
    finally:
      for handle in handles:
        handle.remove()
  return (logits.detach().numpy(),
          relevance.detach().numpy().transpose(0, 2, 3, 1), grads)
