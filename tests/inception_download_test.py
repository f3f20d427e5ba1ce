"""Downloading the FID Inception's weights: served on 127.0.0.1 by the test, checked by size
and SHA-256, and nothing partial left behind."""

import hashlib
import http.server
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from dcgan_jax import inception
from dcgan_jax.errors import RunError, UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent
BODY = os.urandom(300_000)


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):  # pylint: disable=invalid-name
    body = BODY
    declared = len(body)
    if self.path == "/cut.pth":  # declares the whole file, sends a third, hangs up
      body = BODY[:len(BODY) // 3]
    self.send_response(200 if self.path != "/missing.pth" else 404)
    self.send_header("Content-Length", str(declared))
    self.end_headers()
    if self.path != "/missing.pth":
      self.wfile.write(body)

  def log_message(self, *args):  # pylint: disable=arguments-differ
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=httpd.serve_forever, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()


def _download(tmp_path, url, **kwargs):
  kwargs.setdefault("sha256", hashlib.sha256(BODY).hexdigest())
  kwargs.setdefault("size", len(BODY))
  return inception.download_weights(str(tmp_path / "w" / "weights.pth"), url, **kwargs)


def test_right_file_is_written_and_a_second_call_reuses_it(server, tmp_path):
  path = _download(tmp_path, f"{server}/weights.pth")
  assert pathlib.Path(path).read_bytes() == BODY
  assert os.listdir(tmp_path / "w") == ["weights.pth"]
  assert _download(tmp_path, f"{server}/missing.pth") == path  # verified: not fetched again


@pytest.mark.parametrize("name,kwargs,error,message", [
    ("weights.pth", {"sha256": "0" * 64}, UsageError, "is not the weights file's 0000"),
    ("weights.pth", {"size": 1000}, UsageError, "sends more than the 1,000 bytes"),
    ("cut.pth", {}, RunError, "100,000 bytes received, the weights file has 300,000"),
    ("missing.pth", {}, RunError, "the download failed"),
])
def test_bad_transfers_leave_nothing(server, tmp_path, name, kwargs, error, message):
  with pytest.raises(error, match=None) as e:
    _download(tmp_path, f"{server}/{name}", **kwargs)
  assert message in str(e.value) and "\n" not in str(e.value)
  assert os.listdir(tmp_path / "w") == []


def test_a_file_url_works(tmp_path):
  source = tmp_path / "source.pth"
  source.write_bytes(BODY)
  assert pathlib.Path(_download(tmp_path, source.as_uri())).read_bytes() == BODY


@pytest.mark.slow
def test_command_prints_the_flag_or_one_error_line(server, tmp_path):
  def command(url):
    return subprocess.run([sys.executable, "-m", "dcgan_jax.inception", "download", "--to",
                           str(tmp_path / "inception.pth"), "--url", url],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
  result = command(f"{server}/weights.pth")  # not the real file: another size
  assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
  assert result.stderr.startswith("error: ") and "the weights file has 95,628,359" in result.stderr
  assert os.listdir(tmp_path) == []
  result = command(f"{server}/missing.pth")
  assert result.returncode == 1 and "the download failed (Not Found)" in result.stderr
  assert os.listdir(tmp_path) == []
