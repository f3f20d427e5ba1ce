"""The notebooks in examples/ run top to bottom in a kernel of this Python, and show images."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # trains runs in a Jupyter kernel

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, cwd: pathlib.Path) -> list[dict]:
  nb = nbformat.read(EXAMPLES / name, as_version=4)
  assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
      f"{name} is stored with outputs: clear them")
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(cwd)}}).execute()
  return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _pngs(outputs: list[dict]) -> int:
  return sum("image/png" in out.get("data", {}) for out in outputs)


def _text(outputs: list[dict]) -> str:
  return "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")


def test_quickstart_trains_shows_samples_and_measures(tmp_path, monkeypatch):
  monkeypatch.setenv("DCGAN_JAX_QUICKSTART_STEPS", "30")
  monkeypatch.setenv("DCGAN_JAX_QUICKSTART_SAMPLES", "200")  # each of its 4 evaluations
  outputs = _run("quickstart.ipynb", tmp_path)
  assert _pngs(outputs) == 5  # the grid, the losses, the quality curve, a sample, a strip
  text = _text(outputs)
  assert "trained to step 30" in text and "classifier_fid" in text and "classes_present" in text
  workdir = tmp_path / "runs" / "quickstart"
  assert (workdir / "quality.png").is_file() and (workdir / "tensorboard").is_dir()


def _run_twice_in_one_kernel(name: str, cwd: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """Runs every cell, then every cell again, in one kernel (as a user reruns a notebook):
  the outputs of each pass."""
  nb = nbformat.read(EXAMPLES / name, as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(cwd)}})
  passes = []
  with client.setup_kernel():
    for _ in range(2):
      for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
          cell.outputs = []
          client.execute_cell(cell, index)
      passes.append([out for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs])
  return passes[0], passes[1]


def test_celeba_notebook_on_a_folder_it_makes_twice_in_one_kernel(tmp_path, monkeypatch):
  monkeypatch.setenv("DCGAN_JAX_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("CELEBA_DIR", str(tmp_path / "img_align_celeba"))
  first, second = _run_twice_in_one_kernel("celeba.ipynb", tmp_path)
  for outputs in (first, second):  # the second fit resumes: nothing left to train
    assert _pngs(outputs) == 3  # the losses, the last grid, a sample
    assert "step 4" in _text(outputs)
    assert not [o for o in outputs if o.get("output_type") == "error"]
  assert len(list((tmp_path / "runs" / "celeba" / "checkpoints").iterdir())) >= 1
