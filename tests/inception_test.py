"""The FID Inception: structure, resize, weight loading and errors, and (where torch is
installed) equality with a PyTorch model of pytorch-fid's layout holding the same weights."""

import hashlib

import jax
import numpy as np
import pytest

from dcgan_jax import inception
from dcgan_jax.errors import UsageError
from conftest import random_inception_state_dict

pytestmark = pytest.mark.slow  # runs the Inception in JAX and PyTorch


def test_structure_matches_pytorch_fid_layout():
  variables = inception.abstract_variables()
  params = jax.tree_util.tree_leaves(variables["params"])
  # torchvision's Inception-v3 has 27,161,264 parameters; less its classifier (2,049,000)
  # and its auxiliary head (3,326,696) that leaves the feature network's 21,785,568.
  assert sum(int(np.prod(p.shape)) for p in params) == 21_785_568
  assert len(jax.tree_util.tree_leaves(variables["batch_stats"])) == 2 * 94
  assert variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"].shape == (
      1, 1, 2048, 192)


def test_bilinear_matrix_matches_half_pixel_rule():
  m = inception.bilinear_matrix(2, 4)
  # output 0 samples input -0.25 -> clamped to 0; 1 samples 0.25; 2 samples 0.75; 3: 1.25 -> 1
  np.testing.assert_allclose(m, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  np.testing.assert_allclose(inception.bilinear_matrix(32, 299).sum(1), 1.0, rtol=1e-6)
  assert inception.resize_to_input(np.ones((1, 32, 32, 3), np.float32)).shape == (1, 299, 299, 3)


def test_variables_from_state_dict_names_bad_keys_and_shapes():
  sd = random_inception_state_dict()
  variables = inception.variables_from_state_dict(sd)
  kernel = variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"]
  np.testing.assert_array_equal(kernel, sd["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_5b"]["branch_pool"]["bn"]["var"],
                                sd["Mixed_5b.branch_pool.bn.running_var"])
  with pytest.raises(ValueError, match="unexpected key 'Mixed_8a.conv.weight'"):
    inception.variables_from_state_dict({**sd, "Mixed_8a.conv.weight": np.zeros(1)})
  bad = dict(sd)
  bad["Mixed_6b.branch1x1.conv.weight"] = np.zeros((192, 768, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"'Mixed_6b.branch1x1.conv.weight' has shape"):
    inception.variables_from_state_dict(bad)
  del bad["Mixed_6b.branch1x1.conv.weight"]
  with pytest.raises(ValueError, match="missing key 'Mixed_6b.branch1x1.conv.weight'"):
    inception.variables_from_state_dict(bad)


def test_load_weights_errors_are_one_line(tmp_path):
  with pytest.raises(UsageError, match="not found at .*download https://github.com/mseitzer"):
    inception.load_weights(str(tmp_path / "missing.pth"))
  wrong = tmp_path / "wrong.pth"
  wrong.write_bytes(b"abc")
  with pytest.raises(UsageError) as e:
    inception.load_weights(str(wrong))
  assert "\n" not in str(e.value) and hashlib.sha256(b"abc").hexdigest() in str(e.value)
  assert inception.WEIGHTS_SHA256 in str(e.value)
  # The right hash of a file that is not a state_dict.
  with pytest.raises(UsageError, match="not the FID Inception's state_dict"):
    inception.load_weights(str(wrong), sha256=hashlib.sha256(b"abc").hexdigest())


# --- against PyTorch ------------------------------------------------------------------------

def _torch_reference():
  """pytorch-fid's FID Inception written out in PyTorch (NCHW), from its definition."""
  torch = pytest.importorskip("torch")
  nn, F = torch.nn, torch.nn.functional

  class Basic(nn.Module):
    def __init__(self, i, o, k, s=1, p=0):
      super().__init__()
      self.conv = nn.Conv2d(i, o, k, s, p, bias=False)
      self.bn = nn.BatchNorm2d(o, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  avg = lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # noqa: E731

  class A(nn.Module):
    def __init__(self, i, pf):
      super().__init__()
      self.branch1x1 = Basic(i, 64, 1)
      self.branch5x5_1, self.branch5x5_2 = Basic(i, 48, 1), Basic(48, 64, 5, p=2)
      self.branch3x3dbl_1 = Basic(i, 64, 1)
      self.branch3x3dbl_2, self.branch3x3dbl_3 = Basic(64, 96, 3, p=1), Basic(96, 96, 3, p=1)
      self.branch_pool = Basic(i, pf, 1)

    def forward(self, x):
      return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        self.branch_pool(avg(x))], 1)

  class B(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.branch3x3 = Basic(i, 384, 3, 2)
      self.branch3x3dbl_1 = Basic(i, 64, 1)
      self.branch3x3dbl_2, self.branch3x3dbl_3 = Basic(64, 96, 3, p=1), Basic(96, 96, 3, 2)

    def forward(self, x):
      return torch.cat([self.branch3x3(x),
                        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                        F.max_pool2d(x, 3, 2)], 1)

  class C(nn.Module):
    def __init__(self, i, c7):
      super().__init__()
      self.branch1x1 = Basic(i, 192, 1)
      self.branch7x7_1 = Basic(i, c7, 1)
      self.branch7x7_2 = Basic(c7, c7, (1, 7), p=(0, 3))
      self.branch7x7_3 = Basic(c7, 192, (7, 1), p=(3, 0))
      self.branch7x7dbl_1 = Basic(i, c7, 1)
      self.branch7x7dbl_2 = Basic(c7, c7, (7, 1), p=(3, 0))
      self.branch7x7dbl_3 = Basic(c7, c7, (1, 7), p=(0, 3))
      self.branch7x7dbl_4 = Basic(c7, c7, (7, 1), p=(3, 0))
      self.branch7x7dbl_5 = Basic(c7, 192, (1, 7), p=(0, 3))
      self.branch_pool = Basic(i, 192, 1)

    def forward(self, x):
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = x
      for k in range(1, 6):
        bd = getattr(self, f"branch7x7dbl_{k}")(bd)
      return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg(x))], 1)

  class D(nn.Module):
    def __init__(self, i):
      super().__init__()
      self.branch3x3_1, self.branch3x3_2 = Basic(i, 192, 1), Basic(192, 320, 3, 2)
      self.branch7x7x3_1 = Basic(i, 192, 1)
      self.branch7x7x3_2 = Basic(192, 192, (1, 7), p=(0, 3))
      self.branch7x7x3_3 = Basic(192, 192, (7, 1), p=(3, 0))
      self.branch7x7x3_4 = Basic(192, 192, 3, 2)

    def forward(self, x):
      b7 = x
      for k in range(1, 5):
        b7 = getattr(self, f"branch7x7x3_{k}")(b7)
      return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)

  class E(nn.Module):
    def __init__(self, i, max_pool):
      super().__init__()
      self.max_pool = max_pool
      self.branch1x1 = Basic(i, 320, 1)
      self.branch3x3_1 = Basic(i, 384, 1)
      self.branch3x3_2a = Basic(384, 384, (1, 3), p=(0, 1))
      self.branch3x3_2b = Basic(384, 384, (3, 1), p=(1, 0))
      self.branch3x3dbl_1, self.branch3x3dbl_2 = Basic(i, 448, 1), Basic(448, 384, 3, p=1)
      self.branch3x3dbl_3a = Basic(384, 384, (1, 3), p=(0, 1))
      self.branch3x3dbl_3b = Basic(384, 384, (3, 1), p=(1, 0))
      self.branch_pool = Basic(i, 192, 1)

    def forward(self, x):
      b3 = self.branch3x3_1(x)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg(x)
      return torch.cat([self.branch1x1(x),
                        torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                        torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1),
                        self.branch_pool(pooled)], 1)

  class FIDInception(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Basic(3, 32, 3, 2), Basic(32, 32, 3)
      self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = Basic(32, 64, 3, p=1), Basic(64, 80, 1)
      self.Conv2d_4a_3x3 = Basic(80, 192, 3)
      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
      self.Mixed_6a = B(288)
      self.Mixed_6b, self.Mixed_6c = C(768, 128), C(768, 160)
      self.Mixed_6d, self.Mixed_6e = C(768, 160), C(768, 192)
      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = D(768), E(1280, False), E(2048, True)
      self.fc = nn.Linear(2048, 1008)

    def forward(self, x01):  # pytorch-fid's InceptionV3: [0, 1] in, resize, scale to [-1, 1]
      x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
      x = 2 * x - 1
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
      x = F.max_pool2d(x, 3, 2)
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(self, f"Mixed_{name}")(x)
      return F.adaptive_avg_pool2d(x, 1).flatten(1)

  return torch, FIDInception()


@pytest.mark.xla_default
@pytest.mark.parametrize("size,channels", [(32, 1), (64, 3)])
def test_matches_pytorch_model_with_the_same_weights(tmp_path, size, channels):
  torch, reference = _torch_reference()
  sd = random_inception_state_dict(seed=size)
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
  reference.eval()
  path = tmp_path / "weights.pth"
  torch.save(reference.state_dict(), path)  # includes BatchNorm's num_batches_tracked

  variables = inception.load_weights(str(path), sha256=inception.file_sha256(str(path)))
  images = np.random.default_rng(1).uniform(-1, 1, (2, size, size, channels)).astype(np.float32)
  ours = inception.features(variables, images)
  with torch.no_grad():
    x01 = torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2)
    theirs = reference(x01.expand(-1, 3, -1, -1)).numpy()
  assert ours.shape == (2, 2048)
  assert theirs.std() > 0.1  # the random weights keep the features informative
  np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=2e-4 * np.abs(theirs).max())
