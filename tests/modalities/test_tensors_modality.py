"""The Tensors modality: `.npy` files checked against the declared inputs before anything is sent."""

from __future__ import annotations

import numpy as np
import pytest

from tritonforge.errors import TritonForgeError
from tritonforge.modalities import Tensors
from tritonforge.spec import ModelIO, TensorSpec

IO = ModelIO((TensorSpec("frames", "float32", (4, 2, 8, 8)),), (TensorSpec("logits", "float32", (10,)),),
             Tensors(layout="[T, C, H, W] event frames", timesteps=4))
TWO = ModelIO((TensorSpec("a", "int64", (-1,)), TensorSpec("b", "float32", (3,))),
              (TensorSpec("y", "float32", (1,)),), Tensors())


def saved(tmp_path, name: str, array: np.ndarray) -> str:
    np.save(tmp_path / name, array)
    return str(tmp_path / f"{name}.npy")


def test_one_sample_gets_a_batch_axis_and_a_batch_is_kept(tmp_path):
    one = np.random.default_rng(0).random((4, 2, 8, 8), dtype=np.float32)
    modality = IO.preprocessing
    arrays = modality.encode(modality.read_raw([saved(tmp_path, "one", one)]), IO, None)
    np.testing.assert_array_equal(arrays["frames"], one[None])
    batch = np.stack([one, one * 2])
    arrays = modality.encode(modality.read_raw([saved(tmp_path, "batch", batch)]), IO, None)
    assert arrays["frames"].shape == (2, 4, 2, 8, 8)


def test_several_inputs_are_named(tmp_path):
    raw = TWO.preprocessing.read_raw([f"a={saved(tmp_path, 'a', np.arange(5))}",
                                      f"b={saved(tmp_path, 'b', np.ones(3, np.float32))}"])
    arrays = TWO.preprocessing.encode(raw, TWO, None)
    assert arrays["a"].shape == (1, 5) and arrays["a"].dtype == np.int64 and arrays["b"].shape == (1, 3)
    with pytest.raises(TritonForgeError, match=r"takes \['a', 'b'\]: name each file, --npy NAME=FILE"):
        TWO.preprocessing.encode(TWO.preprocessing.read_raw([saved(tmp_path, "a", np.arange(5))]), TWO, None)


def test_a_wrong_dtype_is_refused_with_the_fix(tmp_path):
    path = saved(tmp_path, "doubles", np.zeros((4, 2, 8, 8)))
    with pytest.raises(TritonForgeError, match=r"holds float64, but input 'frames' takes float32: .*astype"):
        IO.preprocessing.encode(IO.preprocessing.read_raw([path]), IO, None)


def test_a_wrong_shape_is_refused_with_the_expected_one(tmp_path):
    path = saved(tmp_path, "short", np.zeros((3, 2, 8, 8), np.float32))
    with pytest.raises(TritonForgeError, match=r"shape \[3, 2, 8, 8\], but input 'frames' takes one sample "
                                               r"of shape \[4, 2, 8, 8\]"):
        IO.preprocessing.encode(IO.preprocessing.read_raw([path]), IO, None)


def test_a_file_that_is_not_an_array_or_is_missing_is_named(tmp_path):
    (tmp_path / "notes.npy").write_text("not an array")
    with pytest.raises(TritonForgeError, match=r"notes.npy is not a .npy array file"):
        IO.preprocessing.encode(IO.preprocessing.read_raw([str(tmp_path / "notes.npy")]), IO, None)
    with pytest.raises(TritonForgeError, match=r"missing.npy does not exist"):
        IO.preprocessing.encode(IO.preprocessing.read_raw([str(tmp_path / "missing.npy")]), IO, None)


def test_pickled_object_arrays_are_not_loaded(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TritonForgeError, match="is not a .npy array file"):
        IO.preprocessing.encode(IO.preprocessing.read_raw([str(path)]), IO, None)


def test_timesteps_is_the_shape_option_of_a_model_over_time():
    assert IO.preprocessing.resolve_shape({}) == {"timesteps": 4}
    with pytest.raises(TritonForgeError, match="--seq-len does not apply to a model that takes tensors "
                                               "input.*--timesteps"):
        IO.preprocessing.resolve_shape({"seq_len": 16})
    with pytest.raises(TritonForgeError, match=r"--timesteps does not apply.*\(its shape options: none\)"):
        TWO.preprocessing.resolve_shape({"timesteps": 4})
