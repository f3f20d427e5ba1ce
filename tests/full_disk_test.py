"""A disk that fills, or a write that fails: one line naming the path and the errno, nothing half
written left behind, every finished row and the newest complete checkpoint kept, and the same
command resumes once there is room. Real full disks are tmpfs mounts (where this machine lets
the tests mount them); the partial writes of each writer are injected."""

import csv
import errno
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from dcgan_jax import image_cache, images, metrics, summaries
from dcgan_jax.errors import RunError

ROOT = pathlib.Path(__file__).resolve().parents[1]
_ENOSPC = "No space left on device (errno 28)"


def test_a_metrics_row_is_whole_or_absent(tmp_path, monkeypatch):
  path = tmp_path / "metrics.csv"
  writer = metrics.MetricsWriter(str(path))
  row = {"step": 5, "epoch": 0.1, "loss_d": 1.0, "loss_g": 2.0, "d_x": 0.5, "d_g_z1": 0.4,
         "d_g_z2": 0.3, "images_per_s": 10.0, "seconds": 1.0}
  writer.write(row)
  before = path.read_bytes()

  def half_row(self, row_dict):  # half the row reaches the disk, then it is full
    line = ",".join(str(v) for v in row_dict.values())
    self.writer.writerow([line[:len(line) // 2]])  # csv.DictWriter's underlying writer
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(csv.DictWriter, "writerow", half_row)
  with pytest.raises(RunError) as e:
    writer.write({**row, "step": 10})
  assert str(e.value).startswith(f"cannot write {path}: {_ENOSPC}; what was written before it "
                                 "is kept: make room and run the same command again")
  assert path.read_bytes() == before  # the half row was cut off again


def test_an_event_record_is_whole_or_absent(tmp_path, monkeypatch):
  writer = summaries.EventWriter(str(tmp_path))
  writer.scalars(1, {"loss_d": 1.0})
  before = pathlib.Path(writer.path).read_bytes()
  monkeypatch.setattr(writer, "_file", _FailingFile(writer._file))  # pylint: disable=protected-access
  with pytest.raises(RunError, match=f"cannot write {writer.path}: No space left"):
    writer.scalars(2, {"loss_d": 2.0})
  writer.close()
  assert pathlib.Path(writer.path).read_bytes() == before
  pytest.importorskip("tensorboard")
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  events = list(event_file_loader.RawEventFileLoader(writer.path).Load())
  assert len(events) == 2  # the file's header and step 1's scalar, nothing torn


class _FailingFile:
  """An unbuffered file whose writes put half their bytes down, then fail (a full disk)."""

  def __init__(self, file):
    self._file = file

  def write(self, data) -> int:
    self._file.write(bytes(data[:len(data) // 2]))
    raise OSError(errno.ENOSPC, "No space left on device")

  def close(self) -> None:
    self._file.close()


def test_a_picture_leaves_no_temporary_file(tmp_path, monkeypatch):
  path = tmp_path / "samples.png"
  monkeypatch.setattr(images, "png_bytes", lambda image: b"\x89PNG" + b"\x00" * 100)
  real_replace = os.replace

  def full(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", full)
  with pytest.raises(RunError, match=f"cannot write {path}: No space left"):
    images.save_png(str(path), np.zeros((4, 4, 1), np.uint8))
  monkeypatch.setattr(os, "replace", real_replace)
  assert os.listdir(tmp_path) == []


def test_a_cache_that_cannot_get_its_space_is_one_line(tmp_path, monkeypatch):
  def no_space(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "posix_fallocate", no_space)
  with pytest.raises(RunError, match=r"cannot write .*\.partial-.*\.npy: No space left"):
    image_cache.load_or_build(str(tmp_path), "digits", {"source": "test"}, list(range(10)),
                              lambda i: np.zeros((32, 32, 1), np.uint8), 32, 1)
  assert os.listdir(tmp_path) == []  # no partial file, no marker


def _mount_tmpfs(path: pathlib.Path, size_mb: int) -> None:
  path.mkdir(parents=True, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"this machine does not let the tests mount a tmpfs ({result.stderr.strip()}): "
                "the injected failures above stand in")


def _main(workdir, *args):
  return [sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}",
          "--config.num_train_steps=60", "--config.ngf=8", "--config.ndf=8",
          "--config.batch_size=16", "--config.log_every_steps=5",
          "--config.checkpoint_every_steps=10", "--config.sample_every_steps=10",
          "--config.num_sample_images=4", "--config.evaluator=", "--config.steps_per_dispatch=1",
          *args]


def _rows(workdir):
  with open(workdir / "metrics.csv", newline="") as f:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
            for r in csv.DictReader(f)]


@pytest.mark.slow  # runs main.py three times
def test_a_disk_that_fills_during_training_then_the_same_command_resumes(tmp_path):
  reference = tmp_path / "reference"
  subprocess.run(_main(reference), check=True, capture_output=True, timeout=600)
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, 64)
  try:
    workdir = disk / "run"
    proc = subprocess.Popen(_main(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    while not (workdir / "checkpoints" / "10").is_dir():  # the first checkpoint is written
      assert proc.poll() is None, proc.stderr.read()[-2000:]
      time.sleep(0.01)
    filler = disk / "filler"
    with open(filler, "wb") as f:  # the disk fills: every later write meets ENOSPC
      try:
        while True:
          f.write(b"\0" * 2**20)
          f.flush()
      except OSError:
        pass
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {workdir}") and _ENOSPC in last, err[-3000:]
    assert "Traceback" not in err and err.count("os_error_code") == 0, err[-3000:]
    left = [p for p in workdir.rglob("*") if "tmp" in p.name]
    assert left == []  # no temporary checkpoint, grid or file
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    rows = _rows(workdir)
    assert rows == _rows(reference)[:len(rows)]  # every finished row kept, whole
    filler.unlink()  # room again: the same command resumes
    result = subprocess.run(_main(workdir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming at step {steps[-1]}" in result.stderr
    assert _rows(workdir) == _rows(reference)  # no row twice, none lost
  finally:
    subprocess.run(["umount", str(disk)], check=False)
