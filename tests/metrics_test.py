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
