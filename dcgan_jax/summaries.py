"""TensorBoard event files of a run, in workdir/tensorboard: every metrics.csv column as a
scalar, the fixed-noise grids as images, the resolved config as text.

The files are written here, with no dependency: an event file is a sequence of records
(length, masked CRC-32C of the length, an `Event` protocol buffer, masked CRC-32C of it), and
the few messages a run needs (Event, Summary, Image, SessionLog, TensorProto for text) are
encoded by hand. TensorBoard's own reader reads them back in the tests. A resumed run starts
its file with a SessionLog START at the step after its checkpoint, which tells TensorBoard to
drop what a stopped run wrote past that step, so that no step is shown twice.
"""

import json
import math
import os
import socket
import struct
import time

import numpy as np

from dcgan_jax import errors, images


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """Computes the CRC-32C (Castagnoli) of data."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  crc = crc32c(data)
  return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64 as ten bytes, as protocol buffers encode them
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, value) -> bytes:
  """Encodes one field: an int as a varint, bytes or str as length-delimited."""
  if isinstance(value, int):
    return _varint(number << 3) + _varint(value)
  data = value.encode() if isinstance(value, str) else value
  return _varint(number << 3 | 2) + _varint(len(data)) + data


def _float_field(number: int, value: float) -> bytes:  # float (wire type 5)
  return _varint(number << 3 | 5) + struct.pack("<f", value)


def _event(step: int, body: bytes) -> bytes:
  """Encodes an Event: wall_time (double), step, and the given fields."""
  return _varint(1 << 3 | 1) + struct.pack("<d", time.time()) + _field(2, step) + body


class EventWriter:
  """Writes one event file in a folder (process 0 of a run)."""

  def __init__(self, folder: str, purge_from_step: int | None = None):
    os.makedirs(folder, exist_ok=True)
    name = (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
            ".dcgan_jax")
    self.path = os.path.join(folder, name)
    with errors.writing(self.path):
      self._file = open(self.path, "ab", buffering=0)  # pylint: disable=consider-using-with
    self._size = 0  # bytes of whole records in the file
    self._write(_event(0, _field(3, "brain.Event:2")))
    if purge_from_step is not None:  # SessionLog{status: START}
      self._write(_event(purge_from_step, _field(7, _field(1, 1))))

  def _write(self, event: bytes) -> None:
    """Appends one record, whole: a write that fails is cut off again (a full disk)."""
    length = struct.pack("<Q", len(event))
    record = memoryview(length + _masked_crc(length) + event + _masked_crc(event))
    with errors.writing(self.path, undo=lambda: os.truncate(self.path, self._size)):
      while record:
        record = record[self._file.write(record):]
    self._size += len(length) + 4 + len(event) + 4

  def _summary(self, step: int, value: bytes) -> None:
    self._write(_event(step, _field(5, _field(1, value))))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """Writes each finite value as a scalar under its name."""
    for tag, value in values.items():
      if isinstance(value, (int, float, np.number)) and math.isfinite(value):
        self._summary(step, _field(1, tag) + _float_field(2, float(value)))

  def image(self, step: int, tag: str, image_u8: np.ndarray) -> None:
    """Writes a uint8 image (H, W, 1 or 3) as a PNG under tag."""
    height, width, channels = image_u8.shape
    encoded = (_field(1, height) + _field(2, width) + _field(3, channels)
               + _field(4, images.png_bytes(image_u8)))
    self._summary(step, _field(1, tag) + _field(4, encoded))

  def text(self, step: int, tag: str, text: str) -> None:
    """Writes text (Markdown) under tag, for TensorBoard's text plugin."""
    metadata = _field(1, _field(1, "text"))  # SummaryMetadata{plugin_data{plugin_name}}
    tensor = _field(1, 7) + _field(2, b"") + _field(8, text)  # DT_STRING, scalar, string_val
    self._summary(step, _field(1, tag) + _field(9, metadata) + _field(8, tensor))

  def flush(self) -> None:
    """Every record is written as it comes (the file is unbuffered): nothing to do."""

  def close(self) -> None:
    self._file.close()


def config_markdown(config_dict: dict) -> str:
  """Formats a config as an indented JSON block (Markdown), as config.json holds it."""
  body = json.dumps(config_dict, indent=2, sort_keys=True)
  return "\n".join("    " + line for line in body.splitlines())
