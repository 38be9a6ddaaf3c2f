"""Tests for pxp_jax.data: digits, sources, preprocessing and pipeline."""

import io
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import sklearn.datasets
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from pxp_jax import data
from pxp_jax.data import digits

SPLITS = {'train': 1078, 'validation': 359, 'test': 360}


@pytest.fixture(scope='module')
def prepared_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def splits(prepared_dir):
  return {s: data.load('digits', s, data_dir=prepared_dir) for s in SPLITS}


def _records(source):
  return [source[i] for i in range(len(source))]


@pytest.mark.slow
def test_digits_prepares_and_reads_without_tensorflow(tmp_path):
  # A fresh process, so nothing else has imported TensorFlow; where it is
  # installed, TFDS would import it lazily if it needed it.
  script = textwrap.dedent(f"""
      import sys
      from pxp_jax import data
      for split in ('train', 'validation', 'test'):
        source = data.load('digits', split, data_dir={str(tmp_path)!r})
        assert source[len(source) - 1]['image'].shape == (32, 32, 3)
        print('count', split, len(source))
      assert 'tensorflow' not in sys.modules
      """)
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                       text=True, cwd=root, env={**os.environ,
                                                 'PYTHONPATH': str(root)})
  assert out.returncode == 0, out.stderr[-3000:]
  counts = [line.split()[1:] for line in out.stdout.splitlines()
            if line.startswith('count ')]  # TFDS prints progress too
  assert counts == [[s, str(n)] for s, n in SPLITS.items()]


def test_digits_splits_are_disjoint_stratified_and_documented(splits):
  assert {s: len(src) for s, src in splits.items()} == SPLITS
  targets = sklearn.datasets.load_digits().target
  per_class = np.bincount(targets)
  indices = []
  for name, source in splits.items():
    assert source.num_classes == 10
    records = _records(source)
    assert records[0]['image'].shape == (32, 32, 3)
    assert records[0]['image'].dtype == np.uint8
    idx = np.array([r['index'] for r in records])
    assert np.all(np.diff(idx) > 0)  # sklearn's order
    np.testing.assert_array_equal(source.labels, targets[idx])
    fraction = {'train': 0.6, 'validation': 0.2, 'test': 0.2}[name]
    assert np.all(np.abs(np.bincount(source.labels, minlength=10)
                         - fraction * per_class) <= 1)
    indices.append(idx)
  np.testing.assert_array_equal(np.sort(np.concatenate(indices)),
                                np.arange(1797))


