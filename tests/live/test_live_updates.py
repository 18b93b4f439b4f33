"""`serve` follows its repository while serving: a new version goes live under load with every
answer right, a new model is loaded, a removed model is unloaded after its requests in flight,
and `soak` checks every answer (and notices wrong ones)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time

import numpy as np
import pytest

from tritonforge.export.bert import BertOptions
from tritonforge.pipeline.export import export_model
from tritonforge.serving.local import LocalTriton
from tritonforge.serving.soak import STATUS_WRONG, run_soak

ANY_PORTS = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}


def sync_until(server: LocalTriton, done, timeout_s: float = 60.0) -> list[str]:
    """Call `sync` as `serve` does (every poll) until `done(events)` holds."""
    events: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done(events) and time.monotonic() < deadline:
        events += server.sync()
        time.sleep(0.3)
    return events


@pytest.fixture(scope="module")
def weights(tiny_bert, tiny_bert_retrained):
    """Two tiny encoders with different weights: the versions must answer differently."""
    return tiny_bert, tiny_bert_retrained


def test_a_new_version_goes_live_under_load_with_every_answer_right(weights, tmp_path):
    first, second = weights
    repo = tmp_path / "repo"
    export_model("bert", BertOptions(model=str(first), graph="plain"), repo, name="tiny")
    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        reports, loaded = [], threading.Event()

        def soak_until_loaded() -> None:  # soaks back to back, the last one after the switch
            while not loaded.is_set():
                reports.append(run_soak(server.grpc_url, repo, "tiny", requests=400, concurrency=8,
                                        count=40))
            reports.append(run_soak(server.grpc_url, repo, "tiny", requests=400, concurrency=8, count=40))

        soak = threading.Thread(target=soak_until_loaded)
        soak.start()
        time.sleep(0.5)
        export_model("bert", BertOptions(model=str(second), graph="plain"), repo, name="tiny")
        published = time.monotonic()
        events = sync_until(server, lambda e: any(line.startswith("loaded tiny_text") for line in e))
        switched = time.monotonic()
        loaded.set()
        soak.join()
    assert any(line.startswith("loaded tiny ") for line in events), events
    for report in reports:
        assert report.failed == 0, [o.__dict__ for o in report.first_problems()]
    versions = [set(next(row for row in r.rows() if row["model"] == "tiny")["versions"]) for r in reports]
    assert versions[0] == {"1"} and versions[-1] == {"2"}, versions  # each answer checked vs its own
    # the versions answer differently, so the check told them apart
    assert not np.allclose(*(report_answers(repo, v) for v in (1, 2)), atol=1e-3)
    assert switched - published < 30


def report_answers(repo, version: int) -> np.ndarray:
    from tritonforge.runtime import ort_session, run_session

    session = ort_session(repo / "tiny" / str(version) / "model.onnx", threads=1)
    feed = {"input_ids": np.array([[101, 2023, 102]]), "attention_mask": np.ones((1, 3), np.int64),
            "token_type_ids": np.zeros((1, 3), np.int64)}
    return run_session(session, feed)["sentence_embedding"]


def test_new_models_load_and_removed_ones_unload_after_their_requests(weights, minilm_repo, tmp_path):
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient

    first, _second = weights
    repo = tmp_path / "repo"
    export_model("bert", BertOptions(model=str(first), graph="plain"), repo, name="tiny")
    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        for name in ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text"):  # a new model appears
            (repo / name).symlink_to(minilm_repo / name)
        events = sync_until(server, lambda e: any(line.startswith("loaded bert_fp32_text") for line in e))
        assert {"loaded bert_fp32 ", "loaded bert_fp32_text "} <= {line.split("(")[0] for line in events}
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready("bert_fp32_text")

        async def in_flight_during_removal() -> list:
            aio = aioclient.InferenceServerClient(server.grpc_url)
            text = aioclient.InferInput("TEXT", [8, 1], "BYTES")
            long = " ".join(["a long sentence that keeps the encoder busy for a while"] * 40)
            text.set_data_from_numpy(np.array([[long.encode()]] * 8, dtype=object))
            calls = [asyncio.create_task(aio.infer("bert_fp32_text", [text])) for _ in range(6)]
            await asyncio.sleep(0.2)  # sent, not answered: MiniLM takes far longer on 8 x 512 tokens
            for name in ("bert_fp32", "bert_fp32_tokenizer", "bert_fp32_text"):
                (repo / name).unlink()
            unloaded = await asyncio.to_thread(sync_until, server, lambda e: any(
                line.startswith("unloaded bert_fp32 ") for line in e))
            answers = await asyncio.gather(*calls, return_exceptions=True)
            await aio.close()
            return [unloaded, answers]

        unloaded, answers = asyncio.run(in_flight_during_removal())
        assert any(line.startswith("unloaded bert_fp32_text") for line in unloaded), unloaded
        assert all(not isinstance(a, Exception) for a in answers), answers  # drained, not cut
        assert all(a.as_numpy("sentence_embedding").shape == (8, 384) for a in answers)
        assert not client.is_model_ready("bert_fp32_text") and client.is_model_ready("tiny_text")
        client.close()


def test_a_broken_export_is_reported_and_the_loaded_versions_keep_serving(weights, tmp_path):
    import tritonclient.grpc as grpcclient

    first, _second = weights
    repo = tmp_path / "repo"
    export_model("bert", BertOptions(model=str(first), graph="plain"), repo, name="tiny")
    with LocalTriton(repo, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
        (repo / "tiny" / "2" / "model.onnx").write_bytes(b"not a graph")
        events = sync_until(server, lambda e: any(line.startswith("could not load tiny") for line in e))
        assert any(line.startswith("could not load tiny:") for line in events), events
        client = grpcclient.InferenceServerClient(server.grpc_url)
        assert client.is_model_ready("tiny", "1")
        client.close()


def test_soak_counts_answers_that_differ_from_the_export_as_wrong(weights, tmp_path):
    """The soak's check can fail: served weights that are not the export's are caught."""
    first, second = weights
    served, other = tmp_path / "served", tmp_path / "other"
    export_model("bert", BertOptions(model=str(first), graph="plain"), served, name="tiny")
    export_model("bert", BertOptions(model=str(second), graph="plain"), other, name="tiny")
    with LocalTriton(served, log_file=tmp_path / "triton.log", **ANY_PORTS) as server:
        right = run_soak(server.grpc_url, served, "tiny", requests=200, concurrency=4, count=20)
        wrong = run_soak(server.grpc_url, other, "tiny", requests=200, concurrency=4, count=20)
    assert right.failed == 0 and {row["model"] for row in right.rows()} == {"tiny", "tiny_text", "all"}
    assert right.rows()[-1]["min_cosine"] >= 0.9999
    assert {o.status for o in wrong.outcomes} == {STATUS_WRONG}
    document = wrong.to_json()
    assert document["models"][-1]["wrong"] == 200 and document["problems"][0]["status"] == STATUS_WRONG
    json.dumps(document)  # serialisable as written by --json


def test_soak_command_reports_table_json_and_plot(triton, served_repo, tmp_path):
    from typer.testing import CliRunner

    from tritonforge.cli import app

    result = CliRunner().invoke(app, ["soak", "tiny", "--url", triton.grpc_url, "--repo", str(served_repo),
                                      "--requests", "120", "--concurrency", "6", "--json",
                                      str(tmp_path / "soak.json"), "--plot", str(tmp_path / "soak.png")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "soak.json").read_text())
    assert [row["model"] for row in report["models"]] == ["tiny", "tiny_text", "all"]
    assert report["models"][-1]["requests"] == 120 and report["models"][-1]["errors"] == 0
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("options, message", [
    (["--requests", "0"], "--requests"), (["--concurrency", "0"], "--concurrency"),
    (["--min-cosine", "1.5"], "--min-cosine 1.5"), (["--url", "127.0.0.1:99999"], "99999")])
def test_soak_refuses_nonsense_before_connecting(options, message, tmp_path):
    from typer.testing import CliRunner

    from tritonforge.cli import app

    result = CliRunner().invoke(app, ["soak", "tiny", "--repo", str(tmp_path), *options])
    assert result.exit_code == 2 and message in result.output, result.output
