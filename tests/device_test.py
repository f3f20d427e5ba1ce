"""The device a run trains on: its description, the CPU-build warning and XLA's determinism flag."""

import os

import jax
import pytest
from jax._src import xla_bridge

from dcgan_jax import device
from dcgan_jax.errors import UsageError


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
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=false")
  device.set_deterministic(True)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
  device.set_deterministic(False)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=false"
  monkeypatch.delenv("XLA_FLAGS")
  device.set_deterministic(False)  # XLA's default: nothing to write
  assert "XLA_FLAGS" not in os.environ


def test_set_after_jax_started_on_a_gpu_with_the_other_setting_is_refused(monkeypatch):
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true")
  device.set_deterministic(True)  # already in effect
  with pytest.raises(UsageError, match=r"config.deterministic=False cannot take effect.*"
                                       r"XLA_FLAGS='--xla_gpu_deterministic_ops=false'"):
    device.set_deterministic(False)
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true"  # left as it was


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
