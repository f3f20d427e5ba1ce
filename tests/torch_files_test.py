"""The restricted .pth reader: both torch.save formats, dtypes, strides, refusals."""

import collections
import os
import pickle

import numpy as np
import pytest

from dcgan_jax import torch_files

torch = pytest.importorskip("torch")


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo this must not run",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_reads_both_formats_exactly(tmp_path, zip_format):
  gen = torch.Generator().manual_seed(0)
  state = collections.OrderedDict(
      w=torch.randn(4, 3, 2, 2, generator=gen), count=torch.tensor(7),
      transposed=torch.randn(3, 5, generator=gen).t(), half=torch.randn(6, generator=gen).half(),
      bf16=torch.randn(2, generator=gen).bfloat16(), sliced=torch.arange(10.0)[3:8])
  path = tmp_path / "s.pth"
  torch.save(state, path, _use_new_zipfile_serialization=zip_format)
  loaded = torch_files.load_state_dict(path)
  assert list(loaded) == list(state)
  for key, tensor in state.items():
    assert loaded[key].shape == tuple(tensor.shape), key
    assert loaded[key].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(loaded[key].astype(np.float64),
                                  tensor.double().numpy(), err_msg=key)
  assert loaded["count"].dtype == np.int64 and loaded["half"].dtype == np.float16
  assert loaded["sliced"].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_module_state_dict_with_metadata(tmp_path):
  model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
  torch.save(model.state_dict(), tmp_path / "m.pth")
  loaded = torch_files.load_state_dict(tmp_path / "m.pth")
  assert sorted(loaded) == sorted(model.state_dict())
  np.testing.assert_array_equal(loaded["0.weight"], model[0].weight.detach().numpy())


@pytest.mark.parametrize("zip_format", [True, False])
def test_refuses_code_without_running_it(tmp_path, capfd, zip_format):
  path = tmp_path / "evil.pth"
  torch.save({"a": _RunsCode()}, path, _use_new_zipfile_serialization=zip_format)
  with pytest.raises(torch_files.UnsupportedFile, match=r"posix\.system|os\.system"):
    torch_files.load_state_dict(path)
  assert "must not run" not in capfd.readouterr().out


def test_refuses_plain_pickles_and_junk(tmp_path):
  plain = tmp_path / "plain.pth"
  plain.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(torch_files.UnsupportedFile, match="cannot be read|neither"):
    torch_files.load_state_dict(plain)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a checkpoint")
  with pytest.raises(torch_files.UnsupportedFile):
    torch_files.load_state_dict(junk)
  not_tensors = tmp_path / "list.pth"
  torch.save({"a": [1, 2]}, not_tensors)
  with pytest.raises(torch_files.UnsupportedFile, match="entry 'a' is a list"):
    torch_files.load_state_dict(not_tensors)
