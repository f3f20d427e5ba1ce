"""The benchmarks' JSON lines (throughput, epoch, scaling, input pipeline, .pth reader), on
tiny models."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dcgan_jax.configs import default

pytestmark = pytest.mark.slow  # every benchmark runs in a subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--channels", "1", "--batch-size", "4", "--ngf", "4", "--ndf", "4",
        "--steps", "1", "--windows", "2", "--warmup", "0"]


def _run(*args: str) -> list[dict]:
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *args],
                       capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_jax_line_has_the_contract_fields():
  [line] = _run("--impl", "jax", *TINY)
  for field in ("impl", "device", "image_size", "batch_size", "images_per_s", "ms_per_step"):
    assert field in line, field
  assert line["impl"] == "jax" and line["image_size"] == 32 and line["batch_size"] == 4
  assert len(line["window_ms"]) == 2 and line["ms_per_step"] > 0
  assert line["images_per_s"] == round(4 / line["ms_per_step"] * 1000, 1)
  assert line["gflop_per_step"] > 0
  assert line["steps_per_dispatch"] == 1  # --steps 1: one call of one step
  assert line["deterministic"] is True  # configs/default.py's config.deterministic
  assert "flop_fraction" not in line  # no known peak for a CPU


def test_jax_runs_as_the_training_loop_with_the_flop_fraction_of_a_given_peak():

  k = default.get_config().steps_per_dispatch
  [line] = _run("--impl", "jax", *TINY[:-6], "--steps", str(k + 1), "--windows", "1",
                "--warmup", "0", "--peak-tflops", "2.5", "--deterministic", "0")
  assert line["steps_per_dispatch"] == k > 1  # calls of k steps and of 1, as the loop makes them
  assert line["deterministic"] is False
  assert line["peak_tflops"] == 2.5
  # achieved_tflops and flop_fraction are rounded to 3 and 4 decimals
  assert abs(line["flop_fraction"] * 2.5 - line["achieved_tflops"]) <= 0.0005 + 2.5 * 0.00005
  assert line["flop_fraction"] > 0


def test_peak_tflops_of_known_gpus():
  from benchmarks.throughput import peak_tflops  # pylint: disable=g-import-not-at-top

  assert peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 494.7
  assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
  assert peak_tflops("NVIDIA H200", "bfloat16") == 989.4
  assert peak_tflops("cpu", "float32") is None


def test_epoch_runs_the_training_loop_over_every_image_once(tmp_path):
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "epoch.py"),
                        "--num-images", "200", "--image-size", "32", "--channels", "1",
                        "--batch-size", "16", "--ngf", "4", "--ndf", "4", "--repeats", "2",
                        "--steps-per-dispatch", "4", "--tmp-dir", str(tmp_path)],
                       capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
  first, second = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert first["steps"] == second["steps"] == 200 // 16  # one epoch, the partial batch dropped
  assert first["repeat"] == 0 and second["repeat"] == 1
  assert first["steps_per_dispatch"] == 4 and first["data_on_device"] is True
  assert first["compilations"] >= 1 and second["compilations"] == 0  # found compiled
  assert first["wall_s"] > 0 and second["wall_s"] > 0
  rate = second["loop_images_per_s"]
  assert rate > 0 and second["epoch_s_at_loop_rate"] == round(200 / rate, 2)
  assert os.listdir(tmp_path) == []  # the synthetic images and the workdirs are removed


def test_epoch_loop_rate_counts_only_timed_dispatches():
  from benchmarks.epoch import loop_rate  # pylint: disable=g-import-not-at-top

  rows = [{"images_per_s": "nan", "seconds": "0.5"},  # only the first (compiling) dispatch
          {"images_per_s": "100", "seconds": "2"}, {"images_per_s": "300", "seconds": "1"}]
  assert loop_rate(rows) == (200 + 300) / 3


def test_rounds_run_each_implementation_in_its_own_process():
  lines = _run("--impl", "jax", "--rounds", "2", *TINY)
  assert [(line["impl"], line["round"]) for line in lines] == [("jax", 0), ("jax", 1)]


def test_unknown_impl_is_refused():
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"),
                        "--impl", "jax,mxnet", *TINY], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 2 and "'mxnet'" in out.stderr


def test_scaling_lines_count_the_gradient_all_reduce_and_agree_with_one_device():
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--fake",
                        "--devices", "1,2", "--image-size", "32", "--channels", "1",
                        "--batch-size", "8", "--ngf", "4", "--ndf", "4", "--steps", "1",
                        "--windows", "1", "--warmup", "0"],
                       capture_output=True, text=True, check=True, cwd=ROOT, timeout=600)
  one, two = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert (one["devices"], two["devices"]) == (1, 2)
  assert (one["per_device_batch"], two["per_device_batch"]) == (8, 4)
  assert one["all_reduce_ops"] == one["all_reduce_bytes"] == 0
  # Both networks' gradients cross the devices, plus BatchNorm statistics and the losses.
  assert two["grad_bytes"] <= two["all_reduce_bytes"] < 1.5 * two["grad_bytes"]
  assert two["first_loss_rel_diff"] < 1e-5 and two["max_param_diff"] < 1e-3


def test_all_reduce_traffic_of_hlo_text():
  from benchmarks.scaling import all_reduce_traffic  # pylint: disable=g-import-not-at-top
  hlo = ("  %a = f32[64,3,4,4]{3,2,1,0} all-reduce(f32[64,3,4,4]{3,2,1,0} %x), to_apply=%add\n"
         "  %b = (f32[10]{0}, bf16[2,2]{1,0}) all-reduce-start(%y, %z), to_apply=%add\n"
         "  %c = f32[99]{0} add(%p, %q)\n")
  assert all_reduce_traffic(hlo) == (2, 64 * 3 * 16 * 4 + 10 * 4 + 4 * 2)


def test_bad_benchmark_arguments_get_one_line():
  for script, args, message in (
      ("throughput.py", ["--impl", "jax", "--peak-tflops", "-1", *TINY], "--peak-tflops -1.0"),
      ("throughput.py", ["--impl", "jax", "--classes", "-2", *TINY], "--classes -2 must be >= 0"),
      ("throughput.py", ["--impl", "jax", "--hash-steps", "-1", *TINY], "--hash-steps -1 must"),
      ("epoch.py", ["--image-size", "48", "--num-images", "300"], "config.image_size=48"),
      ("epoch.py", ["--num-images", "100"], "--num-images 100 is smaller")):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr and not out.stdout


def test_pth_reader_times_both_formats_of_the_inception_layout():
  pytest.importorskip("torch")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pth_reader.py"), "--scale",
                        "0.05", "--repeats", "2"], capture_output=True, text=True, check=True,
                       cwd=ROOT, timeout=600)
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [line["format"] for line in lines] == ["zip", "legacy"]
  for line in lines:
    assert line["benchmark"] == "pth_reader" and line["repeats"] == 2
    assert line["tensors"] == 566  # pytorch-fid's keys, BatchNorm counters and fc included
    assert 0 < line["ms_min"] <= line["ms_median"] and line["bytes"] > 4 * line["elements"]


def test_input_pipeline_benchmark_emits_every_stage():
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
                        "--num-images", "40", "--image-size", "32", "--batch-size", "4",
                        "--feed-steps", "4"], capture_output=True, text=True, check=True,
                       cwd=ROOT, timeout=600)
  lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [line["bench"] for line in lines] == [
      "jpeg_decode_1core", "jpeg_decode_all_cores", "cache_build", "cache_hit",
      "cache_build_jpeg_draft", "feed_host", "feed_prefetch"]
  for line in lines:  # every stage reports its rate, or (the cache) its seconds
    if line["bench"] == "cache_hit":
      assert line["seconds"] >= 0 and "images_per_s" not in line
    else:
      assert line["images_per_s"] > 0


@pytest.mark.parametrize("impl", ["torch-eager", "torch-compile"])
def test_torch_lines_have_the_contract_fields(impl):
  pytest.importorskip("torch")
  [line] = _run("--impl", impl, *TINY)
  assert line["impl"] == impl and line["image_size"] == 32 and line["batch_size"] == 4
  assert line["ms_per_step"] > 0 and line["images_per_s"] > 0 and len(line["window_ms"]) == 2


def test_quality_runs_a_setting_and_tabulates_mean_and_spread(tmp_path):
  """benchmarks/quality.py: a setting's run (tiny, 4 steps, evaluated at 2 and 4) gives its line
  from metrics.csv; two seeds give a row of mean +/- standard deviation."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import quality  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(ROOT / "benchmarks"))
  assert quality.budget("dcgan") == 10_000
  assert quality.budget("wgan_gp") == round(10_000 / quality.COST["wgan_gp"] / 100) * 100
  # The embedded default (R1) trains as long as the paper's DCGAN's 10,000 steps take.
  assert quality.budget("default") == default.get_config().num_train_steps == 7_800
  assert quality.config_of("default", 0).r1_weight == 1.0 == quality.config_of("r1", 0).r1_weight
  for setting in ("dcgan", "hinge", "lsgan", "wgan_gp", "spectral_norm", "diffaugment"):
    assert quality.config_of(setting, 0).r1_weight == 0.0, setting
  tiny = dict(ngf=8, ndf=8, batch_size=16, eval_every_steps=2, eval_num_samples=20,
              log_every_steps=2, sample_every_steps=4, checkpoint_every_steps=4)
  lines = [quality.run("r1", seed, str(tmp_path / f"r1_{seed}"), steps=4, **tiny)
           for seed in (0, 1)]
  from dcgan_jax import metrics  # pylint: disable=g-import-not-at-top
  rows = metrics.read_metrics(str(tmp_path / "r1_0" / "metrics.csv"))
  assert [int(r["step"]) for r in rows] == [2, 4] and float(rows[0]["d_penalty"]) > 0
  assert lines[0]["steps"] == 4 and lines[0]["setting"] == "r1"
  for who, prefix in (("g", ""), ("ema", "ema_")):
    fids = [float(r[f"{prefix}classifier_fid"]) for r in rows]
    assert lines[0][who]["best_fid"] == min(fids) and lines[0][who]["final_fid"] == fids[-1]
    assert lines[0][who]["best_step"] == 2 + 2 * fids.index(min(fids))
    assert lines[0][who]["classes_present"] == int(float(rows[-1][f"{prefix}classes_present"]))
  assert lines[0]["g"] != lines[1]["g"]  # another seed, another run
  table = quality.table(lines).splitlines()
  assert table[2].startswith("| r1 | 0,1 | 4 | ") and " +/- " in table[2]
  assert table[3].startswith("| r1, G's EMA | 0,1 | 4 | ")


