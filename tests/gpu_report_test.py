"""benchmarks/gpu_report.py: its stages on tiny models (a smoke test on the CPU), the budget that
stops a stage and its whole process group, and what it reads from the stages' outputs."""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_report

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs main.py and pytest in subprocesses
def test_tiny_report_runs_its_stages_to_their_lines_and_table(tmp_path):
  """The hlo, default and tests stages run for real (their lines are the report's own reading of a
  run and of pytest); the benchmark stages' commands are benchmarks_test's, their lines
  copied as they come (test_stage_lines_say_why_a_command_gave_no_figure)."""
  out = tmp_path / "report.jsonl"
  result = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), "--tiny", "--out", str(out),
       "--stages", "default,tests,hlo",
       "--pytest-args", "tests/flops_test.py::test_iteration_flops_add_up_the_passes"],
      capture_output=True, text=True, cwd=tmp_path, timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [l["stage"] for l in lines] == ["machine", "hlo", "hlo", "default", "tests"]
  assert lines[0]["backend"] == "cpu" and "jax" in lines[0]["versions"]
  assert [l["upconv_impl"] for l in lines[1:3]] == ["vjp", "xla"]
  assert sorted(p.name for p in (tmp_path / "report_hlo").iterdir()) == [
      "train_step-vjp-auto.hlo.txt.gz", "train_step-xla-auto.hlo.txt.gz"]  # beside --out
  default = lines[3]
  assert default["steps"] == 4 and default["wall_s"] > 0
  for who in ("g", "ema"):  # evaluated at steps 2 and 4
    assert default[who]["best_step"] in (2, 4)
    assert default[who]["best_fid"] <= default[who]["final_fid"]
  tests = lines[4]
  assert tests["passed"] == 1 and tests["failures"] == [] and "1 passed" in tests["summary"]
  table = result.stdout.strip().splitlines()
  assert table[0] == "| stage | what | result |" and len(table) == 2 + len(lines)
  assert table[-1].startswith("| tests | pytest -m 'not slow' | 1 passed, 0 failed")


def test_the_full_plan_measures_what_a_gpu_changes(tmp_path):
  args = argparse.Namespace(tiny=False, stages=list(gpu_report.STAGES),
                                       pytest_args="")
  stages = gpu_report.plan(args, str(tmp_path), str(tmp_path / "hlo"))
  assert [(s.name, s.setting) for s in stages] == [
      ("throughput", "batch 128, float32"), ("throughput", "batch 1024, float32"),
      ("hlo", "batch 128, float32, one training step"),
      ("determinism", "batch 128, float32"), ("determinism", "batch 128, bfloat16"),
      ("determinism", "batch 1024, float32"), ("determinism", "batch 1024, bfloat16"),
      ("sweep", "batch 1024, float32, every form"), ("default", "python main.py"),
      ("epoch", "celeba preset, synthetic images"), ("tests", "pytest -m 'not slow'")]

  def flags(stage):
    argv = stage.argv
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}

  for stage in stages[:8]:  # 64x64x3, ngf = ndf = 64
    f = flags(stage)
    assert (f["--image-size"], f["--channels"], f["--ngf"], f["--ndf"]) == ("64", "3", "64", "64")
  for stage in stages[:2] + stages[7:8]:  # one compiled length: whole calls of 25 steps
    f = flags(stage)
    assert f["--steps"] == f["--warmup"] == f["--steps-per-dispatch"] == "25"
  assert flags(stages[0])["--impl"] == flags(stages[1])["--impl"] == "all"  # with PyTorch
  hlo = flags(stages[2])
  assert stages[2].argv[1].endswith("hlo.py") and hlo["--upconv-impls"] == "vjp,xla"
  assert hlo["--out-dir"] == str(tmp_path / "hlo")
  for stage, (batch, dtype) in zip(stages[3:7], [("128", "float32"), ("128", "bfloat16"),
                                                 ("1024", "float32"), ("1024", "bfloat16")]):
    f = flags(stage)
    assert stage.argv[1].endswith("determinism.py") and f["--hash-steps"] == "50"
    assert (f["--batch-size"], f["--compute-dtype"]) == (batch, dtype)
    assert f["--steps"] == f["--steps-per-dispatch"] == "25"  # 50 hashed steps: 2 whole calls
    assert f["--warmup"] == "0"  # the last one given: the hashed steps warm the process up
  assert "--sweep" in stages[7].argv
  assert stages[8].argv[1].endswith("main.py") and len(stages[8].argv) == 4  # as shipped
  assert stages[9].argv[1].endswith("epoch.py") and "--num-images" not in stages[9].argv
  assert stages[10].argv[-2:] == ["-m", "not slow"]
  assert sum(s.cap_s for s in stages) >= 540  # the budget, not the caps, ends the report


