"""The user's own images: a NumPy `.npz` file or a folder of PNG/JPEG files.

`.npz` (`data.name='npz'`, `data.path=FILE.npz`), written by `np.savez`, in
one of two layouts:
  * `train_images`, optional `train_labels`, optional `test_images` and
    `test_labels` (without a test split, `data.test_fraction` of the training
    images is held out);
  * `images` and optional `labels`: all examples, `data.test_fraction` held
    out for testing.
Images are uint8 [N, H, W] (grayscale) or [N, H, W, C]; labels are integers
[N] in 0..K-1; an optional `class_names` array of K strings names them.

Image folder (`data.name='image_folder'`, `data.path=DIR`): one sub-folder
per class (labels are the sorted sub-folder names), or the images directly in
DIR (no labels); optionally DIR/train and DIR/test, each laid out so.
PNG or JPEG, 8 bits per channel; grayscale when every image is, else RGB
(alpha dropped). Images must all have one size unless `data.image_size` is
set, which resizes every image.

A held-out test split is a fixed random fraction (dataset.HOLD_OUT_SEED);
an image folder's examples are shuffled once with the same seed, so a prefix
of a split is not one class.
"""

import pathlib
import zipfile

from absl import logging
import numpy as np
import PIL.Image

from vaejax.data import dataset as dataset_lib
from vaejax.data import resize
from vaejax.data.dataset import Dataset
from vaejax.data.dataset import Split
from vaejax.data.idx import DataError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
NPZ_LAYOUTS = (
    ('images', 'labels', 'class_names'),
    ('train_images', 'train_labels', 'test_images', 'test_labels',
     'class_names'),
)
GRAYSCALE_MODES = ('1', 'L', 'LA')
COLOUR_MODES = ('RGB', 'RGBA', 'P', 'PA', 'CMYK', 'YCbCr')
_NPZ_HOWTO = ('save it with np.savez(FILE, train_images=uint8 [N, H, W(, C)], '
              'train_labels=int [N], test_images=..., test_labels=...) or '
              'np.savez(FILE, images=..., labels=...); labels are optional')


def _build_dataset(name: str, train: Split, test: Split, source: str,
                   class_names: tuple[str, ...] | None) -> Dataset:
  """The Dataset of checked splits: same image shape, labels in both or in
  neither, and labels within the class names."""
  if train.images.shape[1:] != test.images.shape[1:]:
    raise DataError(
        f'{source}: training images are [N, '
        f'{", ".join(map(str, train.images.shape[1:]))}] but test images '
        f'[N, {", ".join(map(str, test.images.shape[1:]))}]; give both '
        f'splits one shape, or set --config.data.image_size=H,W to resize '
        f'both.')
  if (train.labels is None) != (test.labels is None):
    labelled = 'training' if test.labels is None else 'test'
    raise DataError(f'{source}: only the {labelled} split has labels; give '
                    f'labels for both splits or for neither.')
  if train.labels is None:
    num_classes, class_names = 0, ()
  else:
    largest = int(max(train.labels.max(), test.labels.max()))
    if class_names is None:
      class_names = tuple(str(label) for label in range(largest + 1))
    if largest >= len(class_names):
      raise DataError(
          f'{source}: labels go up to {largest} but there are '
          f'{len(class_names)} class names; labels must be 0..'
          f'{len(class_names) - 1}.')
    num_classes = len(class_names)
  logging.info('Loaded %s from %s: %d train, %d test examples, %s.', name,
               source, len(train), len(test),
               f'{num_classes} classes' if num_classes else 'no labels')
  return Dataset(name=name, train=train, validation=None, test=test,
                 source=source, image_shape=tuple(train.images.shape[1:]),
                 num_classes=num_classes, class_names=tuple(class_names))


# .npz files.


def _npz_images(array: np.ndarray, key: str, origin: str,
                image_size: tuple[int, int] | None) -> np.ndarray:
  if array.dtype != np.uint8:
    raise DataError(
        f'{origin}: {key} is {array.dtype}, expected uint8 pixels 0..255; '
        f'convert it (floats in [0, 1]: np.round(x * 255).astype(np.uint8); '
        f'integers in 0..255: x.astype(np.uint8)).')
  if array.ndim == 3:
    array = array[..., np.newaxis]
  if array.ndim != 4 or 0 in array.shape:
    raise DataError(
        f'{origin}: {key} has shape {list(array.shape)}, expected a '
        f'non-empty [N, H, W] (grayscale) or [N, H, W, C].')
  return array if image_size is None else resize.resize_images(array,
                                                               image_size)


