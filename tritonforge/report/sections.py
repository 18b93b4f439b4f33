"""The sections of docs/benchmarks.md, each measured by the project's own code.

- bert on every runtime: `tritonforge.speed`'s way (export each variant, parity against its
  PyTorch reference with the family's bar, all timed in the same `measure_interleaved` rounds),
  for FP32, BF16, W8A8 and W6A6 at 8 x 128 and 1 x 32;
- Export cost, Verify at its defaults: `tritonforge export` and `verify` as child processes;
- Serving, Live updates, Families: `tritonforge serve` with `bench` against it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.report import Context, Section, SectionResult, Table
from tritonforge.report.workspace import REPO, CommandRun

NOT_MEASURED = "not measured in this run"
# bert's recipes by --bits: what `export bert --bits N` makes with its defaults
BERT_BITS = {32: "FP32", 8: "W8A8 (os+: shift and scale, block reconstruction, LSQ+)",
             6: "W6A6 (os+, the default recipe)"}
# Each family's default export (bert's default --bits is 32), as `verify` is run on it.
DEFAULT_EXPORTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bert", ("--bits", "32")), ("dask", ()), ("snn", ()), ("detr", ()), ("sr", ()))
QUICK_VERIFY = "sr"  # --quick verifies one family: the quickest to export and verify (seconds)
RUNTIME_NAMES = {"pytorch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
SERVED_BY = ("`tritonforge serve`: Triton 2.51 (the nvidia-pytriton wheel, python backend only) "
             "running tritonforge's python-backend wrapper "
             "(`tritonforge/serving/python_models/onnx_runtime.py`) on the export's target, ONNX "
             "Runtime or OpenVINO, in-process; not Triton's onnxruntime or openvino backends, "
             "which the local tritonserver does not have")


def code(text: str) -> str:
    return f"`{text}`"


def not_measured(key: str, what: str = "") -> str:
    return f"{NOT_MEASURED}{what}: `tritonforge report --only {key}`"


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def mb(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


# -- shared steps: exports and verifies, each made once per report --------------------------------


def export_name(context: Context, family: str, *options: str) -> tuple[CommandRun, str]:
    """`export FAMILY OPTIONS` (once per report) and the model it wrote."""
    run = context.workspace.export(family, *options)
    return run, context.workspace.exported_name(run)


def verified(context: Context, name: str) -> tuple[CommandRun, dict[str, Any] | None]:
    """`verify NAME --repo REPO --json ...` at its defaults (once per report) and its report."""
    cache = context.shared.setdefault("verify", {})
    if name not in cache:
        workspace = context.workspace
        path = workspace.root / "verify" / f"{name}.verify.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        run = workspace.run(["verify", name, "--repo", str(workspace.repo), "--json", str(path)])
        cache[name] = (run, json.loads(path.read_text()) if path.is_file() else None)
    return cache[name]


def manifest(context: Context, name: str, repo: Path | None = None) -> dict[str, Any]:
    from tritonforge.serving.repository import ModelRepository

    return ModelRepository(repo or context.workspace.repo).read_manifest(name)


def served_by(document: dict[str, Any]) -> str:
    target = document.get("serving", {}).get("target", "onnxruntime")
    return f"python-backend wrapper, {RUNTIME_NAMES.get(target, target)}"


# -- bert on every runtime -----------------------------------------------------------------------


SHAPES = (("8 x 128", 8, 128), ("1 x 32", 1, 32))
PYTORCH = "PyTorch eager FP32"


def measure_bert_runtimes(context: Context, result: SectionResult) -> None:
    """FP32 (PyTorch, ONNX Runtime, OpenVINO), BF16 (OpenVINO) and the W8A8 / W6A6 exports (the
    same QDQ file on both runtimes): parity against each one's PyTorch reference on the 8 x 128
    batch, and latency at 8 x 128 and 1 x 32, every variant in the same interleaved rounds."""
    import torch

    from tritonforge.family import get_family
    from tritonforge.runtime import open_session, run_session
    from tritonforge.serving.repository import ModelRepository
    from tritonforge.timing import measure_interleaved
    from tritonforge.triton_config import MODEL_FILE

    workspace, stage, quick = context.workspace, context.stage, context.quick
    iterations = 6 if quick else 20
    family = get_family("bert")
    base = family.options_type(target="onnxruntime", bits=32, threads=workspace.threads)
    quantized = {}  # bits -> (options, model, model.onnx): the report's own exports, loaded
    if not quick:
        for bits in (8, 6):
            _run, name = export_name(context, "bert", "--bits", str(bits))
            document = manifest(context, name)
            options = family.options_from_json(document["recipe"])
            _number, folder = ModelRepository(workspace.repo).resolve(name)
            stage(f"bert: loading the {name} reference (reference.pt)", 0)
            quantized[bits] = (options, family.load_version(options, folder), folder / MODEL_FILE, name)
    torch.set_num_threads(workspace.threads)
    stage("bert: loading the PyTorch FP32 model", 0)
    fp_model = family.load(base)
    io = family.io(fp_model, base)
    batches = {label: family.sample_inputs(fp_model, base, n, {"seq_len": length})
               for label, n, length in SHAPES}
    parity_batch = batches[SHAPES[0][0]]

    # One dict per variant: label, precision, runtime; then either `skipped` (why not) or the
    # recipe its parity is judged by, its PyTorch reference model, its graph and run precision.
    rows: list[dict[str, Any]] = [{"label": PYTORCH, "precision": "fp32", "runtime": "pytorch"}]
    scratch = workspace.root / "bert-runtimes"
    graphs: dict[str, Path] = {}
    for target in ("onnxruntime", "openvino"):
        recipe = base.for_target(target, 32)
        path = scratch / target / MODEL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        stage(f"bert: exporting FP32 for {RUNTIME_NAMES[target]}", 0)
        family.export(fp_model, path, recipe)
        graphs[target] = path
        rows.append({"label": f"{RUNTIME_NAMES[target]} FP32", "precision": "fp32", "runtime": target,
                     "recipe": recipe, "model": fp_model, "path": path, "run_precision": "fp32"})
    bf16 = {"label": "OpenVINO BF16", "precision": "bf16", "runtime": "openvino"}
    if quick:
        bf16["skipped"] = not_measured(result.key, " (--quick)")
    else:
        try:
            bf16.update(recipe=base.for_target("openvino", 16), model=fp_model, path=graphs["openvino"],
                        run_precision="bf16")
        except TritonForgeError as exc:  # no AVX512_BF16 or AMX here
            bf16["skipped"] = f"not run on this CPU: {exc}"
    rows.append(bf16)
    for bits in (8, 6):
        for target in ("onnxruntime", "openvino"):
            row = {"label": f"{RUNTIME_NAMES[target]} W{bits}A{bits}", "precision": f"w{bits}a{bits}",
                   "runtime": target}
            if bits in quantized:
                options, model, path, name = quantized[bits]
                row.update(recipe=options, model=model, path=path, run_precision="fp32", export=name)
            else:
                row["skipped"] = not_measured(result.key, " (--quick)")
            rows.append(row)

    references: dict[int, dict[str, Any]] = {}  # id(model) -> its outputs on the parity batch
    for row in rows[1:]:
        if "skipped" in row:
            continue
        stage(f"bert: {row['label']}: opening and checking parity", 0)
        row["session"] = open_session(row["path"], row["runtime"], workspace.threads, row["run_precision"])
        model = row["model"]
        if id(model) not in references:
            references[id(model)] = family.reference_outputs(model, parity_batch, io)
        candidate = run_session(row["session"], parity_batch)
        row["parity"] = family.compare(references[id(model)], candidate, row["recipe"], parity_batch)
    latency: dict[str, dict[str, float]] = {}
    for label, _n, _length in SHAPES:
        batch = batches[label]
        runners: dict[str, Callable[[], Any]] = {
            PYTORCH: lambda b=batch: family.reference_outputs(fp_model, b, io)}
        for row in rows[1:]:
            if "session" in row:
                runners[row["label"]] = lambda s=row["session"], b=batch: run_session(s, b)
        tick = stage(f"bert: latency at {label}, {len(runners)} variants interleaved", iterations)
        measured = measure_interleaved(runners, iterations, tick=tick)
        latency[label] = {name: stats.percentile(50) for name, stats in measured.items()}

    table_rows = []
    data_rows = []
    for row in rows:
        cells = [row["label"], row["precision"]]
        if "skipped" in row:
            table_rows.append([*cells, row["skipped"], *[""] * (2 * len(SHAPES))])
            data_rows.append({"variant": row["label"], "skipped": row["skipped"]})
            continue
        parity = row.get("parity")
        if parity is None:
            verdict = "the reference"
        else:
            check = parity.primary
            verdict = (f"{check.metric} {check.value:.6f} ({'>=' if check.higher_is_better else '<='} "
                       f"{check.tolerance:g}: {'pass' if check.passed else 'FAIL'})")
        figures = []
        record: dict[str, Any] = {"variant": row["label"], "precision": row["precision"],
                                  "runtime": row["runtime"],
                                  "parity": None if parity is None else parity.primary.to_json()}
        for label, _n, _length in SHAPES:
            p50, base_p50 = latency[label][row["label"]], latency[label][PYTORCH]
            figures += [ms(p50), ratio(base_p50 / p50)]
            record[label.replace(" ", "")] = {"p50_ms": round(p50, 3), "speedup": round(base_p50 / p50, 3)}
        table_rows.append([*cells, verdict, *figures])
        data_rows.append(record)
    columns = ["variant", "precision", "parity vs its PyTorch reference (8 x 128)"]
    for label, _n, _length in SHAPES:
        columns += [f"{label} p50 ms", f"{label} speed-up"]
    runs = [workspace.export("bert", "--bits", str(bits)).shown for bits in quantized]  # made already
    result.tables.append(Table(
        columns, table_rows, result.command, runs=runs,
        caption=(f"The embedded all-MiniLM-L6-v2, {workspace.threads} threads, real evaluation sentences "
                 f"padded to the length; p50 of {iterations} runs per variant, all variants timed in "
                 "the same interleaved rounds (`timing.measure_interleaved`). Speed-up = PyTorch FP32 "
                 "eager p50 / this p50 in the same run (above 1: faster).")))
    result.notes += [
        "Parity: FP32 and BF16 against the PyTorch FP32 model; W8A8 and W6A6 against their "
        "integer-exact fake-quantized PyTorch reference (the export's `reference.pt`), with the "
        "family's bars (cosine 0.99999 FP32, 0.9999 BF16, 0.995 quantized); on the 8 x 128 batch.",
        "The quantized rows run the export's own `model.onnx` (one QDQ file on both runtimes); the "
        "FP32 rows export the graph each runtime is given by `export bert --target ...` (ONNX "
        "Runtime: the faster of plain and fused; OpenVINO: plain). BF16 is OpenVINO computing "
        "the FP32 file in bfloat16 (`--bits 16`); ONNX Runtime's CPU provider has no BF16.",
    ]
    result.data["rows"] = data_rows
    result.data["iterations"] = iterations
    for row in rows:  # the runtimes' memory goes back before the next section
        row.pop("session", None)
    gc.collect()


# -- export cost -------------------------------------------------------------------------------


def measure_export_cost(context: Context, result: SectionResult) -> None:
    """`tritonforge export bert --bits 32 | 8 | 6`, each as its own process."""
    rows, data = [], []
    for bits in (32, 8, 6):
        if context.quick and bits != 32:
            rows.append([code(f"tritonforge export bert --bits {bits} --repo {REPO}"), BERT_BITS[bits],
                         not_measured(result.key), "", "", ""])
            continue
        run = context.workspace.export("bert", "--bits", str(bits))
        rows.append([code(run.shown), BERT_BITS[bits], f"{run.wall_s:.1f}", mb(run.peak_rss_mb),
                     "" if run.cpu_s is None else f"{run.cpu_s:.0f}", run.outcome()])
        data.append({"bits": bits, **run.to_json()})
    result.tables.append(Table(
        ["command", "recipe", "wall s", "peak RSS MB", "CPU s", "result"], rows, result.command,
        caption=("Each export into the report's scratch repository as its own process (once per "
                 "report: the other sections reuse it): wall time, and the peak resident memory and "
                 "CPU time (user + system) that the kernel reports for it (wait4) when it ends. The "
                 "embedded all-MiniLM-L6-v2; the quantized ones calibrate on the 256 shipped "
                 "sentences.")))
    result.data["exports"] = data


# -- verify at its defaults ----------------------------------------------------------------------


def parity_cell(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    parity = report["parity"]
    value = parity["value"]
    shown = f"{value:.6f}" if 0.99 <= value < 1 else f"{value:.6g}"  # a cosine just under 1 shows its digits
    return (f"{parity['metric']} {shown} (tolerance {parity['tolerance']:g}): "
            f"{'pass' if parity['passed'] else 'FAIL'}")


def speed_cell(report: dict[str, Any] | None) -> str:
    if not report or "speedup_vs_pytorch" not in report:
        return ""
    runtime = RUNTIME_NAMES.get(report.get("runtime", ""), report.get("runtime", ""))
    return f"{runtime} {report['speedup_vs_pytorch']:.2f}x PyTorch"


def measure_verify(context: Context, result: SectionResult) -> None:
    """`tritonforge verify NAME` at its default options on each family's default export."""
    rows, data = [], []
    for family, options in DEFAULT_EXPORTS:
        workspace = context.workspace
        export_shown = code(workspace.show(["export", family, *options, "--repo", str(workspace.repo)]))
        if context.quick and family != QUICK_VERIFY:
            rows.append([family, export_shown, "", not_measured(result.key), "", "", "", "", ""])
            continue
        exported = context.workspace.export(family, *options)
        if not exported.ok:
            rows.append([family, code(exported.shown), f"{exported.wall_s:.1f}", "", "", "", "", "",
                         f"export {exported.outcome()}"])
            data.append({"family": family, "export": exported.to_json()})
            continue
        name = context.workspace.exported_name(exported)
        run, report = verified(context, name)
        rows.append([family, code(exported.shown), f"{exported.wall_s:.1f}", code(run.shown),
                     f"{run.wall_s:.1f}", mb(run.peak_rss_mb), parity_cell(report), speed_cell(report),
                     run.outcome()])
        data.append({"family": family, "model": name, "export": exported.to_json(), "verify": run.to_json(),
                     "report": report})
    result.tables.append(Table(
        ["family", "default export", "export s", "verify", "verify s", "verify peak RSS MB",
         "parity (its default samples)", "vs PyTorch eager (p50, its default batch)", "result"], rows,
        result.command,
        caption=("`verify` with its default options (the family's `verify_defaults`: batch 8, "
                 "detr 2; 2 threads; its iterations and samples) on each family's default export, "
                 "both as their own processes; `--json` only writes the report the other columns "
                 "are read from.")))
    result.data["families"] = data


