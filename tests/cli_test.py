"""The commands that `pip install -e .` puts beside Python: dcgan-jax (main.py's flags) and
dcgan-jax-convert."""

import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # runs the commands

BIN = pathlib.Path(sys.executable).parent


def _command(name: str, *args: str, cwd) -> subprocess.CompletedProcess:
  path = BIN / name
  assert path.is_file(), f"{path} is missing: install the project with pip install -e ."
  return subprocess.run([str(path), *args], capture_output=True, text=True, cwd=cwd,
                        timeout=300)


def test_dcgan_jax_has_main_pys_flags_from_any_folder(tmp_path):
  result = _command("dcgan-jax", "--help", cwd=tmp_path)  # absl's help exits with status 1
  assert result.returncode in (0, 1) and not result.stderr, result.stderr[-2000:]
  for flag in ("--config", "--workdir", "--mode", "--sample_seed", "--coordinator_address"):
    assert flag in result.stdout, flag
  result = _command("dcgan-jax", "--config.image_size=48", f"--workdir={tmp_path / 'run'}",
                    cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
      "error: config.image_size=48 is not supported; choose one of 32, 64, 128")
  assert not (tmp_path / "run").exists()


def test_a_preset_loads_from_any_folder(tmp_path):
  preset = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mnist.py"
  result = _command("dcgan-jax", f"--config={preset}", "--config.ngf=0",
                    f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert result.returncode == 2 and "config.ngf=0 must be positive" in result.stderr


def test_dcgan_jax_convert(tmp_path):
  result = _command("dcgan-jax-convert", "--help", cwd=tmp_path)
  assert result.returncode == 0 and result.stdout.startswith("usage: dcgan-jax-convert")
  result = _command("dcgan-jax-convert", "import", f"--netG={tmp_path / 'none.pth'}",
                    f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.startswith("error: --netG=")