def _npz_labels(array: np.ndarray, key: str, num_images: int,
                origin: str) -> np.ndarray:
  if not np.issubdtype(array.dtype, np.integer):
    raise DataError(f'{origin}: {key} is {array.dtype}, expected integer '
                    f'class indices 0..K-1 (x.astype(np.int64)).')
  if array.shape != (num_images,):
    raise DataError(f'{origin}: {num_images} images but {key} has shape '
                    f'{list(array.shape)}; give one label per image.')
  if array.min() < 0:
    raise DataError(f'{origin}: {key} has negative labels '
                    f'(min {array.min()}); labels are classes 0..K-1.')
  return array.astype(np.int32)


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  origin = str(path)
  try:
    loaded = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'{origin} is not a readable .npz archive ({e}); '
                    f'{_NPZ_HOWTO}.') from e
  if not isinstance(loaded, np.lib.npyio.NpzFile):
    raise DataError(f'{origin} holds a single array (.npy), not a .npz '
                    f'archive; {_NPZ_HOWTO}.')
  with loaded as archive:
    try:
      return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise DataError(f'{origin} has an unreadable array ({e}); save plain '
                      f'uint8 / integer arrays: {_NPZ_HOWTO}.') from e


def load_npz(data_config) -> Dataset:
  """Reads `data_config.path`, a .npz file in one of NPZ_LAYOUTS."""
  path = pathlib.Path(data_config.path).expanduser()
  if path.is_dir():
    raise DataError(f'data.path={str(path)!r} is a directory; data.name='
                    f"'npz' reads one .npz file (for a folder of images, "
                    f"use data.name='image_folder').")
  origin = str(path)
  arrays = _read_npz(path)
  layout = next((keys for keys in NPZ_LAYOUTS if keys[0] in arrays), None)
  if layout is None or set(arrays) - set(layout):
    unexpected = sorted(set(arrays) - set(layout or ()))
    raise DataError(
        f'{origin} has arrays {sorted(arrays)}'
        + (f', of which {unexpected} are not expected' if layout else '')
        + f'; {_NPZ_HOWTO} (optionally class_names=[K strings]).')
  image_size = resize.parse_image_size(data_config.image_size)

  def split(images_key, labels_key):
    images = _npz_images(arrays[images_key], images_key, origin, image_size)
    labels = None
    if labels_key in arrays:
      labels = _npz_labels(arrays[labels_key], labels_key, len(images),
                           origin)
    return Split(images, labels)

  class_names = None
  if 'class_names' in arrays:
    if arrays['class_names'].dtype.kind != 'U':
      raise DataError(f'{origin}: class_names is {arrays["class_names"].dtype}'
                      f', expected strings (np.array(["cat", "dog"])).')
    class_names = tuple(str(name) for name in arrays['class_names'])
  if layout[0] == 'images':
    train, test = dataset_lib.hold_out_test(
        split('images', 'labels'), data_config.test_fraction, origin)
  else:
    for key in ('test_labels', 'test_images'):
      if key in arrays and key.replace('labels', 'images') not in arrays:
        raise DataError(f'{origin} has {key} but no test_images; '
                        f'{_NPZ_HOWTO}.')
    if 'test_images' in arrays:
      train = split('train_images', 'train_labels')
      test = split('test_images', 'test_labels')
    else:
      train, test = dataset_lib.hold_out_test(
          split('train_images', 'train_labels'), data_config.test_fraction,
          origin)
  return _build_dataset('npz', train, test, f'.npz file {origin}',
                        class_names)


# Image folders.


def _visible_entries(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.iterdir() if not p.name.startswith('.'))


def _is_image_file(path: pathlib.Path) -> bool:
  return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(directory: pathlib.Path, skipped: list[pathlib.Path]
                 ) -> list[pathlib.Path]:
  """The PNG/JPEG files directly in `directory`; other files go to `skipped`."""
  entries = _visible_entries(directory)
  nested = [p for p in entries if p.is_dir()]
  if nested:
    raise DataError(
        f'{directory} is a class folder but holds folders ({nested[0].name}'
        f'{", ..." if len(nested) > 1 else ""}); put the images of each class '
        f'directly in its folder.')
  skipped.extend(p for p in entries if not _is_image_file(p))
  return [p for p in entries if _is_image_file(p)]


def _examples_in(directory: pathlib.Path, skipped: list[pathlib.Path]
                 ) -> dict[str | None, list[pathlib.Path]]:
  """{class name: image files} for a folder of class folders, or {None:
  files} for a folder of unlabelled images."""
  entries = _visible_entries(directory)
  class_dirs = [p for p in entries if p.is_dir()]
  loose_images = [p for p in entries if _is_image_file(p)]
  if class_dirs and loose_images:
    raise DataError(
        f'{directory} mixes images ({loose_images[0].name}) and sub-folders '
        f'({class_dirs[0].name}); put every image in the sub-folder of its '
        f'class (labelled), or all images directly in the folder '
        f'(unlabelled).')
  if not class_dirs:
    skipped.extend(p for p in entries if not _is_image_file(p))
    if not loose_images:
      raise DataError(
          f'{directory} holds no PNG or JPEG images; put one sub-folder per '
          f'class with its images in it (or the images directly in it, '
          f'without labels).')
    return {None: loose_images}
  examples = {d.name: _image_files(d, skipped) for d in class_dirs}
  empty = [name for name, files in examples.items() if not files]
  if empty:
    raise DataError(
        f'class folder {directory / empty[0]} holds no PNG or JPEG images '
        f'({len(empty)} empty class folder(s)); add images or remove it.')
  return examples


