"""metrics.csv writing, resume truncation and the loss plot."""

from PIL import Image

from dcgan_jax import metrics


def _row(step):
  return dict(step=step, epoch=step / 10, loss_d=1.5, loss_g=0.25, d_x=0.5, d_g_z1=0.4,
              d_g_z2=0.3, images_per_s=100.0, seconds=1.0)


def test_header_and_rows(tmp_path):
  path = str(tmp_path / "metrics.csv")
  writer = metrics.MetricsWriter(path)
  writer.write(_row(5))
  lines = open(path).read().splitlines()
  assert lines[0].startswith("step,epoch,loss_d,loss_g")
  assert lines[1] == "5,0.5,1.5,0.25,0.5,0.4,0.3,100,1"


def test_resume_keeps_rows_up_to_the_checkpoint_and_drops_later_ones(tmp_path):
  path = str(tmp_path / "metrics.csv")
  writer = metrics.MetricsWriter(path)
  for step in (5, 10, 15):
    writer.write(_row(step))
  writer = metrics.MetricsWriter(path, resume_step=10)
  writer.write(_row(15))
  assert [r["step"] for r in metrics.read_metrics(path)] == ["5", "10", "15"]


def test_plot_losses_writes_a_png(tmp_path):
  path = str(tmp_path / "metrics.csv")
  writer = metrics.MetricsWriter(path)
  for step in (1, 2, 3):
    writer.write(_row(step))
  metrics.plot_losses(path, str(tmp_path / "losses.png"))
  assert Image.open(tmp_path / "losses.png").size == (1000, 500)


def test_eval_columns_are_empty_between_evaluations_and_survive_resume(tmp_path):
  path = str(tmp_path / "metrics.csv")
  writer = metrics.MetricsWriter(path, eval_columns=["classifier_fid", "classes_present"])
  writer.write(_row(5))
  writer.write({**_row(10), "classifier_fid": 12.5, "classes_present": 10})
  rows = metrics.read_metrics(path)
  assert rows[0]["classifier_fid"] == "" and rows[1]["classifier_fid"] == "12.5"
  assert rows[1]["classes_present"] == "10"
  # Resumed without evaluation: the kept rows keep their values and the header its columns.
  writer = metrics.MetricsWriter(path, resume_step=10)
  writer.write(_row(15))
  rows = metrics.read_metrics(path)
  assert [r["classifier_fid"] for r in rows] == ["", "12.5", ""]


def test_plot_eval_draws_g_and_ema_or_reports_nothing(tmp_path):
  path = str(tmp_path / "metrics.csv")
  writer = metrics.MetricsWriter(path, eval_columns=["fid", "ema_fid"])
  for step, value in ((10, 80.0), (20, 40.0)):
    writer.write({**_row(step), "fid": value, "ema_fid": value / 2})
  assert metrics.plot_eval(path, str(tmp_path / "quality.png"), "ema_fid", floor=5.0)
  assert Image.open(tmp_path / "quality.png").size == (800, 450)
  assert not metrics.plot_eval(path, str(tmp_path / "none.png"), "kid")
  assert not (tmp_path / "none.png").exists()