def test_throughput_line_where_xla_gives_no_cost_analysis(monkeypatch, capsys):
  """Some backends' cost_analysis() returns None (jax 0.11's GPU): the line still comes, that
  figure null, the FLOPs counted from the architecture."""
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks import throughput  # pylint: disable=g-import-not-at-top
  from dcgan_jax import flops  # pylint: disable=g-import-not-at-top

  for broken in (lambda self: None, lambda self: [], lambda self: 1 / 0):
    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", broken)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--impl", "jax", *TINY])
    throughput.main()
    line = json.loads(capsys.readouterr().out)
    assert line["xla_gflop_per_step"] is None and line["ms_per_step"] > 0
    assert line["gflop_per_step"] == round(flops.iteration_flops(32, 1, 4, 4, 100, 4) / 1e9, 2)
    assert line["achieved_tflops"] >= 0 and "error" not in line


def test_sweep_runs_every_form_pair_in_its_own_process_and_reports_a_dead_one(monkeypatch,
                                                                               capsys):
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top

  children = []

  def fake_run(argv, **kwargs):  # pylint: disable=unused-argument
    children.append(argv[2:])
    up, down = argv[argv.index("--upconv-impl") + 1], argv[argv.index("--downconv-impl") + 1]
    if (up, down) == ("col2im", "xla"):  # killed for memory: no line, a message on stderr
      return subprocess.CompletedProcess(argv, -9, "", "Killed\n")
    line = {"impl": "jax", "upconv_impl": up, "downconv_impl": down, "ms_per_step": 1.0}
    return subprocess.CompletedProcess(argv, 0, json.dumps(line) + "\n", "")

  monkeypatch.setattr(subprocess, "run", fake_run)
  monkeypatch.setattr(sys, "argv", ["throughput.py", "--sweep", "--batch-size", "8",
                                    "--upconv-impl", "phase", "--steps", "3"])
  throughput.main()
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  pairs = [(l["upconv_impl"], l["downconv_impl"]) for l in lines]
  assert pairs == [(u, d) for u in ("xla", "phase", "matmul", "col2im", "vjp")
                   for d in ("xla", "matmul")]
  assert all(l["sweep"] is True and l["round"] == 0 for l in lines)
  assert lines[6]["error"] == "exit status -9: Killed" and "ms_per_step" not in lines[6]
  for child in children:  # the forms are the child's own; the other flags pass through
    assert child.count("--upconv-impl") == 1 and "--sweep" not in child
    assert child[-4:] == ["--batch-size", "8", "--steps", "3"]


