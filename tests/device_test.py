"""The device a run trains on: its description, the CPU-build warning and XLA's determinism flag."""

import importlib.metadata
import json
import os
import pathlib
import re

import sys
import types

import jax
import pytest

from dcgan_jax import device
from dcgan_jax.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, value", [
    ("", False),
    ("--xla_gpu_deterministic_ops=true", True),
    ("--xla_gpu_deterministic_ops", True),
    ("--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false", False),
    ("--xla_gpu_deterministic_ops_x=true", False),
    ("--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=1", True),
])
def test_flag_value_reads_the_last_setting(flags, value):
  assert device._flag_value(flags) is value  # pylint: disable=protected-access


def test_set_before_jax_starts_puts_the_flag_into_xla_flags(monkeypatch):
  monkeypatch.setattr(device, "backends_started", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=false")
  device.set_deterministic(True)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
  device.set_deterministic(False)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=false"
  monkeypatch.delenv("XLA_FLAGS")
  device.set_deterministic(False)  # XLA's default: nothing to write
  assert "XLA_FLAGS" not in os.environ


def _on_a_gpu(monkeypatch):
  """JAX's backends started on a GPU, as a notebook's kernel that has used JAX."""
  monkeypatch.setattr(device, "backends_started", lambda: True)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def test_set_after_jax_started_on_a_gpu_with_the_other_setting_warns_and_says_which(
    monkeypatch, caplog):
  _on_a_gpu(monkeypatch)
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
  assert device.set_deterministic(True) is True  # already in effect
  assert device.set_deterministic(False) is True  # the run goes on with what is in effect
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"  # left as it was
  monkeypatch.setenv("XLA_FLAGS", "")
  with caplog.at_level("WARNING"):
    assert device.set_deterministic(True) is False
  warning = caplog.records[-1].getMessage()
  assert "\n" not in warning
  assert warning.startswith("config.deterministic=True cannot take effect: JAX already runs on "
                            "the GPU with XLA_FLAGS='' (XLA reads them once, at start-up), so "
                            "this run trains with deterministic=False: reruns and resumes are "
                            "not bitwise equal; for bitwise-equal reruns and resumes, start a "
                            "fresh process (restart the notebook's kernel)")
  assert warning.endswith("XLA_FLAGS='--xla_gpu_deterministic_ops=true'")
  assert os.environ["XLA_FLAGS"] == ""


def test_a_jax_without_the_private_backend_query_degrades_to_a_warning(monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", types.ModuleType("jax._src.xla_bridge"))
  assert device.backends_started() is None  # no backends_are_initialized: no ImportError
  monkeypatch.setattr(device, "unknown_xla_flags", lambda flags: [])
  monkeypatch.setenv("XLA_FLAGS", "")
  with caplog.at_level("WARNING"):
    assert device.set_deterministic(True) is True
  assert "cannot say whether its backends have started" in caplog.records[-1].getMessage()
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"


def test_the_private_backend_query_answers_on_this_jax():
  jax.devices()
  assert device.backends_started() is True


def test_set_after_jax_started_on_a_cpu_changes_nothing(monkeypatch):
  jax.devices()  # the test process's backend is running
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  device.set_deterministic(True)  # the CPU is deterministic either way
  assert "XLA_FLAGS" not in os.environ


def test_describe_names_the_devices_backend_and_version():
  line = device.describe()
  assert line.startswith(f"{jax.device_count()} x ") and f"({jax.default_backend()})" in line
  assert line.endswith(f"jax {jax.__version__}")


def test_cpu_build_on_a_gpu_machine_is_named(monkeypatch):
  assert jax.default_backend() == "cpu"
  monkeypatch.setattr(device, "gpu_driver_present", lambda: True)
  warning = device.cpu_build_warning()
  assert "NVIDIA GPU but JAX runs on the CPU" in warning and ".[cuda12]" in warning
  assert "\n" not in warning
  monkeypatch.setattr(device, "gpu_driver_present", lambda: False)
  assert device.cpu_build_warning() is None


def _oom(nbytes: int = 42_064_104_024):
  return jax.errors.JaxRuntimeError(
      f"RESOURCE_EXHAUSTED: Out of memory allocating {nbytes} bytes.")


def test_out_of_memory_becomes_one_line_naming_what_and_what_to_lower():
  assert device.is_out_of_memory(_oom()) and device.is_out_of_memory(MemoryError())
  assert not device.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: a bug"))
  assert not device.is_out_of_memory(ValueError("RESOURCE_EXHAUSTED: Out of memory"))
  with pytest.raises(UsageError) as e:
    with device.out_of_memory_as_usage_error(lambda: "at training step 3", "config.batch_size"):
      raise _oom()
  assert str(e.value) == ("out of memory on cpu (cpu) at training step 3; 39.2 GiB asked at "
                          "once: lower config.batch_size")
  with pytest.raises(UsageError, match=r"^out of memory on cpu \(cpu\) sampling: lower n$"):
    with device.out_of_memory_as_usage_error("sampling", "n"):
      raise MemoryError()
  with pytest.raises(KeyError):  # anything else passes unchanged
    with device.out_of_memory_as_usage_error("x", "y"):
      raise KeyError("k")


def test_every_mode_of_the_command_line_says_out_of_memory_in_one_line(monkeypatch, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  from dcgan_jax import cli  # pylint: disable=g-import-not-at-top

  if "workdir" not in flags.FLAGS:
    cli.define_flags()
  # Parsing flags sets absl's verbosity, and main() filters its handler: both are put back.
  level, handler = absl_logging.get_absl_logger().level, absl_logging.get_absl_handler()
  filters = list(handler.filters)

  def out_of_memory(mode):
    raise _oom(2**31)

  monkeypatch.setattr(cli, "_run_mode", out_of_memory)
  try:
    for mode, lower in (("sample", "--grid_size, --num_images or --interpolation_frames"),
                        ("eval", "--eval_num_samples"), ("serve", "the other work")):
      flags.FLAGS(["main.py", f"--mode={mode}", "--workdir=nowhere"])
      with pytest.raises(SystemExit) as e:
        cli.main(["main.py"])
      assert e.value.code == 2
      err = capsys.readouterr().err.strip().splitlines()
      assert err == [f"error: out of memory on cpu (cpu) in --mode {mode}; 2.0 GiB asked at once: "
                     f"lower {lower}" + (" on the device" if mode == "serve" else "")]
  finally:
    flags.FLAGS.unparse_flags()
    absl_logging.get_absl_logger().setLevel(level)
    handler.filters[:] = filters


_VALUES = {device.DETERMINISTIC_FLAG: "true", device.AUTOTUNE_DUMP_FLAG: "/tmp/autotune.txt",
           device.AUTOTUNE_LOAD_FLAG: "/tmp/autotune.txt", device.AUTOTUNE_COMPLETE_FLAG: "true",
           device.HOST_DEVICES_FLAG: "2"}


def test_every_flag_the_project_sets_is_one_the_installed_jaxlib_takes(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # tried now, not read from a cache
  assert set(_VALUES) == set(device.PROJECT_XLA_FLAGS)
  assert device.unknown_xla_flags([f"{n}={v}" for n, v in _VALUES.items()]) == []
  kept = json.loads((tmp_path / "dcgan_jax" / "xla_flags.json").read_text())
  assert kept == {importlib.metadata.version("jaxlib"): dict.fromkeys(_VALUES, True)}


def test_every_xla_flag_written_in_the_code_is_a_project_flag():
  """A flag named anywhere in the package or the benchmarks is one of PROJECT_XLA_FLAGS (so the
  test above tries it on the installed jaxlib)."""
  named = set()
  for folder in ("dcgan_jax", "benchmarks"):
    for path in (ROOT / folder).rglob("*.py"):
      named |= set(re.findall(r"--xla_\w+", path.read_text()))
  assert named and named <= set(device.PROJECT_XLA_FLAGS), named - set(device.PROJECT_XLA_FLAGS)


def test_a_flag_the_jaxlib_does_not_take_is_refused_in_one_line(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  bad = "--xla_gpu_no_such_flag_for_dcgan_jax"
  assert device.unknown_xla_flags([f"{bad}=1", "--xla_gpu_deterministic_ops=true"]) == [bad]
  with pytest.raises(UsageError) as e:
    device.require_xla_flags([f"{device.DETERMINISTIC_FLAG}=true", f"{bad}=1"], "the report")
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"the report needs XLA flag {bad}, which jaxlib")
  # set_deterministic refuses before it writes anything into XLA_FLAGS
  monkeypatch.setattr(device, "backends_started", lambda: False)
  monkeypatch.setattr(device, "DETERMINISTIC_FLAG", bad)
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  with pytest.raises(UsageError, match=f"config.deterministic=True needs XLA flag {bad}"):
    device.set_deterministic(True)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def test_flag_answers_are_kept_per_jaxlib_and_a_damaged_cache_is_tried_again(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  tried = []
  monkeypatch.setattr(device, "_xla_accepts", lambda flags: tried.append(list(flags)) or
                      all("nope" not in f for f in flags))
  assert device.unknown_xla_flags(["--xla_a=1", "--xla_nope=2"]) == ["--xla_nope"]
  assert tried == [["--xla_a=1", "--xla_nope=2"], ["--xla_a=1"], ["--xla_nope=2"]]
  assert device.unknown_xla_flags(["--xla_nope=3", "--xla_a"]) == ["--xla_nope"]
  assert len(tried) == 3  # answered from the cache
  cache = tmp_path / "dcgan_jax" / "xla_flags.json"
  cache.write_text("{not json")
  assert device.unknown_xla_flags(["--xla_a=1"]) == [] and tried[-1] == ["--xla_a=1"]
  monkeypatch.setattr(device, "_jaxlib_version", lambda: "9.9.9")  # another jaxlib: tried anew
  assert device.unknown_xla_flags(["--xla_a=1"]) == [] and len(tried) == 5
  assert set(json.loads(cache.read_text())) == {importlib.metadata.version("jaxlib"), "9.9.9"}
