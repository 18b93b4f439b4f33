"""The `tritonforge` command: parses, calls the library, prints. No family-specific logic."""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from tritonforge.errors import TritonForgeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export research models to verified ONNX and serve them with Triton.")
export_app = typer.Typer(no_args_is_help=True, help="Export a model family into the model repository.")
app.add_typer(export_app, name="export")

console = Console()
errors = Console(stderr=True)

RepoOption = Annotated[Path, typer.Option("--repo", help="Model repository folder.")]
DEFAULT_REPO = Path("model_repo")


def friendly(command):
    """Turn TritonForgeError into a one-line message (exit 2) and Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TritonForgeError as exc:
            errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            errors.print("[yellow]interrupted:[/] nothing was published; the repository is as it was")
            raise typer.Exit(130) from None

    return wrapper


class Stages:
    """Rich progress for a pipeline: each call closes the previous step and opens the next.

    `stages(description, total)` returns a tick function; total 0 shows a spinner only.
    """

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def __call__(self, description: str, total: int = 0):
        self.finish()
        self.task = self.progress.add_task(description, total=total or None)
        task = self.task
        return lambda: self.progress.advance(task)

    def finish(self) -> None:
        if self.task is not None:
            total = self.progress.tasks[self.task].total or 1
            self.progress.update(self.task, total=total, completed=total)


def new_table(title: str, *columns: str) -> Table:
    """A rich table with these column headers."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def progress_bar() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=errors, transient=False)


@export_app.command("bert")
@friendly
def export_bert(
    model: Annotated[str | None, typer.Option(
        help="Hugging Face BERT directory (config.json, weights, tokenizer). "
             "Default: the embedded all-MiniLM-L6-v2.")] = None,
    bits: Annotated[int, typer.Option(
        help="32 (FP32), 16 (FP16, for GPU serving), or 8, 6, 4 (quantized W8A8, W6A6, W4A8; "
             "any 2..8 works).")] = 32,
    method: Annotated[str, typer.Option(
        help="Quantization: os (Gamma Migration + Token-Wise Clipping + LSQ+), os+ (channel-wise "
             "shifting and scaling + percentile clipping + LSQ+), minmax or percentile.")] = "os",
    wbits: Annotated[int | None, typer.Option(help="Weight bits (overrides --bits).")] = None,
    abits: Annotated[int | None, typer.Option(help="Activation bits (overrides --bits).")] = None,
    calib: Annotated[str | None, typer.Option(
        help="Calibration text file, one text per line. Default: the shipped corpus.")] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration texts (length 128, batch 32).")] = 256,
    allow_fewer: Annotated[bool, typer.Option(
        help="Calibrate on fewer texts when the file is shorter than --calib-size.")] = False,
    lsq_epochs: Annotated[int, typer.Option(help="LSQ+ epochs of os / os+ (0: coarse clipping only).")] = 3,
    name: Annotated[str | None, typer.Option(
        help="Model name. Default: bert_fp32, bert_fp16, bert_w6a6 (os), bert_w6a6_osplus, ...")] = None,
    repo: RepoOption = DEFAULT_REPO,
    max_batch: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 32,
    gpu: Annotated[bool, typer.Option(help="Serve on GPU with the TensorRT accelerator.")] = False,
    graph: Annotated[str, typer.Option(
        help="plain, fused (ONNX Runtime transformer optimizer) or auto (time both, keep the "
             "faster).")] = "auto",
    version: Annotated[int | None, typer.Option(help="Version number. Default: the next one.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing version or config.")] = False,
):
    """Export a BERT encoder or sequence classifier to ONNX as a new model version."""
    from tritonforge.export.bert import BertOptions
    from tritonforge.export.pipeline import export_model
    from tritonforge.serving.repository import ServingOptions

    options = BertOptions(model=model, bits=bits, graph=graph, gpu=gpu, wbits=wbits, abits=abits,
                          method=method, calib=calib, calib_size=calib_size, allow_fewer=allow_fewer,
                          lsq_epochs=lsq_epochs)
    serving = ServingOptions(max_batch_size=max_batch, gpu=gpu, fp16=bits == 16)
    with progress_bar() as progress:
        stages = Stages(progress)
        result = export_model("bert", options, repo, name, serving, version, force, stages)
        stages.finish()
    parity = result.manifest["parity"]
    console.print(f"[green]exported[/] {result.folder} ({result.manifest['precision']}, "
                  f"graph {result.manifest['onnx'].get('graph')}, "
                  f"{result.manifest['onnx']['bytes'] / 1e6:.1f} MB)")
    console.print(f"parity vs PyTorch on {parity['samples']} sentences: "
                  f"{parity['metric']} {parity['value']:.6f} (tolerance {parity['tolerance']})")
    quality = result.manifest.get("quality")
    if quality:
        console.print(f"quality vs FP on {quality['samples']} held-out sentences: embedding cosine "
                      f"{quality['cosine_vs_fp']:.4f}, nearest-neighbour agreement "
                      f"{quality['nn_agreement_vs_fp']:.3f}")


