"""A model's version lifecycle on a running `serve` (LocalTriton, synced as `serve` polls it):
`rollback` serves the previous version, `rollback --undo` the newest again, `prune` removes an
old version without reloading anything, and a soak running all along gets every answer right."""

from __future__ import annotations

import threading
import time

import numpy as np
from toy_family import ToyImageFamily, ToyImageOptions
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.pipeline.export import export_model
from tritonforge.serving.local import LocalTriton
from tritonforge.serving.soak import run_soak

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
NAME = "toy_image"
MODELS = (NAME, "toy_image_image_decode", "toy_image_image")


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def sync_until(server: LocalTriton, done, timeout_s: float = 90.0) -> list[str]:
    """Call `sync` as `serve` does (every poll) until `done(events)` holds."""
    events: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done(events) and time.monotonic() < deadline:
        events += server.sync()
        time.sleep(0.3)
    assert done(events), events
    return events


def loaded(name: str):
    return lambda events: any(line.startswith(f"loaded {name} ") for line in events)


def ready_versions(client, versions=(1, 2)) -> list[int]:
    return [v for v in versions if client.is_model_ready(NAME, str(v))]


def wait_ready(client, versions: list[int], timeout_s: float = 60.0) -> None:
    """Triton swaps versions in the background after `load_model` returns for some changes."""
    deadline = time.monotonic() + timeout_s
    while ready_versions(client) != versions and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready_versions(client) == versions


def answer(client, pixels: np.ndarray) -> tuple[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    request = grpcclient.InferInput("pixel_values", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels)
    result = client.infer(NAME, [request])
    return result.get_response().model_version, result.as_numpy("logits")


def exported_answer(repo, version: int, pixels: np.ndarray) -> np.ndarray:
    from tritonforge.runtime import ort_session, run_session

    session = ort_session(repo / NAME / str(version) / "model.onnx", threads=1)
    return run_session(session, {"pixel_values": pixels})["logits"]


def test_rollback_undo_and_prune_while_serving_under_load(tmp_path):
    import tritonclient.grpc as grpcclient

    repo = tmp_path / "repo"
    for seed in (0, 1):  # versions 1 and 2, with other weights: they answer differently
        export_model(NAME, ToyImageOptions(seed=seed), repo)
    family, options = ToyImageFamily(), ToyImageOptions()
    pixels = family.sample_inputs(family.load(options), options, 2)["pixel_values"]
    first, second = (exported_answer(repo, v, pixels) for v in (1, 2))
    assert not np.allclose(first, second, atol=1e-3)

    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert ready_versions(client) == [2]
        reports, stop = [], threading.Event()

        def soak() -> None:  # back to back, through every change, one more after the last
            while not stop.is_set():
                reports.append(run_soak(server.grpc_url, repo, NAME, requests=240, concurrency=6, count=8))
            reports.append(run_soak(server.grpc_url, repo, NAME, requests=240, concurrency=6, count=8))

        def soaked_through(count: int = 2, timeout_s: float = 90.0) -> None:
            """Wait until `count` more soaks have run from start to end in the present state."""
            start, deadline = len(reports), time.monotonic() + timeout_s
            while len(reports) < start + count and time.monotonic() < deadline and soaking.is_alive():
                time.sleep(0.2)
            assert len(reports) >= start + count

        soaking = threading.Thread(target=soak)
        soaking.start()
        try:
            soaked_through(1)

            # roll back: a config change, reloaded under the new policy
            said = invoke("rollback", NAME, "--repo", repo)
            assert "toy_image now serves version(s) 1 (version policy specific:1; was 2, latest)" in said
            events = sync_until(server, loaded("toy_image_image"))
            assert any(line.startswith("loaded toy_image (versions on disk: 1, 2; served: 1, version policy "
                                       "specific:1)") for line in events), events
            wait_ready(client, [1])
            version, logits = answer(client, pixels)
            assert version == "1" and np.allclose(logits, first, atol=1e-4)
            assert client.get_model_metadata(NAME, as_json=True)["versions"] == ["1"]
            shown = invoke("versions", NAME, "--repo", repo, "--url", server.grpc_url)
            assert f"{server.grpc_url} serves toy_image version(s) 1" in shown
            assert "rolled back (its newest export asked for latest)" in shown
            soaked_through()

            # roll forward: the newest export's own policy again
            said = invoke("rollback", NAME, "--undo", "--repo", repo)
            assert "now serves version(s) 2 (version policy latest; was 1, specific:1)" in said
            sync_until(server, loaded("toy_image_image"))
            wait_ready(client, [2])
            version, logits = answer(client, pixels)
            assert version == "2" and np.allclose(logits, second, atol=1e-4)
            soaked_through()

            # prune the version the server no longer serves: nothing is reloaded
            said = invoke("prune", NAME, "--keep", "1", "--repo", repo)
            assert "removed 3 version folder(s)" in said and "toy_image keeps version(s) 2" in said
            events = sync_until(server, lambda e: sum(
                line.startswith("removed version(s) 1 of ") for line in e) == len(MODELS))
            assert not any(line.startswith(("loaded", "could not")) for line in events), events
            assert ready_versions(client) == [2] and client.is_model_ready("toy_image_image")
            assert answer(client, pixels)[0] == "2"
            soaked_through()
        finally:
            stop.set()
            soaking.join()
        client.close()

    for report in reports:
        assert report.failed == 0, [o.__dict__ for o in report.first_problems()]
    seen = set()
    for report in reports:
        seen |= set(next(row for row in report.rows() if row["model"] == NAME)["versions"])
    assert seen == {"1", "2"}, seen  # the soak met both versions, each answer checked against its own
    assert sum(len(report.outcomes) for report in reports) >= 240 * 6
