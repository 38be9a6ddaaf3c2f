"""The papers' ImageNet recipes end to end, on a small synthetic ImageNet.

The data is written in the imagenet2012 TFDS format (TFDS's own builder
reads it back: its name, version, features and array_record files) with a
few random JPEGs for the classes the seeded draws pick; the model is a
torchvision ResNet-18 with random weights, converted by the convert job.
"""

import io
import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # full-size torchvision models through the jobs

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

# pylint: disable=g-import-not-at-top,g-bad-import-order
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from experiments.configs import imagenet as imagenet_configs
from pxp_jax import checkpoints, data
from pxp_jax.jobs import convert, draws, prune, search, task as task_lib
# pylint: enable=g-import-not-at-top,g-bad-import-order

SEEDS = (0, 1)  # the draws of the runlocal recipes
TRAIN, VALIDATION = 6, 3  # images per class


def _jpeg(rng) -> bytes:
  pixels = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, 'JPEG')
  return out.getvalue()


def _write_imagenet(data_dir, classes):
  """A prepared imagenet2012 with TRAIN / VALIDATION JPEGs per class."""
  real = tfds.builder_cls('imagenet2012')

  class Synthetic(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = 'imagenet2012'
    VERSION = real.VERSION
    code_path = epath.Path(__file__)

    def _info(self):
      from tensorflow_datasets.datasets.imagenet2012 import imagenet_common  # pylint: disable=g-import-not-at-top
      return tfds.core.DatasetInfo(
          builder=self, supervised_keys=('image', 'label'),
          features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(
                  names_file=imagenet_common.label_names_file()),
              'file_name': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples('train', TRAIN),
              'validation': self._generate_examples('validation', VALIDATION)}

    def _generate_examples(self, split, count):
      rng = np.random.default_rng(len(split))
      for c in classes:
        for i in range(count):
          name = f'{split}_{c}_{i}.JPEG'
          yield name, {'image': _jpeg(rng), 'label': c, 'file_name': name}

  Synthetic(data_dir=data_dir).download_and_prepare(file_format='array_record')


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  """(data_dir, checkpoint folder) of the synthetic ImageNet and ResNet-18."""
  root = tmp_path_factory.mktemp('imagenet')
  classes = sorted({c for s in SEEDS
                    for c in data.draw_classes(1000, 3, s)})
  _write_imagenet(str(root / 'tfds'), classes)
  torch.manual_seed(0)
  net = torchvision.models.resnet18(num_classes=1000).eval()
  torch.save(net.state_dict(), root / 'resnet18.pth')
  small = data.Preprocess(72, 64, mean=data.IMAGENET.mean,
                          std=data.IMAGENET.std)  # small images, fast tests
  out = convert.convert('torchvision', 'resnet18', root / 'resnet18.pth',
                        root / 'ckpt' / 'resnet18', preprocess=small)
  return str(root / 'tfds'), str(out)


@pytest.mark.slow
def test_converted_checkpoint_is_the_torchvision_model(imagenet):
  _, ckpt = imagenet
  model, variables = checkpoints.load(ckpt)
  recipe = checkpoints.recipe(ckpt)
  assert recipe['model'] == 'resnet18' and recipe['overrides'] == {}
  assert recipe['dataset'] == 'imagenet2012' and recipe['num_classes'] == 1000
  torch.manual_seed(0)
  net = torchvision.models.resnet18(num_classes=1000).eval()
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  # float32 rounding of two implementations (logits of a few units); logits
  # are continuous, so no tie in a pooling window can move them
  np.testing.assert_allclose(model.apply(variables, x), expected, atol=1e-4)


@pytest.mark.slow
def test_prune_recipe_over_class_draws(imagenet, tmp_path):
  data_dir, ckpt = imagenet
  config = imagenet_configs.get_config('job=prune,arch=resnet18,classes=3,'
                                       'runlocal')
  config.model, config.data_dir = ckpt, data_dir
  config.criteria = ('lrp', 'random', 'weight')
  config.heatmaps = 2
  summary = draws.repeat(prune.prune, config, tmp_path, stem='results')
  assert summary['draws'] == 2 and summary['split'] == 'validation'
  drawn = [data.draw_classes(1000, 3, s) for s in SEEDS]
  assert summary['classes'] == drawn and drawn[0] != drawn[1]
  for k in range(2):  # each draw is a whole run in its own folder
    run = json.loads((tmp_path / f'draw_{k}' / 'results.json').read_text())
    assert run['classes'] == drawn[k]
    assert run['config']['seed'] == k
  lrp = summary['criteria']['lrp']
  assert len(lrp['accuracy_per_draw']) == 2 and lrp['a_pr_sem'] >= 0
  assert lrp['a_pr'] == pytest.approx(np.mean(lrp['accuracy_per_draw']))
  assert json.loads((tmp_path / 'results.json').read_text()) == summary
  assert (tmp_path / 'curve.png').stat().st_size > 1000
  # A re-run resumes every draw from its saved scores.
  again = draws.repeat(prune.prune, config, tmp_path, stem='results')
  assert again == summary


@pytest.mark.slow
def test_search_recipe_validates_on_a_train_holdout(imagenet, tmp_path):
  data_dir, ckpt = imagenet
  config = imagenet_configs.get_config('job=search,arch=resnet18,classes=3,'
                                       'runlocal')
  config.model, config.data_dir = ckpt, data_dir
  config.draws, config.sampler = 1, 'tpe'
  assert config.validation_split == 'train'
  assert config.test_split == 'validation'
  draws.repeat(search.search, config, tmp_path, stem='comparison',
               n_trials=2)
  comparison = json.loads((tmp_path / 'comparison.json').read_text())
  assert comparison['split'] == 'validation'
  assert comparison['classes'] == data.draw_classes(1000, 3, 0)
  # The holdout the trials are scored on: 2 per class, none a reference.
  task = task_lib.Task.from_config(config)
  holdout = task.source('train')
  references = task.reference_indices()
  assert len(holdout) == 3 * 2 and len(references) == 3 * 2
  assert not set(holdout.indices) & set(references)
  assert sorted(np.unique(holdout.labels)) == task.classes
  # The official validation split is read whole (3 images per class).
  assert len(task.source('validation')) == 3 * VALIDATION


def test_recipe_arguments_are_checked():
  with pytest.raises(ValueError, match="unknown arch 'resnet152'"):
    imagenet_configs.get_config('arch=resnet152')
  with pytest.raises(ValueError, match="unknown job 'train'"):
    imagenet_configs.get_config('job=train')
  config = imagenet_configs.get_config('job=search,arch=vit_b16,classes=1000')
  assert config.class_draw == 0 and config.draws == 1  # all classes
  assert not config.cache_eval  # 1000 classes are streamed
  assert config.model == 'ckpt/vit_b16'
