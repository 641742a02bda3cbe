"""Bad input gets one line on stderr and exit code 2, never a traceback."""

import h5py
import numpy as np
import pytest

from conftest import assert_one_line, write_d4rl


@pytest.mark.parametrize("script", ["o3f_iql.py", "iql_noise.py"])
def test_unknown_env_id_suggests_close_names(run_script, script):
    assert_one_line(run_script(script, "--env-id", "halfcheetah-medium-v9"), 2, "halfcheetah-medium-v2")


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--n-candidates", 0], ["--n-candidates"]),
        (["--sigma", -0.1], ["--sigma"]),
        (["--offline-steps", -5], ["--offline-steps"]),
        (["--batch-size", 100_000], ["--batch-size", "3000 transitions"]),
        (["--online-fraction", 1.5], ["--online-fraction"]),
    ],
)
def test_impossible_values(run_script, small_dataset, flags, words):
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", small_dataset, *flags), 2, *words)


def test_missing_dataset_file(run_script, tmp_path):
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", tmp_path / "nope.hdf5"), 2, "no such file")


def test_missing_d4rl_dataset_says_how_to_get_it(run_script):
    assert_one_line(run_script("iql_noise.py", "--env-id", "hopper-medium-v2"), 2, "hopper-medium-v2", "--dataset-path")


def test_dataset_of_another_environment(run_script, tmp_path):
    path = tmp_path / "hopper-like.hdf5"
    write_d4rl(path, np.zeros((300, 11)), np.zeros((300, 3)))
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", path), 2, "11-d observations", "17")


def test_dataset_with_nan(run_script, small_dataset, tmp_path):
    path = tmp_path / "nan.hdf5"
    with h5py.File(small_dataset) as src, h5py.File(path, "w") as dst:
        for key in src:
            dst[key] = src[key][:]
        dst["rewards"][5] = np.nan
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", path), 2, "NaN")


def test_not_an_hdf5_file(run_script, tmp_path):
    path = tmp_path / "junk.hdf5"
    path.write_text("not hdf5")
    assert_one_line(run_script("o3f_iql.py", "--dataset-path", path), 2, "HDF5")


def test_checkpoint_of_another_task_or_file(run_script, small_dataset, tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"junk")
    assert_one_line(
        run_script("o3f_iql.py", "--dataset-path", small_dataset, "--load-offline", path), 2, "--load-offline"
    )
    assert_one_line(
        run_script("o3f_iql.py", "--dataset-path", small_dataset, "--load-offline", tmp_path / "no.pt"),
        2,
        "no such file",
    )


@pytest.mark.parametrize(
    "state, words",
    [
        ({"algorithm": "iql", "env_id": "hopper-medium-v2", "step": 10}, ["trained on hopper-medium-v2", "--env-id"]),
        ({"algorithm": "iql", "env_id": "old-task-v0", "step": 10}, ["trained on old-task-v0", "--env-id"]),  # unknown
        ({"algorithm": "lapo", "env_id": "embedded-halfcheetah-medium", "step": 10}, ["another script"]),
        ({"algorithm": "iql", "env_id": "embedded-halfcheetah-medium", "step": 10, "actor": {}}, ["does not fit"]),
    ],
)
def test_checkpoint_of_another_task_or_script(run_script, small_dataset, tmp_path, state, words):
    import torch

    path = tmp_path / "other.pt"
    torch.save(state, path)
    assert_one_line(run_script("iql_noise.py", "--dataset-path", small_dataset, "--load-offline", path), 2, *words)


def test_dataset_arrays_of_different_lengths(run_script, tmp_path):
    path = tmp_path / "ragged.hdf5"
    write_d4rl(path, np.zeros((300, 17)), np.zeros((299, 6)))
    assert_one_line(run_script("o3f_lapo.py", "--dataset-path", path), 2, "differ in length")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("script", ["o3f_iql.py", "o3f_lapo.py", "cql_to_sac.py", "awac.py"])
def test_cudagraphs_without_cuda(run_script, small_dataset, script):
    assert_one_line(run_script(script, "--dataset-path", small_dataset, "--cudagraphs"), 2, "--cudagraphs", "CUDA")
