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
