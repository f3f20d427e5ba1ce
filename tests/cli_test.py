"""The commands that `pip install -e .` puts beside Python: dcgan-jax (main.py's flags) and
dcgan-jax-convert."""

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from dcgan_jax import cli, configs

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


@pytest.mark.parametrize("how", ["--config=mnist", "--config mnist", "--config=CLONE",
                                 "--config=PACKAGE"])
def test_a_preset_loads_from_any_folder_by_name_or_path(tmp_path, how):
  clone = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mnist.py"
  how = how.replace("CLONE", str(clone)).replace("PACKAGE", configs.preset_path("mnist"))
  result = _command("dcgan-jax", *how.split(), "--config.ngf=0",
                    f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert result.returncode == 2 and "config.ngf=0 must be positive" in result.stderr


def test_preset_names_become_the_package_files_unless_a_file_has_that_name(tmp_path,
                                                                          monkeypatch):
  path = configs.preset_path("celeba")
  assert cli.presets_as_paths(["m", "--config", "celeba", "--config=mnist", "--config.seed=1"]
                              ) == ["m", "--config", path, f"--config={configs.preset_path('mnist')}",
                                    "--config.seed=1"]
  assert cli.presets_as_paths(["m", "--config"]) == ["m", "--config"]
  monkeypatch.chdir(tmp_path)
  (tmp_path / "celeba").write_text("")  # a file in the working folder is what was meant
  assert cli.presets_as_paths(["m", "--config=celeba"]) == ["m", "--config=celeba"]


def test_dcgan_jax_convert(tmp_path):
  result = _command("dcgan-jax-convert", "--help", cwd=tmp_path)
  assert result.returncode == 0 and result.stdout.startswith("usage: dcgan-jax-convert")
  result = _command("dcgan-jax-convert", "import", f"--netG={tmp_path / 'none.pth'}",
                    f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
  assert result.returncode == 2 and result.stderr.startswith("error: --netG=")


def test_the_wheel_installs_the_presets_inside_the_package_and_nothing_beside_it(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[1]
  src = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
  shutil.copytree(root, src, ignore=shutil.ignore_patterns(".git", "*.egg-info", "build",
                                                           "__pycache__", "tests", "docs"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True,
                 timeout=300)
  [wheel] = (tmp_path / "dist").glob("dcgan_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert {n.split("/")[0] for n in names} == {"dcgan_jax", wheel.name.split("-py")[0] +
                                              ".dist-info"}  # no top-level configs
  for preset in configs.PRESETS:
    assert f"dcgan_jax/configs/{preset}.py" in names, preset
  for suffix in ("msgpack", "json"):  # the digit classifier ships with the package
    assert f"dcgan_jax/data/digit_classifier_v1_seed0.{suffix}" in names