def test_digits_is_deterministic_across_preparations(splits, tmp_path):
  for name, source in splits.items():
    again = data.load('digits', name, data_dir=tmp_path)
    for a, b in zip(_records(source), _records(again), strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      assert a['label'] == b['label'] and a['index'] == b['index']


def _bilinear_x4(image):
  """PIL's BILINEAR upsampling by 4: half-pixel centres, clamped edges."""
  centres = (np.arange(32) + 0.5) / 4 - 0.5
  rows = np.stack([np.interp(centres, np.arange(8), r) for r in image])
  return np.stack([np.interp(centres, np.arange(8), c) for c in rows.T]).T


def test_digits_images_are_sklearn_digits_upsampled(splits):
  sk = sklearn.datasets.load_digits()
  for record in _records(splits['validation']):
    expected = _bilinear_x4(sk.images[record['index']] * 255 / 16)
    image = record['image'].astype(np.float64)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    # Within rounding (ties such as 127.5 may go either way in float32).
    assert np.abs(image[..., 1] - expected).max() <= 0.5 + 1e-3
    assert record['label'] == sk.target[record['index']]
  np.testing.assert_array_equal(
      digits.upsample(np.full((8, 8), 16.0)), np.full((32, 32, 3), 255))


def test_missing_dataset_fails_fast_naming_what_to_do(tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.load('mnist', 'train', data_dir=tmp_path)
  assert time.monotonic() - start < 10
  assert 'mnist' in str(error.value) and str(tmp_path) in str(error.value)
  assert isinstance(error.value, FileNotFoundError)

  for manual_dir in (None, tmp_path / 'manual'):
    with pytest.raises(data.DatasetNotFoundError) as error:
      data.load('imagenet2012', 'validation', data_dir=tmp_path,
                manual_dir=manual_dir)
    message = str(error.value)
    for needed in ('imagenet2012', str(tmp_path), 'manual_dir',
                   'ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'):
      assert needed in message
  assert time.monotonic() - start < 10

  with pytest.raises(data.DatasetNotFoundError, match='not a TFDS dataset'):
    data.load('no_such_dataset', 'train', data_dir=tmp_path)


def test_unknown_split_lists_the_splits(splits, prepared_dir):
  with pytest.raises(ValueError, match=r"'test', 'train', 'validation'"):
    data.load('digits', 'val', data_dir=prepared_dir)
  assert len(data.load('digits', 'train[:10]+test', data_dir=prepared_dir)) == 370


class PngDigitsForTest(tfds.core.GeneratorBasedBuilder):
  """Digits stored PNG-encoded, as imagenet2012 stores JPEGs."""

  VERSION = tfds.core.Version('1.0.0')
  code_path = epath.Path(__file__)  # see pxp_jax.data.digits

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    sk = sklearn.datasets.load_digits()
    for i in range(12):
      png = io.BytesIO()
      Image.fromarray(digits.upsample(sk.images[i])).save(png, 'PNG')
      png.seek(0)  # encoded bytes pass through TFDS without TensorFlow
      yield i, {'image': png, 'label': int(sk.target[i])}


def test_load_decodes_encoded_images(tmp_path):
  PngDigitsForTest(data_dir=tmp_path).download_and_prepare(
      file_format='array_record')
  source = data.load('png_digits_for_test', 'train', data_dir=tmp_path)
  sk = sklearn.datasets.load_digits()
  np.testing.assert_array_equal(np.sort(source.labels),
                                np.sort(sk.target[:12]))
  for record in _records(source):
    matches = [i for i in range(12) if np.array_equal(
        record['image'], digits.upsample(sk.images[i]))]
    assert matches and record['label'] == sk.target[matches[0]]


def _write_folder(root, splits):
  """root/train/<class>/... PNGs of validation digits; returns the images."""
  names = {0: 'zero', 1: 'one', 2: 'two'}  # sorted: one, two, zero
  written = {}
  for record in _records(splits['validation']):
    if record['label'] in names and len(written) < 30:
      folder = root / 'train' / names[record['label']]
      if len(written) % 7 == 0:
        folder = folder / 'nested'
      folder.mkdir(parents=True, exist_ok=True)
      path = folder / f'{record["index"]:04d}.png'
      Image.fromarray(record['image']).save(path)
      written[path] = record['image']
  (root / 'train' / 'zero' / 'notes.txt').write_text('not an image')
  return written


def test_image_folder_reads_rgb_with_torchvision_indexing(splits, tmp_path):
  written = _write_folder(tmp_path, splits)
  source = data.image_folder(tmp_path, 'train')
  assert source.class_names == ('one', 'two', 'zero')
  assert source.num_classes == 3 and len(source) == len(written)
  for i in range(len(source)):
    record = source[i]
    np.testing.assert_array_equal(record['image'], written[source.paths[i]])
    assert record['label'] == source.labels[i]
    assert source.class_names[record['label']] == source.paths[i].relative_to(
        tmp_path / 'train').parts[0]
  datasets = pytest.importorskip('torchvision.datasets')
  reference = datasets.ImageFolder(tmp_path / 'train')
  assert reference.classes == list(source.class_names)
  assert reference.samples == [(str(p), int(l)) for p, l in
                               zip(source.paths, source.labels)]


def test_image_folder_errors(tmp_path):
  (tmp_path / 'train').mkdir()
  with pytest.raises(data.DatasetNotFoundError, match='No class folders'):
    data.image_folder(tmp_path, 'train')
  (tmp_path / 'train' / 'cat').mkdir()
  with pytest.raises(data.DatasetNotFoundError, match=r"\['train'\]"):
    data.image_folder(tmp_path, 'val')
  with pytest.raises(data.DatasetNotFoundError, match=r"classes \['cat'\]"):
    data.image_folder(tmp_path, 'train')
  with pytest.raises(FileNotFoundError, match='No image folder'):
    data.image_folder(tmp_path / 'missing')


def _photos():
  images = sklearn.datasets.load_sample_images().images  # china, flower
  return [*images, images[0].transpose(1, 0, 2)[:, :301]]  # and a portrait


@pytest.mark.parametrize('settings', [
    data.IMAGENET,
    data.Preprocess(224, (200, 150), mean=(0.5, 0.4, 0.3),
                    std=(0.2, 0.3, 0.25)),
], ids=['imagenet', 'non_square_crop'])
def test_preprocess_matches_torchvision(settings):
  transforms = pytest.importorskip('torchvision.transforms')
  reference = transforms.Compose([
      transforms.Resize(settings.resize_size),
      transforms.CenterCrop(settings.crop_size),
      transforms.ToTensor(),
      transforms.Normalize(settings.mean, settings.std)])
  for photo in _photos():
    expected = reference(Image.fromarray(photo)).permute(1, 2, 0).numpy()
    got = data.preprocess(photo, settings)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
  batch = np.stack([_photos()[0]] * 2)
  np.testing.assert_array_equal(data.preprocess(batch, settings)[1],
                                data.preprocess(batch[1], settings))


def test_digits_preset_keeps_pixels_exact():
  image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  np.testing.assert_array_equal(
      data.preprocess(image, data.DIGITS),
      (image.astype(np.float32) / 255 - 0.5) / 0.5)


def test_reference_samples(splits):
  train = splits['train']
  indices = data.reference_samples(train, 5, seed=0)
  assert indices.dtype == np.int64 and np.all(np.diff(indices) > 0)
  np.testing.assert_array_equal(np.bincount(train.labels[indices]), [5] * 10)
  np.testing.assert_array_equal(indices, data.reference_samples(train, 5))
  assert not np.array_equal(indices, data.reference_samples(train, 5, seed=1))

  few = data.reference_samples(train, 5, seed=0, classes=[3, 7])
  assert set(train.labels[few]) == {3, 7} and len(few) == 10
  # A class's samples do not depend on the other classes asked for.
  np.testing.assert_array_equal(few, indices[np.isin(train.labels[indices],
                                                     [3, 7])])
  with pytest.raises(ValueError, match='fewer than n_per_class=1000'):
    data.reference_samples(train, 1000)

  images, labels = data.reference_batch(train, data.DIGITS, 2, classes=[4])
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.float32
  np.testing.assert_array_equal(labels, [4, 4])


class _Numbered:
  """A source whose image pixels are their index, to track examples."""

  def __init__(self, n):
    self.labels = np.arange(n) % 3

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': np.full((4, 4, 3), i, np.uint8),
            'label': int(self.labels[i])}


_IDENTITY = data.Preprocess(4, 4, mean=(0.0,) * 3, std=(1 / 255,) * 3)


def _seen(batches):
  return np.concatenate([np.rint(b['image'][:, 0, 0, 0]).astype(int)
                         for b in batches])


def test_batches_cover_every_example_once():
  source = _Numbered(23)
  batches = list(data.batches(source, _IDENTITY, 5, shuffle=True, seed=3))
  assert [b['image'].shape for b in batches] == [(5, 4, 4, 3)] * 4 + [
      (3, 4, 4, 3)]
  assert all(b['image'].dtype == np.float32 and b['label'].dtype == np.int32
             for b in batches)
  seen = _seen(batches)
  np.testing.assert_array_equal(np.sort(seen), np.arange(23))
  assert not np.array_equal(seen, np.arange(23))  # shuffled
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]),
                                source.labels[seen])
  np.testing.assert_array_equal(
      seen, _seen(data.batches(source, _IDENTITY, 5, shuffle=True, seed=3)))
  np.testing.assert_array_equal(
      _seen(data.batches(source, _IDENTITY, 5)), np.arange(23))

  dropped = list(data.batches(source, _IDENTITY, 5, drop_remainder=True))
  assert len(dropped) == 4

  two = _seen(data.batches(source, _IDENTITY, 4, shuffle=True, num_epochs=2))
  np.testing.assert_array_equal(np.sort(two), np.repeat(np.arange(23), 2))
  assert not np.array_equal(two[:23], two[23:])  # reshuffled per epoch