def test_sweep_is_for_dcgan_jax_only():
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--sweep",
                        "--impl", "torch-eager", *TINY], capture_output=True, text=True,
                       cwd=ROOT)
  assert out.returncode == 2 and "--sweep times dcgan-jax's forms" in out.stderr


@pytest.mark.slow  # two throughput.py processes
def test_two_fresh_processes_hash_the_same_state_and_other_steps_another():
  hashed = [_run("--impl", "jax", *TINY, "--hash-steps", steps)[0] for steps in ("2", "2", "3")]
  assert [l["hash_steps"] for l in hashed] == [2, 2, 3]
  assert all(len(l["state_sha256"]) == 64 and l["ms_per_step"] > 0 for l in hashed)
  assert hashed[0]["state_sha256"] == hashed[1]["state_sha256"] != hashed[2]["state_sha256"]


@pytest.mark.slow  # a conditional training step compiled in a subprocess
def test_conditional_line_times_a_class_conditional_step():
  [line] = _run("--impl", "jax", *TINY, "--classes", "3", "--hash-steps", "1")
  assert line["classes"] == 3 and line["ms_per_step"] > 0 and "error" not in line
  [plain] = _run("--impl", "jax", *TINY, "--hash-steps", "1")
  assert plain["classes"] == 0 and plain["state_sha256"] != line["state_sha256"]