# -- serving ------------------------------------------------------------------------------------


def bench_rows(document: dict[str, Any], manifests: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for level in document.get("levels", []):
        model = level["model"]
        latency = level["latency_ms"]
        rows.append([model, served_by(manifests[model]) if model in manifests else "",
                     str(level["concurrency"]), str(level["requests"]), str(level["errors"]),
                     f"{level['throughput_rps']:.1f}", ms(latency["p50"]), ms(latency["p95"]),
                     ms(latency["p99"])])
    return rows


BENCH_COLUMNS = ["model", "served by", "concurrency", "requests", "errors", "req/s", "p50 ms", "p95 ms",
                 "p99 ms"]


def bench(context: Context, served, model: str, levels: str, requests: int, label: str,
          compare: list[str] | None = None) -> tuple[CommandRun, dict[str, Any]]:
    """`tritonforge bench MODEL` against `served`; its JSON report."""
    workspace = context.workspace
    path = workspace.root / "bench" / f"{label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    options = ["--repo", str(workspace.repo), "--concurrency", levels, "--requests", str(requests),
               *(["--compare", ",".join(compare)] if compare else []), "--json", str(path)]
    run = workspace.run(["bench", model, "--url", served.grpc_url, *options],
                        shown=workspace.show(["bench", model, *options]))
    if not run.ok:
        raise TritonForgeError(f"`{run.shown}` failed ({run.outcome()}); its log: {run.log}")
    return run, json.loads(path.read_text())


