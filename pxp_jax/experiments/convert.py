r"""Pretrained weights -> a checkpoint folder for the jobs.

  pxp-convert --source=torchvision --model=resnet50 \
      --weights=resnet50-11ad3fa6.pth --out=ckpt/resnet50
  pxp-convert --source=timm --model=vit_base_patch16_224 \
      --weights=model.safetensors --out=ckpt/vit_b16 --preprocess=inception

Then ``--config.model=ckpt/resnet50`` (or the ImageNet recipes,
the shipped config ``imagenet``) prunes it.
"""

from absl import app, flags

from pxp_jax.experiments import cli
from pxp_jax.jobs import convert

_SOURCE = flags.DEFINE_enum('source', 'torchvision', list(convert.SOURCES),
                            'Where the weights come from.')
_MODEL = flags.DEFINE_string('model', None, "The source's model name.",
                             required=True)
_WEIGHTS = flags.DEFINE_string('weights', None, 'The weights file.',
                               required=True)
_OUT = flags.DEFINE_string('out', None, 'The checkpoint folder to write.',
                           required=True)
_PREPROCESS = flags.DEFINE_enum(
    'preprocess', 'imagenet', list(convert.PREPROCESS),
    "The weights' eval preprocessing: imagenet (torchvision's resize 256, "
    'crop 224, ImageNet mean/std) or inception (mean = std = 0.5).')
_DATASET = flags.DEFINE_string('dataset', 'imagenet2012',
                               'The TFDS dataset the model classifies.')


def main(argv):
  cli.start(argv)
  out = convert.convert(_SOURCE.value, _MODEL.value, _WEIGHTS.value, _OUT.value,
                        preprocess=_PREPROCESS.value, dataset=_DATASET.value)
  print(f'wrote {out}')


def run():
  """The ``pxp-convert`` console script."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
