"""The user's own data: .npz files, image folders, any prepared TFDS data set
by name, and config.data checks; each on small files the test writes."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from conftest import REPO_ROOT
from vaejax import data
from vaejax.configs import common
from vaejax.configs import loading
from vaejax import train


# Each test sees only the data it writes (conftest.py).
pytestmark = pytest.mark.usefixtures('no_real_data_locations')


def data_config(name, **fields):
  """The data block of the experiment files, with `name` and `fields`."""
  config = common.data({}, 'scale_to_unit')
  config.name = name
  config.update(fields)
  return config


def random_images(seed, shape, num=None):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, shape if num is None else (num, *shape),
                      np.uint8)


def write_folder(root, images_by_class, extension='.png'):
  """Writes {class name or None: uint8 images} as image files under root."""
  for class_name, images in images_by_class.items():
    directory = root if class_name is None else root / class_name
    directory.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
      PIL.Image.fromarray(np.squeeze(image, -1) if image.shape[-1] == 1
                          else image).save(directory / f'{index}{extension}')
  return root


def multiset(images, labels=None):
  labels = [None] * len(images) if labels is None else labels.tolist()
  return sorted((image.tobytes(), label)
                for image, label in zip(images, labels))


# .npz files.


def test_npz_train_and_test_arrays_with_labels(tmp_path):
  arrays = {'train_images': random_images(0, (6, 5), 40),
            'train_labels': np.arange(40) % 3,
            'test_images': random_images(1, (6, 5), 10),
            'test_labels': np.arange(10) % 3,
            'class_names': np.array(['cat', 'dog', 'eel'])}
  np.savez(tmp_path / 'mine.npz', **arrays)
  dataset = data.load_dataset(data_config('npz', path=str(tmp_path /
                                                          'mine.npz')))
  assert dataset.image_shape == (6, 5, 1)
  assert (dataset.num_classes, dataset.class_names) == (3, ('cat', 'dog',
                                                            'eel'))
  assert dataset.has_labels and dataset.validation is None
  np.testing.assert_array_equal(dataset.train.images[..., 0],
                                arrays['train_images'])
  np.testing.assert_array_equal(dataset.test.labels, arrays['test_labels'])
  assert dataset.train.labels.dtype == np.int32


def test_npz_single_split_holds_out_a_fixed_test_fraction(tmp_path):
  images = random_images(0, (4, 4, 3), 50)
  labels = np.arange(50) % 5
  np.savez(tmp_path / 'all.npz', images=images, labels=labels)
  config = data_config('npz', path=str(tmp_path / 'all.npz'),
                       test_fraction=0.2, validation_size=5)
  dataset = data.load_dataset(config)
  assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (
      35, 5, 10)
  assert dataset.image_shape == (4, 4, 3) and dataset.num_classes == 5
  assert dataset.class_names == ('0', '1', '2', '3', '4')
  splits = (dataset.train, dataset.validation, dataset.test)
  assert multiset(np.concatenate([s.images for s in splits]),
                  np.concatenate([s.labels for s in splits])) == multiset(
                      images, labels)
  again = data.load_dataset(config)
  np.testing.assert_array_equal(again.test.images, dataset.test.images)


def test_npz_without_labels_is_an_unlabelled_dataset(tmp_path):
  np.savez(tmp_path / 'x.npz', train_images=random_images(0, (8, 8), 20))
  dataset = data.load_dataset(data_config('npz', path=str(tmp_path /
                                                          'x.npz')))
  assert dataset.train.labels is None and dataset.test.labels is None
  assert (dataset.num_classes, dataset.class_names) == (0, ())
  assert not dataset.has_labels
  assert (len(dataset.train), len(dataset.test)) == (18, 2)


def test_npz_image_size_resizes(tmp_path):
  np.savez(tmp_path / 'x.npz', images=np.full((10, 30, 30, 3), 7, np.uint8))
  dataset = data.load_dataset(data_config(
      'npz', path=str(tmp_path / 'x.npz'), image_size=(32, 32)))
  assert dataset.image_shape == (32, 32, 3)
  assert dataset.train.images.shape == (9, 32, 32, 3)
  assert (dataset.train.images == 7).all()  # A constant stays constant.


NPZ_ERRORS = {
    'float images': (dict(images=np.zeros((4, 3, 3), np.float32)),
                     'images is float32, expected uint8'),
    'label count': (dict(images=np.zeros((4, 3, 3), np.uint8),
                         labels=np.arange(3)),
                    '4 images but labels has shape [3]'),
    'float labels': (dict(images=np.zeros((4, 3, 3), np.uint8),
                          labels=np.zeros(4)),
                     'labels is float64, expected integer'),
    'negative labels': (dict(images=np.zeros((4, 3, 3), np.uint8),
                             labels=np.array([0, 1, -1, 0])),
                        'negative labels'),
    'typo in a key': (dict(train_images=np.zeros((4, 3, 3), np.uint8),
                           train_label=np.arange(4)),
                      "['train_label'] are not expected"),
    'no image array': (dict(pixels=np.zeros((4, 3, 3), np.uint8)),
                       "has arrays ['pixels']; save it with np.savez"),
    'labels in one split only': (
        dict(train_images=np.zeros((4, 3, 3), np.uint8),
             train_labels=np.arange(4),
             test_images=np.zeros((2, 3, 3), np.uint8)),
        'only the training split has labels'),
    'split shapes differ': (
        dict(train_images=np.zeros((4, 3, 3), np.uint8),
             test_images=np.zeros((2, 4, 4), np.uint8)),
        'training images are [N, 3, 3, 1] but test images [N, 4, 4, 1]'),
    'too few class names': (
        dict(images=np.zeros((4, 3, 3), np.uint8), labels=np.arange(4),
             class_names=np.array(['a', 'b'])),
        'labels go up to 3 but there are 2 class names'),
    'one-dimensional images': (dict(images=np.zeros(4, np.uint8)),
                               'has shape [4], expected a non-empty'),
    'test labels without test images': (
        dict(train_images=np.zeros((4, 3, 3), np.uint8),
             test_labels=np.arange(2)), 'has test_labels but no test_images'),
}


@pytest.mark.parametrize('case', NPZ_ERRORS)
def test_bad_npz_raises_data_error_saying_what_to_do(tmp_path, case):
  arrays, expected = NPZ_ERRORS[case]
  np.savez(tmp_path / 'bad.npz', **arrays)
  with pytest.raises(data.DataError, match='.') as error:
    data.load_dataset(data_config('npz', path=str(tmp_path / 'bad.npz')))
  assert expected in str(error.value)
  assert str(tmp_path / 'bad.npz') in str(error.value)


@pytest.mark.parametrize('kind', ['missing', 'directory', 'npy', 'garbage'])
def test_npz_path_that_is_not_an_npz_file(tmp_path, kind):
  path = tmp_path / 'x.npz'
  if kind == 'directory':
    path.mkdir()
  elif kind == 'npy':
    np.save(tmp_path / 'x.npy', np.zeros(3, np.uint8))
    path = tmp_path / 'x.npy'
  elif kind == 'garbage':
    path.write_bytes(b'not a zip file')
  expected = {'missing': 'does not exist', 'directory': 'is a directory',
              'npy': r'single array \(\.npy\)', 'garbage': 'not a readable .npz'}
  with pytest.raises(data.DataError, match=expected[kind]):
    data.load_dataset(data_config('npz', path=str(path)))


# Image folders.


def test_image_folder_with_class_subfolders(tmp_path):
  by_class = {'dogs': random_images(0, (7, 6, 3), 12),
              'cats': random_images(1, (7, 6, 3), 8)}
  root = write_folder(tmp_path / 'pets', by_class)
  (root / 'cats' / '.DS_Store').write_bytes(b'hidden')
  (root / 'cats' / 'notes.txt').write_text('not an image')
  dataset = data.load_dataset(data_config('image_folder', path=str(root),
                                          test_fraction=0.25))
  assert dataset.class_names == ('cats', 'dogs') and dataset.num_classes == 2
  assert dataset.image_shape == (7, 6, 3)
  assert (len(dataset.train), len(dataset.test)) == (15, 5)
  all_images = np.concatenate([dataset.train.images, dataset.test.images])
  all_labels = np.concatenate([dataset.train.labels, dataset.test.labels])
  assert multiset(all_images, all_labels) == multiset(
      np.concatenate([by_class['cats'], by_class['dogs']]),
      np.array([0] * 8 + [1] * 12))
  # Shuffled once: the first training examples are not all one class.
  assert len(set(dataset.train.labels[:8].tolist())) == 2


def test_image_folder_with_train_and_test_and_jpeg(tmp_path):
  write_folder(tmp_path / 'data' / 'train', {
      'a': np.full((5, 8, 8, 1), 10, np.uint8),
      'b': np.full((5, 8, 8, 1), 200, np.uint8)}, extension='.jpg')
  write_folder(tmp_path / 'data' / 'test',
               {'b': np.full((3, 8, 8, 1), 200, np.uint8)}, extension='.jpeg')
  dataset = data.load_dataset(data_config('image_folder',
                                          path=str(tmp_path / 'data')))
  assert dataset.image_shape == (8, 8, 1)  # Grayscale JPEGs stay grayscale.
  assert (len(dataset.train), len(dataset.test)) == (10, 3)
  np.testing.assert_array_equal(dataset.test.labels, [1, 1, 1])
  # JPEG is lossy, but a flat image decodes to (almost) its value.
  assert np.abs(dataset.test.images.astype(int) - 200).max() <= 2


def test_image_folder_without_subfolders_has_no_labels(tmp_path):
  root = write_folder(tmp_path / 'faces', {None: random_images(0, (4, 4, 3),
                                                                10)})
  dataset = data.load_dataset(data_config('image_folder', path=str(root)))
  assert dataset.train.labels is None and dataset.num_classes == 0
  assert (len(dataset.train), len(dataset.test)) == (9, 1)


def test_image_folder_mixing_grayscale_and_colour_reads_rgb(tmp_path):
  root = write_folder(tmp_path / 'mixed', {
      'gray': np.full((2, 4, 4, 1), 50, np.uint8),
      'rgb': random_images(0, (4, 4, 3), 2)})
  dataset = data.load_dataset(data_config('image_folder', path=str(root),
                                          test_fraction=0.25))
  assert dataset.image_shape == (4, 4, 3)
  gray = np.concatenate([dataset.train.images, dataset.test.images])[
      np.concatenate([dataset.train.labels, dataset.test.labels]) == 0]
  assert (gray == 50).all()


def test_image_folder_sizes_must_agree_unless_image_size_is_set(tmp_path):
  root = tmp_path / 'sizes'
  write_folder(root, {'small': random_images(0, (28, 28, 3), 3)})
  write_folder(root, {'large': random_images(1, (40, 30, 3), 3)})
  with pytest.raises(data.DataError) as error:
    data.load_dataset(data_config('image_folder', path=str(root)))
  message = str(error.value)
  assert '2 different sizes' in message and '40x30 (height x width)' in message
  assert '--config.data.image_size=H,W' in message
  dataset = data.load_dataset(data_config('image_folder', path=str(root),
                                          image_size=(32,)))
  assert dataset.image_shape == (32, 32, 3)


def _empty_class_folder(root):
  write_folder(root, {'a': random_images(0, (4, 4, 3), 2)})
  (root / 'b').mkdir()


def _mixed_files_and_folders(root):
  write_folder(root, {'a': random_images(0, (4, 4, 3), 2),
                      None: random_images(0, (4, 4, 3), 2)})


def _corrupt_image(root):
  write_folder(root, {'a': random_images(0, (4, 4, 3), 2)})
  (root / 'a' / 'broken.png').write_bytes(b'\x89PNG not really')


def _sixteen_bit_png(root):
  (root / 'a').mkdir(parents=True)
  PIL.Image.fromarray(np.zeros((4, 4), np.uint16)).save(root / 'a' / 'x.png')


def _nested_class_folder(root):
  write_folder(root, {'a': random_images(0, (4, 4, 3), 2)})
  (root / 'a' / 'deeper').mkdir()


FOLDER_ERRORS = {
    'empty folder': (lambda root: root.mkdir(), 'holds no PNG or JPEG'),
    'empty class folder': (_empty_class_folder,
                           'holds no PNG or JPEG images (1 empty class'),
    'mixed': (_mixed_files_and_folders, 'mixes images'),
    'corrupt file': (_corrupt_image, 'broken.png cannot be read as an image'),
    '16-bit': (_sixteen_bit_png, 'convert it to 8 bits'),
    'nested': (_nested_class_folder, 'put the images of each class directly'),
    'missing': (lambda root: None, 'does not exist'),
    'a file': (lambda root: root.write_text('x'), "is a file; data.name="),
}


@pytest.mark.parametrize('case', FOLDER_ERRORS)
def test_bad_image_folder_raises_data_error(tmp_path, case):
  make, expected = FOLDER_ERRORS[case]
  root = tmp_path / 'images'
  make(root)
  with pytest.raises(data.DataError) as error:
    data.load_dataset(data_config('image_folder', path=str(root)))
  assert expected in str(error.value)


# Any prepared TFDS data set by name.


class TinyImageDataset(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
  """Given arrays as a prepared TFDS data set named `name`."""

  VERSION = tfds.core.Version('3.0.2')

  def __init__(self, *, name, splits, class_names, **kwargs):
    self.name = name
    self._splits = splits
    self._class_names = class_names
    super().__init__(**kwargs)

  def _info(self):
    features = {'image': tfds.features.Image(shape=(None, None, 3))}
    if self._class_names:
      features['label'] = tfds.features.ClassLabel(names=self._class_names)
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager  # The examples are given.
    return {name: self._generate_examples(*arrays)
            for name, arrays in self._splits.items()}

  def _generate_examples(self, images, labels):
    for index, image in enumerate(images):
      example = {'image': PIL.Image.fromarray(image)}
      if labels is not None:
        example['label'] = int(labels[index])
      yield index, example


def prepare_tfds(data_dir, name, splits, class_names=None):
  TinyImageDataset(name=name, splits=splits, class_names=class_names,
                   data_dir=data_dir,
                   file_format=tfds.core.FileFormat.ARRAY_RECORD
                   ).download_and_prepare()
  return data_dir


def test_prepared_tfds_dataset_by_name(tmp_path):
  splits = {'train': (random_images(0, (32, 32, 3), 12), np.arange(12) % 10),
            'test': (random_images(1, (32, 32, 3), 4), np.arange(4))}
  tfds_dir = prepare_tfds(tmp_path / 'tfds', 'cifar10', splits,
                          class_names=[f'c{i}' for i in range(10)])
  dataset = data.load_dataset(data_config('cifar10',
                                          tfds_data_dir=str(tfds_dir)))
  assert dataset.image_shape == (32, 32, 3) and dataset.num_classes == 10
  assert dataset.class_names[:2] == ('c0', 'c1')
  assert 'array_record' in dataset.source
  for split_name in ('train', 'test'):
    split = getattr(dataset, split_name)
    assert multiset(split.images, split.labels) == multiset(
        *splits[split_name])


def test_tfds_dataset_without_labels_or_test_split(tmp_path):
  tfds_dir = prepare_tfds(tmp_path / 'tfds', 'my_photos',
                          {'train': (random_images(0, (20, 24, 3), 5), None)})
  dataset = data.load_dataset(data_config('my_photos',
                                          tfds_data_dir=str(tfds_dir),
                                          test_fraction=0.2))
  assert dataset.num_classes == 0 and dataset.train.labels is None
  assert (len(dataset.train), len(dataset.test)) == (4, 1)


def test_tfds_images_of_several_sizes_need_image_size(tmp_path):
  splits = {'train': ([random_images(0, (20, 24, 3)),
                       random_images(1, (16, 16, 3))], None)}
  tfds_dir = prepare_tfds(tmp_path / 'tfds', 'varied', splits)
  config = data_config('varied', tfds_data_dir=str(tfds_dir),
                       test_fraction=0.5)
  with pytest.raises(data.DataError, match='2 shapes'):
    data.load_dataset(config)
  config.image_size = (8, 8)
  assert data.load_dataset(config).image_shape == (8, 8, 3)


def test_unprepared_tfds_dataset_fails_at_once_with_the_build_command(
    tmp_path):
  start = time.monotonic()
  with pytest.raises(data.DataNotFoundError) as error:
    data.load_dataset(data_config('cifar10'))
  assert time.monotonic() - start < 5
  assert 'tfds build cifar10 --file_format=array_record' in str(error.value)
  assert str(tmp_path / 'default_tfds' / 'cifar10') in str(error.value)


# config.data checks.


CONFIG_ERRORS = {
    'path for a known set': (dict(name='fashion_mnist', path='x.npz'),
                             'data.path=\'x.npz\' is read only with'),
    'dir for npz': (dict(name='npz', path='x.npz', dir='/tmp'),
                    "data.dir='/tmp' is not read for data.name='npz'"),
    'source for npz': (dict(name='npz', path='x.npz', source='idx'),
                       "leave it 'auto'"),
    'no path': (dict(name='npz'), 'pass --config.data.path=PATH'),
    'idx for tfds': (dict(name='cifar10', source='idx'),
                     'data.dir and data.source=\'idx\' are for the IDX'),
    'test_fraction 0': (dict(name='fashion_mnist', test_fraction=0.0),
                        'must be a fraction in (0, 1)'),
    'test_fraction 1.5': (dict(name='fashion_mnist', test_fraction=1.5),
                          'must be a fraction in (0, 1)'),
    'validation_size': (dict(name='fashion_mnist', validation_size=-1),
                        'data.validation_size=-1 must be 0'),
    'image_size 3-d': (dict(name='fashion_mnist', image_size=(1, 2, 3)),
                       'expected a height and a width'),
    'image_size 0': (dict(name='fashion_mnist', image_size=(0, 4)),
                     'expected a height and a width'),
    'unknown name': (dict(name='imagefolder'), "Did you mean 'image_folder'"),
}


@pytest.mark.parametrize('case', CONFIG_ERRORS)
def test_data_config_errors_before_reading(case):
  fields, expected = CONFIG_ERRORS[case]
  config = data_config(**fields)
  with pytest.raises(data.DataError) as error:
    data.check_data_config(config)
  assert expected in str(error.value)


# Training on own data through the experiment files.


def tiny_own_config(path, name='npz', arg='runlocal', **overrides):
  defaults = {'data.name': name, 'data.path': str(path), 'batch_size': 16,
              'eval.batch_size': 16, 'eval.iwae_batch_size': 16,
              'num_train_steps': 4, 'steps_per_dispatch': 2,
              'checkpoint_every': 4}
  return loading.load_config(f'experiments/vae.py:{arg}',
                                      **{**defaults, **overrides})


@pytest.mark.parametrize('on_device', [True, False])
def test_unlabelled_images_train(tmp_path, on_device):
  # 320 images: the evaluation's figures draw 32 test images (10%).
  root = write_folder(tmp_path / 'faces', {None: random_images(0, (12, 12, 3),
                                                                320)})
  config = tiny_own_config(
      root, name='image_folder', **{
          'data.on_device': on_device,
          # What needs labels is left out until the evaluators skip it.
          'eval.figures': ('reconstructions', 'samples')})
  train.train_and_evaluate(config, str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'eval' / 'metrics.json') as f:
    metrics = json.load(f)
  assert metrics['step'] == 4 and np.isfinite(metrics['nll_iwae'])


def run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'vaejax.main', *args],
                        cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def test_command_line_trains_on_an_npz_file(tmp_path):
  np.savez(tmp_path / 'my.npz', images=random_images(0, (16, 16), 320),
           labels=np.arange(320) % 4)
  result = run_main(
      '--config', 'experiments/vae.py:runlocal', '--config.data.name=npz',
      f'--config.data.path={tmp_path / "my.npz"}', '--workdir',
      str(tmp_path / 'work'), '--config.batch_size=16',
      '--config.eval.batch_size=16', '--config.eval.iwae_batch_size=16',
      '--config.num_train_steps=4', '--config.steps_per_dispatch=2')
  assert result.returncode == 0, result.stderr
  assert os.path.exists(tmp_path / 'work' / 'eval' / 'metrics.json')


def test_conv_model_on_images_it_cannot_take_fails_before_training(tmp_path):
  np.savez(tmp_path / 'odd.npz', images=random_images(0, (30, 30), 40))
  result = run_main(
      '--config', 'experiments/vae.py:conv,runlocal', '--config.data.name=npz',
      f'--config.data.path={tmp_path / "odd.npz"}', '--workdir',
      str(tmp_path / 'work'), '--config.batch_size=16')
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'divisible by 4' in result.stderr
  assert not (tmp_path / 'work' / 'checkpoints').exists()