def measure_serving(context: Context, result: SectionResult) -> None:
    """bert_fp32 and bert_w6a6 under a local `serve`, `bench` at each concurrency level."""
    bits = (32,) if context.quick else (32, 6)
    names = [export_name(context, "bert", "--bits", str(b))[1] for b in bits]
    levels, requests = ("4", 100) if context.quick else ("1,4,16", 500)
    repo = context.workspace.serving_repo(names, "bert")
    manifests = {name: manifest(context, name) for name in names}
    with context.workspace.serve(repo, "bert") as served:
        run, document = bench(context, served, names[0], levels, requests, "bert", names[1:])
    rows = bench_rows(document, manifests)
    if context.quick:
        rows.append(["bert_w6a6", not_measured(result.key), "", "", "", "", "", "", ""])
    result.tables.append(Table(
        BENCH_COLUMNS, rows, result.command, runs=[f"{served.shown}", run.shown],
        caption=(f"{' and '.join(names)} (and their tokenizer and text ensemble) alone in the served "
                 f"repository; one real evaluation sentence per request (its own length), asynchronous "
                 f"gRPC, {requests} requests per level after 8 warm-up requests, dynamic batching on. "
                 f"Served by {SERVED_BY}.")))
    result.data["bench"] = document


# -- live updates -------------------------------------------------------------------------------


