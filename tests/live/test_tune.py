"""`tritonforge tune`: each setting served by a local Triton on a copy of the model, under the same
real load; the fastest under the p99 target written as the model's config, nothing otherwise."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.serving.local import shadow_config
from tritonforge.serving.repository import ModelRepository
from tritonforge.serving.tune import Setting, applied, candidate_settings

runner = CliRunner()
SMALL = ["--max-batch", "8", "--queue-delay-us", "0", "--instances", "1,2", "--threads", "1",
         "--requests", "40", "--concurrency", "4"]


def copied(tiny_repo, tmp_path):
    repo = tmp_path / "repo"
    for name in ("tiny", "tiny_tokenizer", "tiny_text"):
        shutil.copytree(tiny_repo / name, repo / name, symlinks=False)
    return repo


def test_tune_measures_today_and_each_setting_and_writes_the_fastest_under_p99(tiny_repo, tmp_path):
    repo = copied(tiny_repo, tmp_path)
    report, plot = tmp_path / "tune.json", tmp_path / "tune.png"
    result = runner.invoke(app, ["tune", "tiny_text", "--repo", str(repo), *SMALL, "--json", str(report),
                                 "--plot", str(plot)], terminal_width=200)
    assert result.exit_code == 0, result.output
    trials = json.loads(report.read_text())
    # today's config (1 instance, the batcher as exported) first and again last, the two settings
    # tried between
    assert [(t["instances"], t["threads"], t["current"]) for t in trials["trials"]] == [
        (1, 0, True), (1, 1, False), (2, 1, False), (1, 0, True)]
    assert all(t["ok"] == 40 and t["errors"] == 0 for t in trials["trials"])
    best = max(trials["trials"], key=lambda t: t["throughput_rps"])
    assert {k: trials["chosen"][k] for k in ("instances", "threads")} == \
        {k: best[k] for k in ("instances", "threads")}
    repository = ModelRepository(repo)
    config = repository.read_config("tiny")
    if best["current"]:
        assert not trials["written"] and "nothing was written" in result.output
    else:  # the tuned step's new config; the ensemble's batch no larger than its steps'
        assert trials["written"] and config.max_batch_size == 8
        assert config.instance_group[0].count == best["instances"]
        assert config.parameters["INFERENCE_NUM_THREADS" if config.backend == "openvino"
                                 else "intra_op_thread_count"].string_value == "1"
        assert repository.read_config("tiny_text").max_batch_size == 8
        # the local server's wrapper runs the config's own thread count, not serve --threads
        assert shadow_config(config, threads=2).parameters["intra_op_threads"].string_value == "1"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_writes_nothing_when_no_setting_meets_the_target_or_when_asked_not_to(tiny_repo, tmp_path):
    repo = copied(tiny_repo, tmp_path)
    before = {name: (repo / name / "config.pbtxt").read_bytes() for name in ("tiny", "tiny_text")}
    result = runner.invoke(app, ["tune", "tiny_text", "--repo", str(repo), *SMALL, "--p99-ms", "0.001"])
    assert result.exit_code == 2 and "no setting kept p99 under 0.001 ms" in result.output
    assert "nothing was written" in result.output
    assert {name: (repo / name / "config.pbtxt").read_bytes() for name in before} == before
    result = runner.invoke(app, ["tune", "tiny_text", "--repo", str(repo), "--instances", "4",
                                 "--threads", "64"])
    assert result.exit_code == 2 and "more threads than this machine's" in result.output
    result = runner.invoke(app, ["tune", "missing", "--repo", str(repo)])
    assert result.exit_code == 2 and "no model 'missing'" in result.output and "tiny_text" in result.output
    result = runner.invoke(app, ["tune", "tiny_tokenizer", "--repo", str(repo)])
    assert result.exit_code == 2 and "served by no ONNX model" in result.output


def test_a_setting_changes_only_the_batcher_instances_and_threads(tiny_repo):
    config = ModelRepository(tiny_repo).read_config("tiny")
    tuned = applied(config, Setting(16, 1000, 2, 1))
    assert (tuned.max_batch_size, tuned.dynamic_batching.max_queue_delay_microseconds) == (16, 1000)
    assert list(tuned.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert [(g.count, g.kind) for g in tuned.instance_group] == [(2, config.instance_group[0].kind)]
    for field in ("input", "output", "model_warmup", "backend", "version_policy"):
        assert getattr(tuned, field) == getattr(config, field)
    back = applied(tuned, Setting(32, 500, 1, 0))  # threads 0: the parameter is removed again
    assert not any(key in back.parameters for key in ("intra_op_thread_count", "INFERENCE_NUM_THREADS"))
    assert candidate_settings([8], [0], [1, 2], [1, 2], cores=2) == [
        Setting(8, 0, 1, 1), Setting(8, 0, 1, 2), Setting(8, 0, 2, 1)]