@app.command()
@friendly
def verify(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[int | None, typer.Option(help="Version. Default: the latest.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for parity and latency.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Sequence length (inputs padded to it).")] = 128,
    threads: Annotated[int, typer.Option(help="Threads for PyTorch and ONNX Runtime alike.")] = 2,
    iterations: Annotated[int, typer.Option(help="Timed runs per runtime.")] = 30,
    samples: Annotated[int | None, typer.Option(
        help="Parity samples. Default: the whole evaluation set.")] = None,
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    triton: Annotated[str | None, typer.Option(
        help="gRPC address of a Triton serving the model (e.g. 127.0.0.1:8001): check its outputs "
             "too and time it beside PyTorch and ONNX Runtime.")] = None,
):
    """Parity and latency of an exported version against its PyTorch reference."""
    from tritonforge.verify.runner import verify_model

    with progress_bar() as progress:
        stages = Stages(progress)
        report = verify_model(repo, name, version, batch_size, seq_len, threads, samples,
                              iterations, provider, stages, triton_url=triton)
        stages.finish()
    print_report(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_path}")
    if not report.parity.passed:
        errors.print("[bold red]parity FAILED[/]: the ONNX model does not match its reference")
        raise typer.Exit(1)
    if not report.passed:
        errors.print(f"[bold red]parity FAILED[/]: Triton at {triton} does not match the reference")
        raise typer.Exit(1)


def print_report(report) -> None:
    parity = new_table(f"{report.model} v{report.version} ({report.precision}): parity vs PyTorch",
                       "runtime", "metric", "value", "tolerance", "result")
    served = [("triton", report.triton_parity)] if report.triton_parity is not None else []
    for runtime, result in [("onnxruntime", report.parity), *served]:
        for check in result.checks:
            bound = ">=" if check.higher_is_better else "<="
            parity.add_row(runtime, check.metric, f"{check.value:.6g}", f"{bound} {check.tolerance:g}",
                           "[green]pass[/]" if check.passed else "[red]FAIL[/]")
    console.print(parity)
    latency = new_table(f"latency, batch {report.batch_size}, length {report.seq_len}, "
                        f"{report.threads} threads, interleaved", "runtime", "p50 ms", "p95 ms", "p99 ms")
    for runtime, stats in report.latency.items():
        latency.add_row(runtime, *(f"{stats.percentile(q):.1f}" for q in (50, 95, 99)))
    console.print(latency)
    console.print(f"ONNX Runtime is [bold]{report.speedup:.2f}x[/] PyTorch eager (p50; the FP32 model "
                  "for quantized exports)")
    if report.quality:
        console.print("quality vs full precision on {samples} held-out inputs: ".format(**report.quality)
                      + ", ".join(f"{k} {v:.4f}" for k, v in report.quality.items() if k != "samples"))