def test_state_hash_covers_every_leaf_its_dtype_and_shape():
  import numpy as np  # pylint: disable=g-import-not-at-top

  from benchmarks import throughput  # pylint: disable=g-import-not-at-top

  state = {"a": np.zeros((2, 3), np.float32), "b": [np.arange(4, dtype=np.uint32)]}
  base = throughput.state_sha256(state)
  assert base == throughput.state_sha256({"a": np.zeros((2, 3), np.float32),
                                          "b": [np.arange(4, dtype=np.uint32)]})
  changed = [{**state, "a": np.zeros((3, 2), np.float32)},  # same bytes, other shape
             {**state, "a": np.zeros((2, 3), np.int32)},  # same bytes, other dtype
             {**state, "b": [np.arange(1, 5, dtype=np.uint32)]}]
  assert len({base, *map(throughput.state_sha256, changed)}) == 4


def test_determinism_runs_each_mode_in_two_fresh_processes_with_its_flags(monkeypatch, capsys):
  from benchmarks import determinism  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/shared_cache")
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true --xla_dump_to=/tmp/d")
  monkeypatch.setattr(determinism.device, "require_xla_flags", lambda flags, what: None)
  calls = []

  def fake_child(argv, env, timeout_s):  # pylint: disable=unused-argument
    calls.append((argv, env))
    mode = ("flag" if argv[argv.index("--deterministic") + 1] == "1"
            else "pinned" if "load_autotune" in env["XLA_FLAGS"] else "off")
    n = sum(1 for a, e in calls[:-1] if ("load_autotune" in e["XLA_FLAGS"]) == (mode == "pinned")
            and a[a.index("--deterministic") + 1] == argv[argv.index("--deterministic") + 1])
    digest = "b" * 64 if (mode, n) == ("off", 1) else "a" * 64  # off's second process differs
    return {"impl": "jax", "ms_per_step": 1.0 + n, "state_sha256": digest, "hash_steps": 7}

  monkeypatch.setattr(determinism, "run_child", fake_child)
  assert determinism.main(["--hash-steps", "7", "--batch-size", "8"]) == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [(l["mode"], l.get("process")) for l in lines] == [
      ("flag", 0), ("flag", 1), ("flag", None), ("off", 0), ("off", 1), ("off", None),
      ("pinned", 0), ("pinned", 1), ("pinned", None)]
  summaries = {l["mode"]: l for l in lines if "bitwise_equal" in l}
  assert summaries["flag"]["bitwise_equal"] is True and summaries["pinned"]["bitwise_equal"]
  assert summaries["off"]["bitwise_equal"] is False
  assert summaries["flag"]["ms_per_step"] == [1.0, 2.0]
  assert summaries["flag"]["mean_ms_per_step"] == 1.5
  assert summaries["pinned"]["autotune_results_bytes"] == 0  # nothing written by the fake
  for argv, env in calls:
    assert argv[:4] == ["--impl", "jax", "--hash-steps", "7"] and argv[-2:] == ["--batch-size", "8"]
    assert "JAX_COMPILATION_CACHE_DIR" not in env and env["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    assert env["XLA_FLAGS"].startswith("--xla_dump_to=/tmp/d")  # the user's flags stay
    assert "deterministic_ops" not in env["XLA_FLAGS"]  # throughput.py sets it (--deterministic)
  flags = [env["XLA_FLAGS"].split()[1:] for _, env in calls]
  dump = flags[2][0]
  assert dump.startswith("--xla_gpu_dump_autotune_results_to=") and flags[3] == []
  where = dump.partition("=")[2]
  assert flags[4] == flags[5] == [f"--xla_gpu_load_autotune_results_from={where}",
                                  "--xla_gpu_require_complete_aot_autotune_results=true"]
  assert flags[0] == flags[1] == []
  assert [a[a.index("--deterministic") + 1] for a, _ in calls] == ["1", "1", "0", "0", "0", "0"]


def test_determinism_refuses_a_flag_the_jaxlib_does_not_take_and_its_own_flags(monkeypatch,
                                                                               tmp_path, capsys):
  from benchmarks import determinism  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(determinism.device, "AUTOTUNE_LOAD_FLAG", "--xla_gpu_no_such_load_flag")
  monkeypatch.setattr(determinism, "run_child", lambda *a: pytest.fail("a process started"))
  for argv, message in ((["--batch-size", "8"], "needs XLA flag --xla_gpu_no_such_load_flag"),
                        (["--deterministic", "1"], "--deterministic is this benchmark's to set"),
                        (["--hash-steps", "0"], "--hash-steps 0 must be positive")):
    with pytest.raises(SystemExit) as e:
      determinism.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_hlo_scan_counts_targets_dilated_inputs_and_interior_pads():
  from benchmarks import hlo  # pylint: disable=g-import-not-at-top

  text = "\n".join([
      '  %a = (f32[2,8,8,5]{3,2,1,0}, u8[0]{0}) custom-call(f32[2,4,4,6]{3,2,1,0} %x, '
      'f32[5,4,4,6]{3,2,1,0} %k), window={size=4x4 pad=2_2x2_2 lhs_dilate=2x2}, '
      'custom_call_target="__cudnn$convBackwardInput"',
      '  %b = (f32[4,4,5,6]{3,2,1,0}, u8[0]{0}) custom-call(%g, %x), '
      'custom_call_target="__cudnn$convBackwardFilter"',
      '  %c = (f32[4,4,5,6]{3,2,1,0}, u8[0]{0}) custom-call(%g, %x), '
      'custom_call_target="__cudnn$convBackwardInput"',
      "  %p = f32[2,11,11,6]{3,2,1,0} pad(f32[2,4,4,6]{3,2,1,0} %x, f32[] %z), "
      "padding=0_0x2_2_1x2_2_1x0_0",
      "  %q = f32[2,6,6,6]{3,2,1,0} pad(f32[2,4,4,6]{3,2,1,0} %x, f32[] %z), "
      "padding=0_0x1_1x1_1x0_0",
      "  %v = f32[2,8,8,5]{3,2,1,0} convolution(f32[2,4,4,6]{3,2,1,0} %x, %k), "
      "window={size=4x4 pad=2_2x2_2 lhs_dilate=2x2}, dim_labels=b01f_01oi->b01f",
      "  %w = f32[2,2,2,5]{3,2,1,0} convolution(%x, %k), window={size=4x4 stride=2x2 "
      "pad=1_1x1_1}, dim_labels=b01f_01io->b01f"])
  assert hlo.scan(text) == {
      "custom_call_targets": {"__cudnn$convBackwardFilter": 1, "__cudnn$convBackwardInput": 2},
      "cudnn_backward_input": True, "cudnn_backward_filter": True,
      "dilated_input_convolutions": 1, "interior_padded_pads": 1}


@pytest.mark.slow  # compiles two training steps in a subprocess
def test_hlo_writes_each_forms_compiled_step_and_what_it_calls(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top

  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hlo.py"), "--image-size",
                        "32", "--channels", "1", "--ngf", "4", "--ndf", "4", "--batch-size", "2",
                        "--upconv-impls", "vjp,phase", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
  lines = [json.loads(l) for l in out.stdout.splitlines()]
  assert [l["upconv_impl"] for l in lines] == ["vjp", "phase"]
  for line in lines:
    text = gzip.open(line["hlo_file"], "rt").read()
    assert text.startswith("HloModule") and " convolution(" in text
    assert line["backend"] == "cpu" and line["cudnn_backward_input"] is False
  # the vjp form's transposed convolutions run over the stride-dilated input; the phase form's
  # stride-1 convolutions need none
  assert lines[0]["dilated_input_convolutions"] > 0 == lines[1]["dilated_input_convolutions"]


def _finetune(tmp_path, *args) -> dict:
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "finetune.py"), "--tiny",
                        "--seeds", "0", "--steps", "10", "--pretrain-steps", "10",
                        "--eval-every", "5", "--eval-samples", "64", "--keep", str(tmp_path),
                        *args], capture_output=True, text=True, check=True, cwd=ROOT,
                       timeout=600)
  [line] = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  return line