def test_batches_and_arrays_restrict_classes(splits):
  test = splits['test']
  labels = np.concatenate([b['label'] for b in data.batches(
      test, data.DIGITS, 64, classes=[2, 9])])
  np.testing.assert_array_equal(labels, test.labels[np.isin(test.labels,
                                                            [2, 9])])
  images, labels = data.as_arrays(test, data.DIGITS, classes=[2, 9])
  assert images.shape == (len(labels), 32, 32, 3)
  assert set(labels) == {2, 9}
  first = test[int(np.flatnonzero(test.labels == labels[0])[0])]
  np.testing.assert_array_equal(images[0],
                                data.preprocess(first['image'], data.DIGITS))


def test_draw_classes_is_seeded_sorted_and_checked():
  drawn = data.draw_classes(1000, 3, seed=0)
  assert drawn == sorted(drawn) and len(set(drawn)) == 3
  assert drawn == data.draw_classes(1000, 3, seed=0)
  assert drawn != data.draw_classes(1000, 3, seed=1)
  assert data.draw_classes(5, 5, seed=3) == [0, 1, 2, 3, 4]
  for bad in (1, 11):
    with pytest.raises(ValueError, match=rf'count={bad} must lie in \[2, 10\]'
                       ': the model has 10 classes'):
      data.draw_classes(10, bad, seed=0)