def token_request():
    import numpy as np
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, values in (("input_ids", [[101, 2023, 2003, 1037, 6251, 102]]), ("attention_mask", [[1] * 6]),
                         ("token_type_ids", [[0] * 6])):
        array = np.asarray(values, dtype=np.int64)
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def wait_for(check: Callable[[], bool], timeout_s: float, tick: Callable[[], None]) -> float | None:
    """Seconds until `check()` holds (polled every 50 ms), or None after the timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if check():
                return time.monotonic() - start
        except Exception:  # not answering yet
            pass
        tick()
        time.sleep(0.05)
    return None


def measure_live_updates(context: Context, result: SectionResult) -> None:
    """The live switch (a new version published under `serve` until it answers) and a restart
    (tritonserver killed until the supervised server answers again)."""
    import tritonclient.grpc as grpcclient

    from tritonforge.serving.repository import ModelRepository

    workspace = context.workspace
    repo = workspace.root / "live-repo"
    repeats = 3
    export = ["export", "bert", "--bits", "32", "--repo", str(repo)]
    first = workspace.run(export)
    if not first.ok:
        raise TritonForgeError(f"`{first.shown}` failed ({first.outcome()}); its log: {first.log}")
    published, returned, restarts = [], [], []
    with workspace.serve(repo, "live") as served:
        client = grpcclient.InferenceServerClient(served.grpc_url)
        request = token_request()

        def answers(version: str) -> bool:
            return client.infer("bert_fp32", request).get_response().model_version == version

        try:
            for _ in range(repeats):
                before = set(ModelRepository(repo).versions("bert_fp32"))
                done: dict[str, Any] = {}

                def run_export(done=done) -> None:
                    done["run"] = workspace.run(export)
                    done["at"] = time.monotonic()

                thread = threading.Thread(target=run_export)
                thread.start()
                while True:  # until the new version folder appears (or the export ends without one)
                    running = thread.is_alive()
                    new = set(ModelRepository(repo).versions("bert_fp32")) - before
                    version = str(max(new)) if new else None
                    if version is not None or not running:
                        break
                    time.sleep(0.02)
                if version is None:
                    thread.join()
                    run = done["run"]
                    raise TritonForgeError(f"`{run.shown}` published no version ({run.outcome()}); its log: "
                                           f"{run.log}")
                waited = wait_for(lambda v=version: answers(v), 300, lambda: None)
                live = time.monotonic()
                thread.join()
                published.append(waited)
                returned.append(None if waited is None else live - done["at"])
            pid = served.tritonserver_pid()
            if pid is None:
                raise TritonForgeError(f"no tritonserver process under `serve` (pid {served.process.pid})")
            tick = workspace.stage("restart: tritonserver killed (SIGKILL), waiting for an answer", 0)
            os.kill(pid, signal.SIGKILL)
            restarts.append(wait_for(lambda: served.tritonserver_pid() not in (None, pid)
                                     and client.infer("bert_fp32", request) is not None, 300, tick))
        finally:
            client.close()
    rows = []
    for label, values, how in (
            ("live switch", published, "a new version folder appears in the served repository (the "
                                       "export's rename) -> its first answer"),
            ("live switch, from the export's return", returned,
             "`export bert --bits 32` exits -> the new version's first answer (negative: it answered "
             "before the export process had exited)"),
            ("restart", restarts, "tritonserver killed with SIGKILL -> the first answer of the server "
                                  "that `serve` started again")):
        shown = ", ".join("timed out" if v is None else f"{v:.2f}" for v in values)
        finite = [v for v in values if v is not None]
        rows.append([label, f"{statistics.median(finite):.2f}" if finite else "timed out", shown, how])
    result.tables.append(Table(
        ["measure", "median s", "each s", "from -> to"], rows, result.command,
        runs=[first.shown, served.shown],
        caption=(f"bert_fp32 (MiniLM FP32) served by `tritonforge serve` at its defaults (watch on, "
                 f"poll 1 s, a change acted on once it held for two looks), then the same export run "
                 f"{repeats} times into the served repository (versions 2 to {repeats + 1}); one "
                 f"6-token request polled every 50 ms; no other load.")))
    result.data.update(switch_from_publish_s=published, switch_from_return_s=returned, restart_s=restarts)


# -- families -----------------------------------------------------------------------------------


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def measure_families(context: Context, result: SectionResult) -> None:
    """Each family's headline figures from its default export and `verify` (reused from the
    Verify section when it ran), and snn streamed through `serve` (`bench`)."""
    by_family: dict[str, list[list[str]]] = {}
    data: dict[str, Any] = {}
    for family, options in DEFAULT_EXPORTS[1:]:
        rows = by_family.setdefault(family, [])
        exported, name = export_name(context, family, *options)
        run, report = verified(context, name)
        document = manifest(context, name)
        source = code(run.shown)
        for key, value in (document.get("quality") or {}).items():
            if isinstance(value, float):
                rows.append([family, name, f"{key.replace('_', ' ')} (export, "
                             f"{document['quality'].get('samples', '?')} held-out samples)",
                             number(value), code(exported.shown)])
        if report:
            details = report["parity"]["details"]
            samples = f" ({details['samples']} samples)" if "samples" in details else ""
            for check in details.get("checks", [report["parity"]]):
                rows.append([family, name, f"{check['metric'].replace('_', ' ')} vs PyTorch{samples}",
                             f"{number(check['value'])} ({'pass' if check['passed'] else 'FAIL'})", source])
            how = details.get("psnr") if isinstance(details.get("psnr"), str) else None  # measured how
            for key, value in details.items():  # PSNR against the high-resolution originals
                if key.startswith("psnr") and isinstance(value, float):
                    said = ", ".join(filter(None, ["dB" if key.endswith("_db") else None, how]))
                    label = key.removesuffix("_db").replace("_", " ") + (f" ({said})" if said else "")
                    rows.append([family, name, label, f"{value:.3f}", source])
            rows.append([family, name, "speed-up vs PyTorch eager, batch 8", speed_cell(report), source])
        else:
            rows.append([family, name, "verify", run.outcome(), source])
        data[family] = {"model": name, "quality": document.get("quality"), "verify": report}
    # snn: the digits model and its streaming twin through a local server
    _exported, digits = export_name(context, "snn")
    streamed, stream = export_name(context, "snn", "--streaming")
    steps = manifest(context, stream).get("source", {}).get("timesteps")  # frames per digit
    repo = context.workspace.serving_repo([digits, stream], "snn")
    with context.workspace.serve(repo, "snn") as served:
        stream_run, stream_bench = bench(context, served, stream, "1,8,32", 1000, "snn-stream")
        digits_run, digits_bench = bench(context, served, digits, "32", 1000, "snn-digits")
    rows = by_family["snn"]
    for level in stream_bench["levels"]:
        per_digit = f", {level['throughput_rps'] / steps:,.0f} digits/s" if steps else ""
        count = level["concurrency"]
        streams = f"{count} sequence{'s' if count != 1 else ''} streaming at once, per frame"
        rows.append(["snn", stream, streams,
                     f"{level['throughput_rps']:,.0f} frames/s{per_digit}, p50 "
                     f"{level['latency_ms']['p50']:.1f} ms, p99 {level['latency_ms']['p99']:.1f} ms",
                     code(stream_run.shown)])
    for level in digits_bench["levels"]:
        rows.append(["snn", digits, f"whole digits, {level['concurrency']} requests in flight",
                     f"{level['throughput_rps']:,.0f} digits/s, p50 {level['latency_ms']['p50']:.1f} ms",
                     code(digits_run.shown)])
    data["snn_serving"] = {"stream": stream_bench, "digits": digits_bench, "steps": steps}
    result.tables.append(Table(
        ["family", "model", "figure", "value", "from"], [row for rows in by_family.values() for row in rows],
        result.command,
        runs=[code(streamed.shown), served.shown],
        caption=("Each family's default export (random weights for detr and sr: their parity holds, "
                 "their absolute quality means nothing) and `verify` at its defaults; snn's digits "
                 f"model and its `--streaming` export, alone in the served repository, benched through "
                 f"{SERVED_BY}.")))
    result.notes.append(
        "Not run by this report (each about as long as the whole report, or longer): the EMT reconstruction "
        "run (`tritonforge emt clip clip.mp4 && tritonforge emt compare clip.mp4 --archs espcn`, "
        "about 15 min), `tritonforge quality bert --bits 8,6,4 --methods os,os+` and "
        "`tritonforge quality detr --archs detr,deformable,mttrans`.")
    result.data.update(data)


SECTIONS = [
    Section("bert-on-every-runtime", "bert on every runtime", measure_bert_runtimes,
            "FP32, BF16, W8A8 and W6A6 bert (the embedded MiniLM) on PyTorch eager, ONNX Runtime and "
            "OpenVINO: parity, and latency at 8 x 128 and 1 x 32 as speed-ups over PyTorch FP32 "
            "measured side by side in one run."),
    Section("export-cost", "Export cost", measure_export_cost,
            "Wall time and peak memory of `tritonforge export bert` at 32, 8 and 6 bits."),
    Section("verify-at-its-defaults", "Verify at its defaults", measure_verify,
            "Wall time of `tritonforge verify NAME` at its default options, for each family's "
            "default export."),
    Section("serving", "Serving", measure_serving,
            "bert_fp32 and bert_w6a6 under a local `tritonforge serve`: `tritonforge bench` throughput "
            "and latency per concurrency level."),
    Section("live-updates", "Live updates", measure_live_updates,
            "Under `serve`: a new export answering (the live switch), and the supervised server back "
            "after tritonserver is killed (restart).", in_quick=False),
    Section("families", "Families", measure_families,
            "Each family's headline figures: dask accuracy, detr parity, sr PSNR, snn digits and "
            "streamed frames per second through Triton.", in_quick=False),
]