def test_finetune_compares_a_fine_tuned_run_with_one_from_scratch(tmp_path):
  line = _finetune(tmp_path)
  assert line["benchmark"] == "finetune" and line["steps"] == 10
  assert [s for s, _ in line["scratch_curve"]] == [s for s, _ in line["finetune_curve"]] == [5, 10]
  assert line["scratch_final"] == line["scratch_curve"][-1][1]
  reached = line["finetune_steps_to_scratch_final"]
  assert reached is None or reached in (5, 10)
  origin = json.loads((tmp_path / "finetune_0" / "init_from.json").read_text())
  assert origin["init_from"] == str(tmp_path / "pretrain_0") and origin["weights"] == "G's EMA"
  config = json.loads((tmp_path / "scratch_0" / "config.json").read_text())
  assert config["classes"] == "5,6,7,8,9" and config["init_from"] == ""
  assert line["freeze_d_layers"] == 0 and line["pretrain_steps"] == 10
  # Again with FreezeD: only the new fine-tuned run trains; the kept runs are read.
  kept = {p: p.read_bytes() for p in tmp_path.glob("*_0/metrics.csv")}
  frozen = _finetune(tmp_path, "--freeze-d-layers", "1")
  assert all(p.read_bytes() == kept[p] for p in kept)
  assert frozen["freeze_d_layers"] == 1 and frozen["scratch_curve"] == line["scratch_curve"]
  config = json.loads((tmp_path / "finetune_freeze1_0" / "config.json").read_text())
  assert config["freeze_d_layers"] == 1 and config["init_from"] == str(tmp_path / "pretrain_0")