@pytest.mark.parametrize('arguments,message', [
    (dict(classes=(3, 3)), r'classes=\(3, 3\) must name at least two '
     'different classes'),
    (dict(classes=(3,)), r'classes=\(3,\) must name at least two'),
    (dict(classes=(1, 2, 1)), r'classes=\(1, 2, 1\) names a class twice; '
     r'write \(1, 2\)'),
    (dict(classes=(-1, 2)), r'\[-1\] are not class indices'),
    (dict(classes=(1, True)), r'\[True\] are not class indices'),
    (dict(classes=(1, 12), num_classes=10), r'classes=\(1, 12\): \[12\] are '
     'not classes of this model; its classes are 0 to 9'),
    (dict(other_classes='dropped'), "other_classes='dropped': other_classes "
     'must be one of excluded, zeroed'),
])
def test_few_class_task_checks_its_arguments(arguments, message):
  with pytest.raises(ValueError, match=message):
    data.FewClass(**arguments)


def test_few_class_task_restricts_a_source():
  source = _Numbered(12)  # labels 0, 1, 2, 0, 1, 2, ...
  task = data.FewClass((2, 0), num_classes=3)
  assert task.classes == [2, 0] and task.allowed == [2, 0]
  assert data.FewClass((2, 0), other_classes='zeroed').allowed is None
  subset = task.restrict(source)
  np.testing.assert_array_equal(subset.indices, [0, 2, 3, 5, 6, 8, 9, 11])
  everything = data.FewClass()
  assert everything.classes is None and everything.restrict(source) is source
  assert everything.class_list(source) == [0, 1, 2]
  drawn = data.FewClass.drawn(10, 3, seed=0)
  assert drawn.classes == data.draw_classes(10, 3, seed=0)


def test_draws_of_references_and_holdout_are_seeded_and_disjoint():
  source = _Numbered(30)  # 10 examples of each of 3 classes
  draw = data.Draw(n_per_class=2, seed=0, holdout_per_class=3)
  references = draw.references(source, [0, 2])
  np.testing.assert_array_equal(
      references, data.reference_samples(source, 2, seed=0, classes=[0, 2]))
  assert len(draw.references(source, None, 4)) == 12
  held = draw.holdout(source, [0, 2], exclude=references)
  assert len(held) == 6 and not set(held.indices) & set(references)
  assert sorted(set(held.labels)) == [0, 2]
  np.testing.assert_array_equal(
      held.indices, draw.holdout(source, [0, 2], references).indices)
  rest = data.Draw(2, seed=0).holdout(source, [0, 2], exclude=references)
  assert len(rest) == 16 and not set(rest.indices) & set(references)
  with pytest.raises(ValueError, match=r'n_per_class=11, but the source has '
                     r'fewer examples of classes \[0, 1, 2\] .*set '
                     'n_per_class to at most 10'):
    draw.references(source, None, 11)
  with pytest.raises(ValueError, match='holdout_per_class=9, but it without '
                     'the reference samples has fewer'):
    data.Draw(2, 0, 9).holdout(source, [0], references, where='it')
  for arguments, message in [
      (dict(n_per_class=0), 'n_per_class=0 must be an integer >= 1'),
      (dict(seed=-1), 'seed=-1 must be an integer >= 0'),
      (dict(holdout_per_class=1.5), 'holdout_per_class=1.5 must be an '
       'integer >= 0')]:
    with pytest.raises(ValueError, match=message):
      data.Draw(**arguments)
