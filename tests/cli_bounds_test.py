"""Every flag and config field has a bound the program can honour, checked before anything is
written: a table of values through main.py, each exit status 2 with one line naming the
value, and no workdir left behind."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

TABLE = {  # name: (arguments, what the one line says)
    "data_dir_symlink_loop": (["--config.dataset=imagefolder", "--config.data_dir={loop}"],
                              "config.data_dir='{loop}' cannot be resolved"),
    "cache_dir_in_proc": (["--config.cache_dir=/proc/nope"],
                          "config.cache_dir='/proc/nope' "),
    "learning_rate_inf": (["--config.g_learning_rate=inf"],
                          "config.g_learning_rate=inf must be positive and finite"),
    "learning_rate_nan": (["--config.d_learning_rate=nan"],
                          "config.d_learning_rate=nan must be positive and finite"),
    "epochs_inf": (["--config.num_train_steps=-1", "--config.num_epochs=inf"],
                   "config.num_epochs=inf must be finite"),
    "eval_num_samples_1e9": (["--config.eval_num_samples=1000000000"],
                             "config.eval_num_samples=1000000000 is too large (at most "
                             "100,000)"),
    "num_train_steps_1e30": (["--config.num_train_steps=" + "1" + "0" * 30],
                             "is too large (at most 2,147,483,647)"),
    "batch_size_1e12": (["--config.batch_size=1000000000000"],
                        "config.batch_size=1000000000000 is too large (at most 65,536)"),
    "batch_size_over_the_dataset": (["--config.batch_size=6000"],
                                    "has 5000 readable images, fewer than "
                                    "config.batch_size=6000"),
    "num_devices_3": (["--config.num_devices=3"], "config.num_devices=3 but only 1 cpu"),
    "ngf_4096": (["--config.ngf=4096"], "config.ngf=4096 is too large (at most 512)"),
    "decode_workers_1e6": (["--config.decode_workers=1000000"],
                           "config.decode_workers=1000000 is too large (at most 256)"),
    "max_image_pixels_0": (["--config.max_image_pixels=0"],
                           "config.max_image_pixels=0 must be positive"),
    "sample_grid_1e6": (["--mode=sample", "--grid_size=1000000"],
                        "--grid_size=1000000 is out of range: 1 to 1,024"),
    "sample_frames_1e6": (["--mode=sample", "--interpolation_frames=1000000"],
                          "--interpolation_frames=1000000 is out of range: 0 to 256"),
    "sample_images_1e9": (["--mode=sample", "--num_images=1000000000"],
                          "--num_images=1000000000 is out of range: 0 to 10,000"),
    "sample_seed_2_64": (["--mode=sample", "--sample_seed=18446744073709551616"],
                         "--sample_seed=18446744073709551616 is out of range: 0 to "
                         "2,147,483,647"),
    "sample_seed_minus_1": (["--mode=sample", "--sample_seed=-1"],
                            "--sample_seed=-1 is out of range: 0 to 2,147,483,647"),
    "serve_port_99999": (["--mode=serve", "--port=99999"],
                         "--port=99999 is not a port number (1 to 65535)"),
    "serve_port_minus_1": (["--mode=serve", "--port=-1"],
                           "--port=-1 is not a port number (1 to 65535)"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple]:
  root = tmp_path_factory.mktemp("bounds")
  loop = root / "loop"
  os.symlink(loop, loop)  # a symlink to itself

  def one(name):
    args, message = TABLE[name]
    workdir = root / name / "workdir"
    args = [a.replace("{loop}", str(loop)) for a in args]
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}", *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    return name, (out, message.replace("{loop}", str(loop)), workdir)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return dict(pool.map(one, sorted(TABLE)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TABLE))
def test_value_is_refused_in_one_line_before_anything_is_written(name, results):
  out, message, workdir = results[name]
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [line for line in lines if line.startswith("error: ")]  # beside progress logs
  assert errors == lines[-1:] and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert message in errors[0], errors[0]
  assert not workdir.exists()