quality_app = typer.Typer(no_args_is_help=True, help="Quality vs speed of quantization recipes.")
app.add_typer(quality_app, name="quality")


@quality_app.command("bert")
@friendly
def quality_bert(
    model: Annotated[str | None, typer.Option(help="Hugging Face BERT encoder directory. "
                                                   "Default: the embedded all-MiniLM-L6-v2.")] = None,
    bits: Annotated[str, typer.Option(help="Comma-separated: 8,6,4 (4 = W4A8).")] = "8,6,4",
    methods: Annotated[str, typer.Option(
        help="Comma-separated: os,os+,minmax,percentile.")] = "os,os+,minmax,percentile",
    calib: Annotated[str | None, typer.Option(help="Calibration text file (one per line).")] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration texts.")] = 256,
    lsq_epochs: Annotated[int, typer.Option(help="LSQ+ epochs of os / os+.")] = 3,
    threads: Annotated[int, typer.Option(help="Threads for every runtime.")] = 2,
    iterations: Annotated[int, typer.Option(help="Timed runs per variant.")] = 12,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the table here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG plot here.")] = None,
):
    """Sentence-embedding cosine and nearest-neighbour agreement vs FP32 on held-out sentences,
    and latency, for FP32, ONNX Runtime's quantize_dynamic INT8 and each method x bits."""
    from tritonforge.export.bert.quality import parse_list, plot_quality, quality_report

    try:
        bit_list = [int(b) for b in parse_list(bits, "--bits")]
    except ValueError:
        raise TritonForgeError(f"--bits {bits!r} must be comma-separated integers, e.g. 8,6,4") from None
    with progress_bar() as progress:
        stages = Stages(progress)
        rows = quality_report(model, bit_list, parse_list(methods, "--methods"), calib, calib_size,
                              lsq_epochs, threads, iterations, stage=stages)
        stages.finish()
    table = new_table("quality vs FP32 on held-out sentences, latency batch 8 x 128 (p50, interleaved)",
                      "variant", "runtime", "cosine vs FP", "min cosine", "NN agreement", "p50 ms",
                      "x PyTorch FP32")
    pytorch = rows[0].latency_p50_ms
    for row in rows:
        table.add_row(row.variant, row.runtime, f"{row.cosine_vs_fp:.4f}", f"{row.min_cosine_vs_fp:.4f}",
                      f"{row.nn_agreement_vs_fp:.3f}", f"{row.latency_p50_ms:.1f}",
                      f"{pytorch / row.latency_p50_ms:.2f}")
    console.print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
        console.print(f"table written to {json_path}")
    if plot:
        console.print(f"plot written to {plot_quality(rows, plot)}")


@app.command("ls")
@friendly
def list_models(repo: RepoOption = DEFAULT_REPO):
    """The models and versions in the repository."""
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(repo)
    table = new_table(f"model repository {repo}", "model", "versions", "family", "precision", "parity",
                      "size MB", "created")
    for model in repository.models():
        versions = repository.versions(model)
        if not versions:
            table.add_row(model, "-", "", "", "", "", "")
            continue
        try:
            manifest = repository.read_manifest(model)
        except TritonForgeError:
            table.add_row(model, ",".join(map(str, versions)), "?", "", "no manifest", "", "")
            continue
        if "companion_of" in manifest:  # an ensemble or python step written beside an export
            table.add_row(model, ",".join(map(str, versions)), manifest.get("family", "?"),
                          manifest.get("kind", ""), f"step of {manifest['companion_of']['name']}", "",
                          "")
            continue
        parity = manifest.get("parity", {})
        table.add_row(model, ",".join(map(str, versions)), manifest.get("family", "?"),
                      manifest.get("precision", "?"),
                      f"{parity.get('metric')} {parity.get('value', float('nan')):.6f}",
                      f"{manifest.get('onnx', {}).get('bytes', 0) / 1e6:.1f}",
                      manifest.get("created", ""))
    console.print(table)

