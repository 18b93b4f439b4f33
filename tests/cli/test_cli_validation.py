"""The CLI refuses nonsense before anything loads or connects: exit 2 with the value named, exit 3
when no server answers; published model folders get ordinary permissions."""

import json
import os
import stat
from importlib.metadata import version

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.serving.repository import ModelRepository, write_manifest
from tritonforge.triton_config import MANIFEST_FILE

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(("option", "value"), [
    ("--seq-len", "100000"), ("--seq-len", "-5"), ("--seq-len", "0"), ("--samples", "0"),
    ("--iterations", "0"), ("--batch-size", "0"), ("--threads", "0"),
])
def test_verify_refuses_out_of_range_numbers_before_reading_the_repository(tmp_path, option, value):
    result = invoke("verify", "no_such_model", "--repo", tmp_path / "missing", option, value)
    assert result.exit_code == 2, result.output
    assert f"{option} {value}" in result.output


@pytest.mark.parametrize(("option", "value"), [
    ("--grpc-port", "70000"), ("--http-port", "-1"), ("--metrics-port", "65536")])
def test_serve_refuses_a_port_outside_the_range(option, value):
    result = invoke("serve", option, value)
    assert result.exit_code == 2 and f"{option} {value}" in result.output and "65535" in result.output


def test_serve_refuses_a_host_that_is_no_address():
    result = invoke("serve", "--host", "999.1.1.1")
    assert result.exit_code == 2 and "999.1.1.1" in result.output and "busy" not in result.output


def test_serve_refuses_a_log_in_a_missing_folder(tmp_path):
    log = tmp_path / "nonexistent" / "dir" / "x.log"
    result = invoke("serve", "--log", log)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not log.parent.exists()


def test_export_refuses_an_empty_name_before_loading_a_model(tmp_path):
    result = invoke("export", "bert", "--model", tmp_path / "no_model_here", "--name", "",
                    "--repo", tmp_path / "repo")
    assert result.exit_code == 2 and "model name ''" in result.output
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("args", [
    ("--bits", "32", "--method", "os"), ("--lsq-epochs", "5"), ("--calib-size", "10"),
    # --target onnxruntime: FP16, so the refusal does not depend on this CPU having BF16
    ("--allow-fewer", "--bits", "16", "--target", "onnxruntime"), ("--calib", "texts.txt")])
def test_export_refuses_quantization_options_without_quantization(tmp_path, args):
    result = invoke("export", "bert", "--repo", tmp_path, *args)
    option = next(a for a in args if a.startswith("--") and a != "--bits")
    assert result.exit_code == 2 and option in result.output and "does not quantize" in result.output


@pytest.mark.parametrize("args", [("--duration", "-1"), ("--duration", "0"), ("--requests", "0")])
def test_bench_refuses_a_run_with_nothing_to_measure(args):
    result = invoke("bench", "m", "--url", "127.0.0.1:8001", *args)
    assert result.exit_code == 2 and args[0] in result.output


@pytest.mark.parametrize("command", [
    ("query", "m", "--text", "x", "--url"), ("bench", "m", "--url"), ("verify", "m", "--triton")])
@pytest.mark.parametrize(("url", "complaint"), [
    ("garbage", "not host:port"), ("127.0.0.1:99999", "outside 1..65535"), ("127.0.0.1:", "not host:port"),
    ("999.1.1.1:8001", "not an IP address")])
def test_server_addresses_are_checked_before_connecting(tmp_path, command, url, complaint):
    result = invoke(*command, url, "--repo", tmp_path)
    assert result.exit_code == 2, result.output
    assert repr(url) in result.output and complaint in result.output


def test_no_server_answering_exits_3():
    from tritonforge.serving.local import free_port

    result = invoke("query", "m", "--url", f"127.0.0.1:{free_port()}", "--text", "x")
    assert result.exit_code == 3 and "no Triton server answers" in result.output


def test_ls_refuses_a_missing_folder_and_one_that_is_no_repository(tmp_path):
    missing = invoke("ls", "--repo", tmp_path / "nope")
    assert missing.exit_code == 2 and "nope" in missing.output and "does not exist" in missing.output
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    other = invoke("ls", "--repo", tmp_path / "photos")
    assert other.exit_code == 2 and "not a model repository" in other.output


def test_ls_of_an_empty_folder_says_there_are_no_models(tmp_path):
    result = invoke("ls", "--repo", tmp_path)
    assert result.exit_code == 0 and "no models" in result.output


def test_verify_of_a_companion_names_the_export_to_verify(tmp_path):
    def populate(folder, number):
        write_manifest(folder, {"manifest_version": 1, "name": "bert_fp32_text", "version": number,
                                "family": "bert", "kind": "ensemble",
                                "companion_of": {"name": "bert_fp32", "version": number}})

    ModelRepository(tmp_path).write_version("bert_fp32_text", mc.ModelConfig(name="bert_fp32_text"),
                                            populate)
    result = invoke("verify", "bert_fp32_text", "--repo", tmp_path)
    assert result.exit_code == 2 and "companion" in result.output
    assert "verify 'bert_fp32'" in result.output and "export again" not in result.output


def test_version_prints_the_package_version():
    result = invoke("--version")
    assert result.exit_code == 0 and version("tritonforge") in result.output


@pytest.mark.parametrize(("umask", "folder_mode", "file_mode"),
                         [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_published_versions_get_ordinary_permissions(tmp_path, umask, folder_mode, file_mode):
    def populate(folder, _number):
        (folder / "model.txt").write_text("weights")
        write_manifest(folder, {"name": "m"})

    old = os.umask(umask)
    try:
        repository = ModelRepository(tmp_path)
        for _ in range(2):  # a new model folder, then a version added to an existing one
            repository.write_version("m", mc.ModelConfig(name="m"), populate)
    finally:
        os.umask(old)

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    model = tmp_path / "m"
    assert [mode(p) for p in (model, model / "1", model / "2")] == [folder_mode] * 3
    files = [model / "config.pbtxt", *(model / v / n for v in "12" for n in ("model.txt", MANIFEST_FILE))]
    assert [mode(p) for p in files] == [file_mode] * len(files)
    assert json.loads((model / "2" / MANIFEST_FILE).read_text()) == {"name": "m"}
