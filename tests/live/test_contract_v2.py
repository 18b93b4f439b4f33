"""Contract v2 through a real server: the `toy_grey` family's own modality (`grey_grid`, with
its own shape option `--grid-size`) and its own output kind (`toy_brightness`), defined in
tests/toy_family/grey.py and named by no shared module, pass through `serve`, `query`,
`bench`, `soak` and `verify --triton`; and `toy_vocab`'s two-input request (an image, and the
class names that choose its classes) goes through `query --input`, `bench` and `soak`.

The commands run in a fresh interpreter that never imported the family: the served config
names the family, and the CLI finds its package through the `tritonforge.families` entry
point of a throwaway distribution, as it would for a family installed from another package.
The server is the local tritonserver, the model run by the python-backend ONNX Runtime wrapper.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from toy_family.grey import ToyGreyOptions
from toy_family.stereo import ROWS, StereoFamily, StereoOptions, stereo_digits
from toy_family.vocab import SAMPLE_VOCABULARY, ToyVocabFamily, ToyVocabOptions, VocabularyItem

from tritonforge.modalities.image import photographs
from tritonforge.pipeline.export import export_model
from tritonforge.serving.local import LocalTriton

TESTS = Path(__file__).resolve().parent.parent
ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}


@pytest.fixture(scope="module")
def grey_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("grey_repo")
    export_model("toy_grey", ToyGreyOptions(), repo)
    export_model("toy_vocab", ToyVocabOptions(), repo)
    export_model("toy_stereo", StereoOptions(), repo)
    log = tmp_path_factory.mktemp("grey_log") / "triton.log"
    with LocalTriton(repo, log_file=log, **ANY_PORTS) as server:
        yield server


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    """A distribution that declares toy_grey in the `tritonforge.families` entry-point group."""
    site = tmp_path_factory.mktemp("site")
    info = site / "toy_grey_plugin-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-grey-plugin\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[tritonforge.families]\n"
                                           "toy_grey = toy_family.grey:ToyGreyFamily\n"
                                           "toy_vocab = toy_family.vocab:ToyVocabFamily\n"
                                           "toy_stereo = toy_family.stereo:StereoFamily\n")
    return os.pathsep.join([str(site), str(TESTS)])


def tritonforge(plugin_path: str, *args: str) -> subprocess.CompletedProcess:
    """The CLI in a new interpreter: only the entry point tells it about toy_grey."""
    env = {**os.environ, "PYTHONPATH": plugin_path, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from tritonforge.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=plugin_path.split(os.pathsep)[0])  # no ./model_repo there


def grey_mean(path: Path, size: int) -> float:
    grid = Image.open(io.BytesIO(path.read_bytes())).convert("L").resize((size, size))
    return float(np.asarray(grid, dtype=np.float32).mean() / 255.0)


def test_query_prints_the_familys_own_kind_for_its_modality_and_shape_option(grey_server, plugin_path):
    photo = photographs()[0]
    result = tritonforge(plugin_path, "query", "toy_grey", "--url", grey_server.grpc_url,
                         "--image", str(photo), "--grid-size", "16")
    assert result.returncode == 0, result.stderr + result.stdout
    found = re.search(r"(dark|mid|bright) \((\d\.\d{3})\)", result.stdout)
    assert found, result.stdout
    assert float(found[2]) == pytest.approx(grey_mean(photo, 16), abs=1e-3)


def test_an_option_the_model_does_not_declare_is_refused_by_name(grey_server, plugin_path):
    result = tritonforge(plugin_path, "query", "toy_grey", "--url", grey_server.grpc_url,
                         "--image", str(photographs()[0]), "--num-points", "3")
    assert result.returncode == 2
    assert "--num-points" in result.stderr and "--grid-size" in result.stderr


def test_bench_sends_the_modalitys_samples_at_the_familys_shape(grey_server, plugin_path, tmp_path):
    result = tritonforge(plugin_path, "bench", "toy_grey", "--url", grey_server.grpc_url, "--concurrency",
                         "1,2", "--requests", "20", "--grid-size", "4", "--json", f"{tmp_path}/bench.json")
    assert result.returncode == 0, result.stderr + result.stdout
    levels = json.loads((tmp_path / "bench.json").read_text())["levels"]
    assert [level["concurrency"] for level in levels if level["model"] == "toy_grey"] == [1, 2]


def test_soak_judges_each_answer_with_the_kinds_own_agreement(grey_server, plugin_path, tmp_path):
    result = tritonforge(plugin_path, "soak", "toy_grey", "--url", grey_server.grpc_url, "--repo",
                         str(grey_server.repo), "--requests", "24", "--concurrency", "3", "--json",
                         str(tmp_path / "soak.json"))
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["models"][-1]["requests"] == 24 and report["models"][-1]["errors"] == 0
    assert "brightness_max_diff" in json.dumps(report)


def test_verify_triton_checks_the_served_model_at_the_familys_shape(grey_server, plugin_path, tmp_path):
    result = tritonforge(plugin_path, "verify", "toy_grey", "--repo", str(grey_server.repo), "--triton",
                         grey_server.grpc_url, "--grid-size", "12", "--iterations", "2", "--samples", "8",
                         "--json", str(tmp_path / "verify.json"))
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["shape"] == {"grid_size": 12}
    assert report["parity"]["passed"] and report["triton"]["parity"]["passed"]


def pytorch_choice(photo: Path, vocabulary: tuple[str, ...]) -> str:
    family, options = ToyVocabFamily(), ToyVocabOptions()
    model = family.load(options)
    record = family.io(model, options).preprocessing
    feed = record.encode([VocabularyItem(photo.read_bytes(), vocabulary)], None, None)
    _scores, label = model(*(torch.from_numpy(feed[k]) for k in ("grid", "label_vectors")))
    return vocabulary[int(label[0, 0])]


@pytest.mark.parametrize("vocabulary", [("sky", "sea", "cat"), SAMPLE_VOCABULARY])
def test_a_two_input_request_names_the_class_from_the_sent_vocabulary(grey_server, plugin_path, vocabulary):
    photo = photographs()[0]
    sent = [arg for name in vocabulary for arg in ("--input", f"VOCABULARY={name}")]
    result = tritonforge(plugin_path, "query", "toy_vocab_vocab", "--url", grey_server.grpc_url,
                         "--image", str(photo), *sent)
    assert result.returncode == 0, result.stderr + result.stdout
    expected = pytorch_choice(photo, vocabulary)
    assert re.search(rf"{re.escape(photo.name)}\s*│\s*{expected}\s*│", result.stdout), result.stdout


def test_a_two_input_request_without_its_vocabulary_is_refused_with_what_to_send(grey_server, plugin_path):
    result = tritonforge(plugin_path, "query", "toy_vocab_vocab", "--url", grey_server.grpc_url,
                         "--image", str(photographs()[0]))
    assert result.returncode == 2 and "VOCABULARY" in result.stderr and "--input" in result.stderr


def test_bench_and_soak_send_both_inputs_of_every_request(grey_server, plugin_path, tmp_path):
    bench = tritonforge(plugin_path, "bench", "toy_vocab_vocab", "--url", grey_server.grpc_url,
                        "--concurrency", "2", "--requests", "16", "--json", str(tmp_path / "bench.json"))
    assert bench.returncode == 0, bench.stderr + bench.stdout
    assert json.loads((tmp_path / "bench.json").read_text())["levels"][0]["errors"] == 0
    soak = tritonforge(plugin_path, "soak", "toy_vocab", "--url", grey_server.grpc_url, "--repo",
                       str(grey_server.repo), "--requests", "24", "--concurrency", "3", "--json",
                       str(tmp_path / "soak.json"))
    assert soak.returncode == 0, soak.stderr + soak.stdout
    report = json.loads((tmp_path / "soak.json").read_text())
    assert [row["model"] for row in report["models"]] == ["toy_vocab", "toy_vocab_vocab", "all"]
    assert report["models"][-1]["errors"] == 0 and report["models"][-1]["wrong"] == 0


def stream_logits(sequence: dict[str, np.ndarray]) -> np.ndarray:
    """The PyTorch reference over one sequence, frame by frame: [T, classes]."""
    family = StereoFamily()
    model = family.load(StereoOptions())
    with torch.inference_mode():
        return np.stack([model(torch.from_numpy(sequence["left"][t:t + 1]), torch.from_numpy(
            sequence["right"][t:t + 1]), torch.zeros(1, 12))[0][0].numpy() for t in range(ROWS)])


def test_a_stream_with_two_inputs_per_frame_carries_its_state(grey_server, plugin_path, tmp_path):
    sequence = {side: frames[3] for side, frames in stereo_digits(4).items()}  # [T, 8] each
    for side, frames in sequence.items():
        np.save(tmp_path / f"{side}.npy", frames)
    streams = [arg for side in ("left", "right") for arg in ("--stream", f"{side}={tmp_path / side}.npy")]
    result = tritonforge(plugin_path, "query", "toy_stereo", "--url", grey_server.grpc_url, *streams,
                         "--json", str(tmp_path / "stream.json"))
    assert result.returncode == 0, result.stderr + result.stdout
    served = np.array(json.loads((tmp_path / "stream.json").read_text())["outputs"]["logits"]["values"])
    np.testing.assert_allclose(served, stream_logits(sequence), atol=1e-5)
    one = tritonforge(plugin_path, "query", "toy_stereo", "--url", grey_server.grpc_url,
                      "--stream", str(tmp_path / "left.npy"))
    assert one.returncode == 2 and "left, right" in one.stderr and "NAME=FILE" in one.stderr


def test_bench_and_verify_stream_both_inputs(grey_server, plugin_path, tmp_path):
    bench = tritonforge(plugin_path, "bench", "toy_stereo", "--url", grey_server.grpc_url, "--repo",
                        str(grey_server.repo), "--concurrency", "2", "--requests", "32")
    assert bench.returncode == 0, bench.stderr + bench.stdout
    verify = tritonforge(plugin_path, "verify", "toy_stereo", "--repo", str(grey_server.repo), "--triton",
                         grey_server.grpc_url, "--iterations", "2", "--json", str(tmp_path / "v.json"))
    assert verify.returncode == 0, verify.stderr + verify.stdout
    assert json.loads((tmp_path / "v.json").read_text())["triton"]["parity"]["passed"]
