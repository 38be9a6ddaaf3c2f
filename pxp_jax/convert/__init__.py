"""Pretrained weights from torchvision, timm and big_vision, as flax variables.

Each ``from_*`` function builds the matching model and returns
``(model, variables)``. They share one mechanism: the expected names and
shapes come from ``jax.eval_shape(model.init, ...)``; a per-family *plan*
says, for every expected array, which checkpoint arrays it is made of and how
their layout changes (torch conv ``(O, I, kh, kw)`` -> flax ``(kh, kw, I, O)``,
linear ``(O, I)`` -> ``(I, O)``, big_vision's per-head query/key/value ->
one fused ``qkv``). Loading is loud: anything missing, left over or of the
wrong shape raises one ``CheckpointMismatchError`` that names every such array
in the checkpoint's own names.

A checkpoint is a mapping of names to numpy or torch arrays, or a file:
``.safetensors`` and ``.npz`` are read without torch; ``.pth``, ``.pt``,
``.bin`` and ``.ckpt`` need torch (``torch.load(weights_only=True)``).

Modules: ``reading`` (files and wrappers -> flat numpy dict), ``assemble``
(the shared plan mechanism and its error), ``torchvision_timm`` and
``big_vision`` (one family's plan and loaders each), ``export`` (variables,
slim ones too, back to the torch state dicts their family spec exports to:
``to_torchvision`` for ResNets and VGGs, ``to_timm`` for ConvNeXts,
``save_torchvision``).
"""

from pxp_jax.convert.assemble import CheckpointMismatchError
from pxp_jax.convert.big_vision import from_big_vision, to_big_vision
from pxp_jax.convert.export import (save_torchvision, to_timm, to_torch,
                                    to_torchvision)
from pxp_jax.convert.reading import read_checkpoint
from pxp_jax.convert.torchvision_timm import from_timm, from_torchvision

__all__ = ['CheckpointMismatchError', 'from_big_vision', 'from_timm',
           'from_torchvision', 'read_checkpoint', 'save_torchvision',
           'to_big_vision', 'to_timm', 'to_torch', 'to_torchvision']