def test_table_rows_of_the_hlo_and_determinism_lines():
  hlo = {"stage": "hlo", "setting": "batch 128", "upconv_impl": "vjp", "downconv_impl": "xla",
         "custom_call_targets": {"__cudnn$convBackwardInput": 3, "__cudnn$convForward": 9},
         "cudnn_backward_input": True, "cudnn_backward_filter": False,
         "dilated_input_convolutions": 0, "interior_padded_pads": 1}
  process = {"stage": "determinism", "setting": "batch 8, bfloat16", "impl": "jax",
             "upconv_impl": "auto", "downconv_impl": "auto", "mode": "pinned", "process": 1,
             "ms_per_step": 2.5, "images_per_s": 3200.0, "achieved_tflops": 1.25,
             "state_sha256": "0123456789abcdef", "hash_steps": 50}
  mode = {"stage": "determinism", "setting": "batch 8, bfloat16", "benchmark": "determinism",
          "mode": "off", "bitwise_equal": False, "ms_per_step": [2.0, 2.2],
          "mean_ms_per_step": 2.1}
  assert gpu_report.table([hlo, process, mode]).splitlines()[2:] == [
      "| hlo | batch 128: vjp/xla | backward-input yes, backward-filter no; custom calls: "
      "__cudnn$convBackwardInput x3, __cudnn$convForward x9; 0 convolutions over a dilated "
      "input, 1 interior-padded pads |",
      "| determinism | batch 8, bfloat16: jax auto/auto, pinned, process 1 | 2.50 ms, 3,200 "
      "img/s, 1.2 TFLOP/s; state 0123456789ab after 50 steps |",
      "| determinism | batch 8, bfloat16: off, 2 fresh processes | bitwise equal after the "
      "hashed steps: NO; 2.10 ms per step (mean) |"]


def test_a_command_past_its_time_is_stopped_with_its_children():
  code = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "print(child.pid, flush=True)\n"
          "time.sleep(60)\n")
  assert _running(os.getpid())
  t0 = time.monotonic()
  status, out, _ = gpu_report.run([sys.executable, "-c", code], 3, dict(os.environ))
  assert status is None and time.monotonic() - t0 < 30
  grandchild = int(out.split()[0])
  time.sleep(0.5)
  assert not _running(grandchild)  # the whole group went: nothing holds the device


def _running(pid: int) -> bool:
  """Whether pid runs (a killed process nobody has reaped yet is a zombie: not running)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_stage_lines_say_why_a_command_gave_no_figure(tmp_path):
  stage = gpu_report.Stage("epoch", "x", [sys.executable, "-c",
                                          "import sys; print('oops', file=sys.stderr); sys.exit(3)"],
                           10)
  gpu_report.run_stage(stage, 10, dict(os.environ))
  assert stage.lines == [{"stage": "epoch", "setting": "x", "error": "exit status 3: oops"}]
  stage = gpu_report.Stage("sweep", "y", [sys.executable, "-c",
                                          "import time; print('{\"a\": 1}', flush=True); "
                                          "time.sleep(60)"], 2)
  gpu_report.run_stage(stage, 2, dict(os.environ))
  assert stage.lines[0] == {"stage": "sweep", "setting": "y", "a": 1}  # what came before
  assert stage.lines[1]["error"].startswith("stopped after")


def test_budget_spent_skips_the_later_stages(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(gpu_report, "machine_line", lambda env: {"stage": "machine", "error": "-"})
  calls = []

  def slow_stage(stage, timeout_s, env):  # pylint: disable=unused-argument
    calls.append((stage.name, timeout_s))
    time.sleep(1.2)
    stage.lines = [{"stage": stage.name, "setting": stage.setting, "error": "slow"}]

  monkeypatch.setattr(gpu_report, "run_stage", slow_stage)
  out = tmp_path / "r.jsonl"
  assert gpu_report.main(["--out", str(out), "--budget-s", "6", "--stages", "epoch,tests"]) == 0
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [l["stage"] for l in lines] == ["machine", "epoch", "tests"]
  assert calls[0][0] == "epoch" and calls[0][1] <= 6
  assert lines[2]["skipped"].startswith("the report's budget ran out")
  assert "| tests | pytest -m 'not slow' | the report's budget ran out" in capsys.readouterr().out


def test_missing_packages_are_named_with_their_install_command(monkeypatch, capsys):
  monkeypatch.setitem(gpu_report.NEEDED, "no_such_module_xyz", "no-such-package")
  with pytest.raises(SystemExit) as e:
    gpu_report.main(["--out", os.devnull])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "lacks no-such-package: pip install no-such-package" in err


def test_test_lines_count_outcomes_also_of_a_stopped_run():
  stdout = ("tests/a_test.py::test_x PASSED                    [ 10%]\n"
            "tests/a_test.py::test_y[1-2] FAILED              [ 20%]\n"
            "tests/b_test.py::test_z SKIPPED (no torch)       [ 30%]\n")
  line = gpu_report.test_run_line(stdout)
  assert line == {"passed": 1, "failed": 1, "skipped": 1,
                  "failures": ["tests/a_test.py::test_y[1-2]"], "summary": None}
  done = gpu_report.test_run_line(stdout + "==== 1 failed, 1 passed, 1 skipped in 3.2s ====\n")
  assert done["summary"] == "1 failed, 1 passed, 1 skipped in 3.2s"


def test_default_line_reads_final_and_best_fids(tmp_path):
  (tmp_path / "metrics.csv").write_text(
      "step,loss_d,classifier_fid,ema_classifier_fid\n"
      "50,1.0,,\n100,1.0,30.5,40.0\n150,1.0,,\n200,1.0,35.0,20.0\n")
  assert gpu_report.default_run_line(str(tmp_path)) == {
      "steps": 200, "g": {"final_fid": 35.0, "best_fid": 30.5, "best_step": 100},
      "ema": {"final_fid": 20.0, "best_fid": 20.0, "best_step": 200}}