# -- serving -------------------------------------------------------------------------------

UrlOption = Annotated[str, typer.Option("--url", help="Triton gRPC address, host:port.")]


def tokenizer_repo(repo: Path | None) -> Path | None:
    """Where a token model's tokenizer is found: --repo, else ./model_repo when it exists."""
    return repo or (DEFAULT_REPO if DEFAULT_REPO.is_dir() else None)


@app.command()
def serve(
    repo: RepoOption = DEFAULT_REPO,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 exposes the server).")
                    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    log: Annotated[Path | None, typer.Option(
        help="Triton's log file. Default: <repo>.triton.log beside the repository.")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per model instance.")] = 2,
    nobatch_twins: Annotated[bool, typer.Option(
        help="Also serve each model without dynamic batching as <name>_nobatch (for bench).")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for all models to load.")] = 300,
):
    """Run a real Triton Inference Server on this machine (no Docker) until Ctrl-C or SIGTERM."""
    import time

    from tritonforge.serving.local import LocalTriton

    server = LocalTriton(repo, host, http_port, grpc_port, metrics_port,
                         log, threads, nobatch_twins, ready_timeout)
    try:
        try:
            with errors.status("starting tritonserver") as status:
                server.start(on_step=lambda message: status.update(message))
        except TritonForgeError as exc:
            errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        print_served(server)
        console.print("serving; Ctrl-C or SIGTERM stops the server", highlight=False)
        while server.is_running():
            time.sleep(0.5)
        errors.print(f"[bold red]error:[/] tritonserver exited on its own (code "
                     f"{server.process.returncode}); its log {server.log_file} ends with:\n"
                     f"{server.log_tail()}", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        errors.print("stopping tritonserver")
    finally:
        server.stop()
    console.print("tritonserver stopped")


def print_served(server) -> None:
    endpoints = new_table(f"Triton {server.host} (pid {server.process.pid}, log {server.log_file})",
                          "endpoint", "address")
    endpoints.add_row("gRPC", server.grpc_url)
    endpoints.add_row("HTTP", server.http_url)
    endpoints.add_row("metrics", server.metrics_url)
    console.print(endpoints)
    models = new_table("loaded models", "model", "version", "state")
    for model in server.models:
        models.add_row(model.name, model.version, model.state)
    console.print(models)


@app.command()
@friendly
def query(
    name: Annotated[str, typer.Argument(help="Model name on the server, e.g. bert_fp32_text.")],
    url: UrlOption = "127.0.0.1:8001",
    text: Annotated[list[str] | None, typer.Option(
        "--text", help="A text to send (repeat for several; they go as one batch).")] = None,
    input_json: Annotated[Path | None, typer.Option(
        help="JSON object {input name: nested list} sent as the request.")] = None,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Repository with the model's tokenizer, for --text to a token model.")] = None,
):
    """Send one request over gRPC and print the result readably."""
    from tritonforge.serving.client import connect, infer, json_inputs, model_info, text_inputs

    if bool(text) == bool(input_json):
        raise TritonForgeError("give either --text (one or more) or --input-json FILE")
    client = connect(url)
    info = model_info(client, name, url)
    arrays = text_inputs(info, text, tokenizer_repo(repo)) if text else json_inputs(info, input_json)
    outputs = infer(client, name, arrays, url=url)
    print_query(info, outputs, text or [])


def print_query(info, outputs, texts: list[str]) -> None:
    from tritonforge.serving.client import summarize

    summary = summarize(info, outputs)
    shapes = new_table(f"{info.name} (versions {', '.join(info.versions)}): outputs",
                       "output", "datatype", "shape")
    for output in info.outputs:
        shapes.add_row(output.name, output.datatype, str(summary["shapes"].get(output.name)))
    console.print(shapes)
    rows = texts or [f"row {i}" for i in range(len(next(iter(outputs.values()))))]
    for name, values in summary.get("embeddings", {}).items():
        table = new_table(f"{name}: L2 norm and cosine similarity", "text", "norm",
                          *(f"#{index}" for index in range(len(rows))))
        for index, label in enumerate(rows):
            table.add_row(f"#{index} {label[:60]}", f"{values['norms'][index]:.4f}",
                          *(f"{c:.4f}" for c in values["cosine"][index]))
        console.print(table)
    for name, ranked in summary.get("labels", {}).items():
        table = new_table(f"{name}: most probable labels", "text", "label", "probability")
        for label, row in zip(rows, ranked, strict=True):
            for position, (cls, probability) in enumerate(row):
                table.add_row(label[:60] if position == 0 else "", cls, f"{probability:.4f}")
        console.print(table)


@app.command()
@friendly
def bench(
    name: Annotated[str, typer.Argument(help="Model name on the server, e.g. bert_fp32_text.")],
    url: UrlOption = "127.0.0.1:8001",
    concurrency: Annotated[str, typer.Option(help="Requests in flight, one level per comma.")] = "1,4,16,32",
    requests: Annotated[int | None, typer.Option(help="Requests per level (default 2000).")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds per level, instead of --requests.")
                        ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG plot of latency against throughput.")] = None,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Repository with the model's tokenizer, for a token model.")] = None,
    seq_len: Annotated[int | None, typer.Option(
        help="Token models: pad every request to this length (default: length buckets).")] = None,
):
    """Asynchronous gRPC load: throughput and p50/p95/p99 per concurrency level, with and without
    dynamic batching (the latter when the server has <name>_nobatch: `serve --nobatch-twins`)."""
    from tritonforge.data import sentences
    from tritonforge.serving.bench import bench_report, parse_levels, plot_latency_throughput, run_bench
    from tritonforge.serving.client import connect, model_info, text_inputs
    from tritonforge.serving.local import NOBATCH_SUFFIX

    levels = parse_levels(concurrency)
    if requests is None and duration is None:
        requests = 2000
    client = connect(url)
    info = model_info(client, name, url)
    payloads = [text_inputs(info, [t], tokenizer_repo(repo), seq_len) for t in sentences()]
    served = {m["name"] for m in client.get_model_repository_index(as_json=True).get("models", [])
              if m.get("state") == "READY"}
    models = [(name, "dynamic")]
    if name + NOBATCH_SUFFIX in served:
        models.append((name + NOBATCH_SUFFIX, "none"))
    with progress_bar() as progress:
        stages = Stages(progress)
        results = run_bench(url, models, payloads, levels, requests, duration, stages)
        stages.finish()
    table = Table(title=f"bench {name} at {url}: one sentence per request, latency in ms "
                        f"({name}{NOBATCH_SUFFIX}: without dynamic batching)")
    table.add_column("model", no_wrap=True)
    for column in ("conc", "n", "err", "req/s", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r.model, str(r.concurrency), str(r.ok + r.errors),
                      f"[red]{r.errors}[/]" if r.errors else "0", f"{r.throughput:.1f}",
                      *(f"{r.percentile(q):.1f}" for q in (50, 95, 99)))
    console.print(table)
    for r in results:
        if r.errors:
            errors.print(f"{r.model} c={r.concurrency}: first error: {r.first_error}", markup=False)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(bench_report(url, results), indent=2) + "\n")
        console.print(f"results written to {json_path}")
    if plot:
        plot_latency_throughput(results, plot, f"{name}: latency vs throughput ({url})")
        console.print(f"plot written to {plot}")



def _terminate(signum, _frame):
    # SIGTERM unwinds like Ctrl-C, so staging folders are removed on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # keeps an ignored SIGINT ignored: `kill -INT` would then never stop `serve`. Ctrl-C and
    # SIGINT always mean "stop cleanly" here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app(prog_name="tritonforge")


if __name__ == "__main__":
    sys.exit(main())