def _open_image(path: pathlib.Path) -> PIL.Image.Image:
  try:
    image = PIL.Image.open(path)
  except (OSError, PIL.UnidentifiedImageError) as e:
    raise DataError(f'{path} cannot be read as an image ({e}); replace or '
                    f'remove it.') from e
  if image.mode not in GRAYSCALE_MODES + COLOUR_MODES:
    raise DataError(
        f'{path} has pixel mode {image.mode} (e.g. 16-bit or float); vaejax '
        f'reads 8-bit grayscale or colour images: convert it to 8 bits.')
  return image


def _decode(files: list[pathlib.Path], image_size, root: pathlib.Path
            ) -> np.ndarray:
  """uint8 [N, H, W, C] of `files` (headers checked before any decoding)."""
  images = [_open_image(path) for path in files]
  try:
    if image_size is None:
      sizes = {}
      for path, image in zip(files, images):
        sizes.setdefault(image.size, path)
      if len(sizes) > 1:
        (first_size, first), (other_size, other) = list(sizes.items())[:2]
        raise DataError(
            f'images in {root} have {len(sizes)} different sizes: {first} is '
            f'{first_size[1]}x{first_size[0]} (height x width), {other} is '
            f'{other_size[1]}x{other_size[0]}; set --config.data.image_size='
            f'H,W (e.g. {first_size[1]},{first_size[0]}) to resize every '
            f'image, or resize the files.')
      image_size = (images[0].size[1], images[0].size[0])
    grayscale = all(image.mode in GRAYSCALE_MODES for image in images)
    mode = 'L' if grayscale else 'RGB'
    pixels = np.empty((len(files), *image_size, 1 if grayscale else 3),
                      np.uint8)
    for index, (path, image) in enumerate(zip(files, images)):
      try:
        converted = resize.resize_image(image.convert(mode), image_size)
        pixels[index] = np.asarray(converted).reshape(pixels.shape[1:])
      except OSError as e:
        raise DataError(f'{path} cannot be decoded ({e}); replace or remove '
                        f'it.') from e
    return pixels
  finally:
    for image in images:
      image.close()


def _split_dirs(root: pathlib.Path) -> dict[str, pathlib.Path] | None:
  """{'train': ..., 'test': ...} when root holds exactly train/ and test/."""
  entries = _visible_entries(root)
  if {p.name for p in entries} == {'train', 'test'} and all(
      p.is_dir() for p in entries):
    return {p.name: p for p in entries}
  return None


def load_image_folder(data_config) -> Dataset:
  """Reads the images under `data_config.path` (layout: module docstring)."""
  root = pathlib.Path(data_config.path).expanduser()
  if not root.is_dir():
    raise DataError(f"data.path={str(root)!r} is a file; data.name="
                    f"'image_folder' reads a folder (for a .npz file, use "
                    f"data.name='npz').")
  image_size = resize.parse_image_size(data_config.image_size)
  skipped = []
  split_dirs = _split_dirs(root) or {'all': root}
  examples = {name: _examples_in(d, skipped) for name, d in split_dirs.items()}
  if 'test' in examples and (None in examples['train']) != (
      None in examples['test']):
    raise DataError(f'{root}: one of train/ and test/ has class folders and '
                    f'the other not; lay both out the same way.')
  class_names = sorted(examples['train' if 'train' in examples else 'all'],
                       key=str)
  if None not in class_names and 'test' in examples:
    unknown = sorted(set(examples['test']) - set(class_names))
    if unknown:
      raise DataError(f'{root / "test"} has class folders {unknown} that '
                      f'{root / "train"} lacks; the test classes must be '
                      f'training classes.')
  if skipped:
    logging.warning('Skipped %d files under %s that are not PNG or JPEG '
                    '(e.g. %s).', len(skipped), root, skipped[0])
  # One decode of every file so that all splits share one channel count.
  files, labels, split_of = [], [], []
  for split_name, by_class in examples.items():
    for class_name, class_files in sorted(by_class.items(),
                                          key=lambda item: str(item[0])):
      files += class_files
      labels += [-1 if class_name is None else class_names.index(class_name)
                 ] * len(class_files)
      split_of += [split_name] * len(class_files)
  images = _decode(files, image_size, root)
  labelled = None not in class_names
  labels, split_of = np.array(labels, np.int32), np.array(split_of)

  def split(name):
    chosen = split_of == name
    return dataset_lib.shuffled(
        Split(images[chosen], labels[chosen] if labelled else None))

  if 'test' in examples:
    train, test = split('train'), split('test')
  else:
    train, test = dataset_lib.hold_out_test(split('all'),
                                            data_config.test_fraction,
                                            str(root))
  return _build_dataset('image_folder', train, test, f'image folder {root}',
                        tuple(class_names) if labelled else None)
