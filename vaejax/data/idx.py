"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number `00 00 <dtype code> <ndim>`, then `ndim`
big-endian uint32 dimension sizes, then the array in C order and big-endian.
The distributed files are usually gzip-compressed; `read_idx` recognises gzip
by its magic bytes, so the file name does not matter.
"""

import gzip
import math
import os
import zlib

import numpy as np

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}
_GZIP_MAGIC = b'\x1f\x8b'
_REINSTALL_HINT = 're-download or reinstall the file'


class DataError(ValueError):
  """A data file or data set is missing, malformed or inconsistent.

  Messages name the file or location, say what is wrong and what to do.
  """


def _idx_error(path: str | os.PathLike, problem: str) -> DataError:
  return DataError(f'{os.fspath(path)}: {problem}; {_REINSTALL_HINT}.')


def _read_bytes(path: str | os.PathLike) -> bytes:
  """Returns the file's content, decompressed if it is gzip."""
  try:
    with open(path, 'rb') as f:
      content = f.read()
  except OSError as e:
    raise DataError(f'{os.fspath(path)}: cannot read IDX file ({e}).') from e
  if not content.startswith(_GZIP_MAGIC):
    return content
  try:
    return gzip.decompress(content)
  except (EOFError, OSError, zlib.error) as e:
    raise _idx_error(path, f'corrupt gzip data ({e})') from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzip-compressed or plain.

  Args:
    path: the file to read.

  Returns:
    The array, in native byte order, with the shape and dtype the header gives.

  Raises:
    DataError: the file cannot be read, is not IDX, has an unsupported dtype,
      or its data does not match the size the header announces.
  """
  content = _read_bytes(path)
  if len(content) < 4:
    raise _idx_error(
        path, f'not an IDX file: {len(content)} bytes, shorter than the '
        '4-byte magic number')
  zero_bytes, dtype_code, ndim = content[:2], content[2], content[3]
  if zero_bytes != b'\x00\x00':
    raise _idx_error(
        path, f'not an IDX file: magic number starts with {zero_bytes.hex()}, '
        'expected 0000')
  if dtype_code not in IDX_DTYPES:
    known_codes = ', '.join(f'0x{code:02X}' for code in IDX_DTYPES)
    raise _idx_error(
        path, f'unsupported IDX dtype code 0x{dtype_code:02X} '
        f'(supported: {known_codes})')
  if ndim == 0:
    raise _idx_error(path, 'IDX header declares 0 dimensions')
  header_size = 4 + 4 * ndim
  if len(content) < header_size:
    raise _idx_error(
        path, f'truncated header: {ndim} dimensions need {header_size} bytes, '
        f'file has {len(content)}')
  shape = tuple(int(d) for d in np.frombuffer(content, '>u4', ndim, offset=4))
  dtype = IDX_DTYPES[dtype_code]
  expected_size = math.prod(shape) * dtype.itemsize
  data_size = len(content) - header_size
  if data_size != expected_size:
    kind = 'truncated' if data_size < expected_size else 'trailing bytes'
    dims = 'x'.join(str(d) for d in shape)
    raise _idx_error(
        path, f'{kind}: header says {dims} {dtype.name} = {expected_size} '
        f'bytes of data, file has {data_size}')
  array = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


def write_idx(
    path: str | os.PathLike, array: np.ndarray, compress: bool = True
) -> None:
  """Writes `array` as an IDX file, gzip-compressed if `compress`.

  Args:
    path: the file to write; its name is not changed (add `.gz` yourself).
    array: an array of at least one dimension whose dtype is uint8, int8,
      int16, int32, float32 or float64.
    compress: whether to gzip the file, as the distributed MNIST files are.

  Raises:
    DataError: the array's dtype or shape cannot be stored in IDX.
  """
  array = np.asarray(array)
  codes_by_dtype = {dtype.newbyteorder('='): code
                    for code, dtype in IDX_DTYPES.items()}
  native_dtype = array.dtype.newbyteorder('=')
  if native_dtype not in codes_by_dtype:
    supported = ', '.join(str(dtype) for dtype in codes_by_dtype)
    raise DataError(
        f'{os.fspath(path)}: IDX cannot store dtype {array.dtype}; convert '
        f'the array to one of: {supported}.')
  if not 1 <= array.ndim <= 255:
    raise DataError(
        f'{os.fspath(path)}: IDX stores 1 to 255 dimensions, the array has '
        f'{array.ndim}; reshape it.')
  code = codes_by_dtype[native_dtype]
  header = bytes([0, 0, code, array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  content = header + array.astype(IDX_DTYPES[code]).tobytes(order='C')
  if compress:
    # mtime=0 makes the file depend only on the array.
    content = gzip.compress(content, mtime=0)
  with open(path, 'wb') as f:
    f.write(content)
