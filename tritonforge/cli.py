"""The `tritonforge` command: parses, calls the library, prints. No family-specific logic."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from tritonforge.command_options import (
    DEFAULT_REPO,
    RepoOption,
    UrlOption,
    check_host,
    check_port,
    common_parameter,
    remote_options,
    require_at_least,
    require_positive,
)
from tritonforge.console import Stages, console, errors, new_table, progress_bar
from tritonforge.errors import ServerUnavailable, TritonForgeError
from tritonforge.serving.endpoint import Endpoint  # light: the commands' `endpoint` parameter

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Export research models to verified ONNX and serve them with Triton.")
export_app = typer.Typer(no_args_is_help=True, help="Export a model family into the model repository.")
app.add_typer(export_app, name="export")
quality_app = typer.Typer(no_args_is_help=True, help="Quality vs speed of a family's recipes.")
app.add_typer(quality_app, name="quality")




# Exit codes: 0 ok, 1 parity failed (or the server stopped on its own), 2 bad input,
# 3 server or network trouble (no server answers), 130 interrupted.
EXIT_PARITY, EXIT_BAD_INPUT, EXIT_SERVER = 1, 2, 3


def fail(exc: TritonForgeError) -> typing.NoReturn:
    """Print the error as one line and exit 3 for server trouble, else 2."""
    errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(EXIT_SERVER if isinstance(exc, ServerUnavailable) else EXIT_BAD_INPUT)


def friendly(command):
    """Turn TritonForgeError into a one-line message (exit 2, or 3 for server trouble) and
    Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TritonForgeError as exc:
            fail(exc)
        except KeyboardInterrupt:
            errors.print("[yellow]interrupted:[/] nothing was published; the repository is as it was")
            raise typer.Exit(130) from None

    return wrapper


# -- checks of option values, before anything loads or connects ---------------------------

MAX_SEQ_LEN = 4096  # longer than any BERT's position table; the model's own bound is checked later






def check_shape(seq_len: int | None, image_size: int | None, timesteps: int | None) -> None:
    require_at_least("--seq-len", seq_len, 1)
    if seq_len is not None and seq_len > MAX_SEQ_LEN:
        raise TritonForgeError(f"--seq-len {seq_len} is too long: give at most {MAX_SEQ_LEN} "
                               "(and no more than the model's max_sequence_length, usually 512)")
    require_at_least("--image-size", image_size, 1)
    require_at_least("--timesteps", timesteps, 1)














# -- commands generated from a family's options -------------------------------------------


def option_parameters(options_type: type) -> list[inspect.Parameter]:
    """One CLI option per field of a family's options dataclass (fields marked cli=False are
    recipe details with no option); the help text comes from `option(help=...)`."""
    hints = typing.get_type_hints(options_type)
    parameters = []
    for item in dataclasses.fields(options_type):
        if not item.metadata.get("cli", True):
            continue
        if item.default is not dataclasses.MISSING:
            default = item.default
        elif item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        else:
            default = inspect.Parameter.empty
        # cli_type: how the option is typed on the command line when the field takes more than one
        # kind of value (--bits 8 or --bits auto); the dataclass parses it.
        kind = item.metadata.get("cli_type", hints[item.name])
        annotation = Annotated[kind, typer.Option(help=item.metadata.get("help", ""))]
        parameters.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return parameters


def generated_command(function: Callable, options_type: type, common: list[inspect.Parameter],
                      doc: str) -> Callable:
    """`function(options, **common)` as a typer command whose options are the dataclass's."""
    names = {p.name for p in common}
    fields = option_parameters(options_type)
    clash = names & {p.name for p in fields}
    if clash:
        raise TritonForgeError(f"{options_type.__name__} has fields {sorted(clash)} that the command "
                               "itself takes: rename them")

    @friendly
    def command(**kwargs):
        shared = {name: kwargs.pop(name) for name in names}
        return function(options_type(**kwargs), **shared)

    command.__wrapped__.__signature__ = inspect.Signature([*fields, *common])
    command.__doc__ = doc
    return command




EXPORT_PARAMETERS = [
    common_parameter("name", Annotated[str | None, typer.Option(
        help="Model name. Default: the family's, e.g. bert_fp32, bert_w6a6, bert_w6a6_osplus.")], None),
    common_parameter("repo", RepoOption, DEFAULT_REPO),
    common_parameter("max_batch", Annotated[int, typer.Option(help="Triton max_batch_size.")], 32),
    common_parameter("version", Annotated[int | None, typer.Option(
        help="Version number. Default: the next one.")], None),
    common_parameter("force", Annotated[bool, typer.Option(
        help="Replace an existing version or config.")], False),
]


def export_command(family) -> Callable:
    def run(options, name, repo, max_batch, version, force) -> None:
        from tritonforge.export.pipeline import export_model
        from tritonforge.triton_config import ServingOptions, validate_name

        if name is not None:
            validate_name(name)  # "" too: it would otherwise mean the default name

        with progress_bar() as progress:
            stages = Stages(progress)
            result = export_model(family, options, repo, name, ServingOptions(max_batch_size=max_batch),
                                  version, force, stages)
            stages.finish()
        console.print(f"[green]exported[/] {result.folder}")
        for line in family.summary(result.manifest):
            console.print(line)

    doc = (type(family).__doc__ or f"A {family.name} model.").strip().splitlines()[0]
    doc = f"Export {doc[0].lower()}{doc[1:]} Writes a new version into the model repository."
    return generated_command(run, family.options_type, EXPORT_PARAMETERS, doc)


QUALITY_PARAMETERS = [
    common_parameter("json_path", Annotated[Path | None, typer.Option(
        "--json", help="Write the table here.")], None),
    common_parameter("plot", Annotated[Path | None, typer.Option(help="Write a PNG plot here.")], None),
]


def quality_command(family) -> Callable:
    def run(options, json_path, plot) -> None:
        from tritonforge.verify.recipe_table import pareto_front, plot_pareto, plot_quality

        with progress_bar() as progress:
            stages = Stages(progress)
            rows = family.quality_table(options, stages)
            stages.finish()
        metrics = list(rows[0].metrics)
        serving = rows[0].serving_p50_ms is not None  # also timed on the common serving request
        sizes = any("onnx_mb" in row.details for row in rows)
        table = new_table(f"{family.name}: quality against full precision, and latency (p50, interleaved)",
                          "variant", "runtime", *(m.replace("_", " ") for m in metrics),
                          *(["MB"] if sizes else []), "p50 ms", f"x {rows[0].variant}",
                          *(["serving p50 ms", "x"] if serving else []))
        baseline, serving_baseline = rows[0].latency_p50_ms, rows[0].serving_p50_ms
        for row in rows:
            table.add_row(row.variant, row.runtime, *(f"{row.metrics[m]:.4f}" for m in metrics),
                          *([str(row.details.get("onnx_mb", ""))] if sizes else []),
                          f"{row.latency_p50_ms:.1f}", f"{baseline / row.latency_p50_ms:.2f}",
                          *([f"{row.serving_p50_ms:.1f}", f"{serving_baseline / row.serving_p50_ms:.2f}"]
                            if serving else []))
        console.print(table)
        runtime = next((row.runtime for row in rows if "average_bits" in row.details), None)
        front = pareto_front(rows, runtime) if runtime else []
        if front:
            pareto = new_table(f"Pareto front on {runtime}: no other row has fewer bits and better quality",
                               "variant", "average bits", metrics[0].replace("_", " "), "MB")
            for row in front:
                pareto.add_row(row.variant, f"{row.details['average_bits']:.2f}",
                               f"{row.metrics[metrics[0]]:.4f}", str(row.details.get("onnx_mb", "")))
            console.print(pareto)
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
            console.print(f"table written to {json_path}")
        if plot:
            console.print(f"plot written to {plot_quality(rows, plot, family.name)}")
            if front:
                written = plot_pareto(rows, plot.with_name(f"{plot.stem}_pareto{plot.suffix}"), family.name,
                                      runtime)
                console.print(f"Pareto plot written to {written}")

    return generated_command(run, family.quality_options(), QUALITY_PARAMETERS,
                             f"Quality vs speed of {family.name} recipes, side by side on held-out inputs.")


class FamilyGroup(TyperGroup):
    """A command group with one subcommand per model family, built when it is asked for, so
    that `tritonforge --help` does not import every family."""

    build: ClassVar[Callable[[Any], Callable | None]]

    def list_commands(self, ctx: click.Context) -> list[str]:
        from tritonforge.family import family_names

        return sorted(set(super().list_commands(ctx)) | set(family_names()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tritonforge.family import family_names, get_family

        command = super().get_command(ctx, name)
        if command is not None or name not in family_names():
            return command
        function = type(self).build(get_family(name))
        if function is None:
            return None
        single = typer.Typer(add_completion=False)
        single.command(name)(function)
        return typer.main.get_command(single)


class ExportGroup(FamilyGroup):
    build = staticmethod(export_command)


class QualityGroup(FamilyGroup):
    build = staticmethod(lambda family: quality_command(family) if family.quality_options() else None)


# Command groups named after the research rather than the family: `tritonforge emt ...` runs
# the sr family's commands (EMT's video delivery).
FAMILY_COMMAND_ALIASES = {"emt": "sr"}


class RootGroup(TyperGroup):
    """`tritonforge <family> ...`: a family's own commands (e.g. training), when it has any.
    They are not listed in `tritonforge --help` (that would import every family); the
    family's documentation names them."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tritonforge.family import family_names, get_family

        command = super().get_command(ctx, name)
        family = FAMILY_COMMAND_ALIASES.get(name, name)
        if command is not None or family not in family_names():
            return command
        commands = get_family(family).commands()
        if commands is None:
            return None
        group = typer.main.get_group(commands)  # a group even with one command
        group.name = name
        for command in group.commands.values():  # errors and Ctrl-C as for every other command
            command.callback = friendly(command.callback)
        return group


app.info.cls = RootGroup
export_app.info.cls = ExportGroup
quality_app.info.cls = QualityGroup

# The shape options of every modality; each model takes those of its own (verify, bench).
SeqLenOption = Annotated[int | None, typer.Option(
    help="Text: sequence length, every input padded to it (default 128 for verify; length "
         "buckets for bench).")]
ImageSizeOption = Annotated[int | None, typer.Option(help="Images: height and width of the samples.")]
TimestepsOption = Annotated[int | None, typer.Option(help="Streams: time steps per sample.")]


def parse_frame_size(text: str | None) -> dict[str, int]:
    """--frame-size WxH as the image_pixels shape options (none when not given)."""
    if text is None:
        return {}
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()) or int(width) < 1 or int(height) < 1:
        raise TritonForgeError(f"--frame-size {text!r} is not WIDTHxHEIGHT in pixels, e.g. 640x360")
    return {"frame_width": int(width), "frame_height": int(height)}


def shape_options(seq_len: int | None, image_size: int | None, timesteps: int | None) -> dict[str, int]:
    given = {"seq_len": seq_len, "image_size": image_size, "timesteps": timesteps}
    return {k: v for k, v in given.items() if v is not None}









@app.command()
@friendly
@remote_options("triton")
def verify(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[int | None, typer.Option(help="Version. Default: the latest.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for parity and latency.")] = 8,
    seq_len: SeqLenOption = None,
    image_size: ImageSizeOption = None,
    timesteps: TimestepsOption = None,
    threads: Annotated[int, typer.Option(help="Threads for PyTorch and ONNX Runtime alike.")] = 2,
    iterations: Annotated[int, typer.Option(help="Timed runs per runtime.")] = 30,
    samples: Annotated[int | None, typer.Option(
        help="Parity samples. Default: the whole evaluation set.")] = None,
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    triton: Annotated[str | None, typer.Option(
        help="gRPC address of a Triton serving the model (e.g. 127.0.0.1:8001, grpcs://HOST:443): "
             "check its outputs too and time it beside PyTorch and ONNX Runtime.")] = None,
    endpoint: Endpoint | None = None,
):
    """Parity and latency of an exported version against its PyTorch reference."""
    from tritonforge.serving.repository import ModelRepository
    from tritonforge.verify.runner import verify_model

    for option, value in (("--batch-size", batch_size), ("--threads", threads),
                          ("--iterations", iterations), ("--samples", samples)):
        require_at_least(option, value, 1)
    check_shape(seq_len, image_size, timesteps)
    ModelRepository(repo).check_exported(name, version)
    with progress_bar() as progress:
        stages = Stages(progress)
        report = verify_model(repo, name, version, batch_size, shape_options(seq_len, image_size, timesteps),
                              threads, samples, iterations, provider, stages, triton_url=endpoint)
        stages.finish()
    print_report(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_path}")
    if not report.parity.passed:
        errors.print("[bold red]parity FAILED[/]: the ONNX model does not match its reference")
        raise typer.Exit(EXIT_PARITY)
    if not report.passed:
        errors.print(f"[bold red]parity FAILED[/]: Triton at {triton} does not match the reference")
        raise typer.Exit(EXIT_PARITY)


def print_report(report) -> None:
    parity = new_table(f"{report.model} v{report.version} ({report.precision}): parity vs PyTorch",
                       "runtime", "metric", "value", "tolerance", "result")
    served = [("triton", report.triton_parity)] if report.triton_parity is not None else []
    for runtime, result in [(report.runtime, report.parity), *served]:
        for check in result.checks:
            bound = ">=" if check.higher_is_better else "<="
            parity.add_row(runtime, check.metric, f"{check.value:.6g}", f"{bound} {check.tolerance:g}",
                           "[green]pass[/]" if check.passed else "[red]FAIL[/]")
    console.print(parity)
    shape = "".join(f", {k.replace('_', ' ')} {v}" for k, v in report.shape.items() if v)
    latency = new_table(f"latency, {report.threads} threads, interleaved",
                        "runtime", "p50 ms", "p95 ms", "p99 ms")
    rounds = [(f"batch {report.batch_size}{shape}", report.latency)]
    if report.serving_latency is not None:
        rounds.append((", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.serving_request.items()),
                       report.serving_latency))
    for label, measured in rounds:
        for runtime, stats in measured.items():
            latency.add_row(f"{runtime} ({label})", *(f"{stats.percentile(q):.1f}" for q in (50, 95, 99)))
    console.print(latency)
    name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[report.runtime]
    serving = ("" if report.serving_speedup is None else
               f", [bold]{report.serving_speedup:.2f}x[/] on the serving request")
    console.print(f"{name} is [bold]{report.speedup:.2f}x[/] PyTorch eager{serving} (p50; the FP32 model "
                  "for quantized exports)")
    if report.quality:
        console.print("quality on {samples} held-out inputs: ".format(**report.quality)
                      + ", ".join(f"{k} {v:.4f}" for k, v in report.quality.items() if k != "samples"))


@app.command("ls")
@friendly
def list_models(repo: RepoOption = DEFAULT_REPO):
    """The models and versions in the repository."""
    from tritonforge.serving.repository import ModelRepository

    repository = ModelRepository(repo)
    repository.check_is_repository()
    repository.check_safe()
    if not repository.models():
        console.print(f"no models in {repo}: export one with `tritonforge export bert --repo {repo}`")
        return
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
    watch: Annotated[bool, typer.Option(
        help="Load new versions, new models and changed configs from the repository while "
             "serving, and unload removed models (after their requests in flight).")] = True,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the repository and the server.")
                    ] = 1.0,
    max_restarts: Annotated[int, typer.Option(
        help="Restarts of a tritonserver that died (with back-off) before serve gives up (exit 3).")
                            ] = 5,
    user: Annotated[str | None, typer.Option(
        help="Run tritonserver as this user (a name or uid; serve must run as root).")] = None,
):
    """Run a real Triton Inference Server on this machine (no Docker) until Ctrl-C or SIGTERM:
    it picks up new exports while serving, and is restarted if it dies."""
    from tritonforge.serving.local import LocalTriton

    try:
        check_host("--host", host)
        for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port),
                             ("--metrics-port", metrics_port)):
            check_port(option, port)
        require_at_least("--threads", threads, 1)
        require_positive("--ready-timeout", ready_timeout)
        require_positive("--poll", poll)
        require_at_least("--max-restarts", max_restarts, 0)
        if log is not None and not log.parent.is_dir():
            raise TritonForgeError(f"--log {log}: the folder {log.parent} does not exist; create it "
                                   "first or give a log file in an existing folder")
    except TritonForgeError as exc:
        fail(exc)
    server = LocalTriton(repo, host, http_port, grpc_port, metrics_port,
                         log, threads, nobatch_twins, ready_timeout, user=user)
    try:
        try:
            with errors.status("starting tritonserver") as status:
                server.start(on_step=lambda message: status.update(message))
        except TritonForgeError as exc:
            fail(exc)
        print_served(server)
        console.print(f"serving; {'watching ' + str(repo) + ' for new exports; ' if watch else ''}"
                      "Ctrl-C or SIGTERM stops the server", highlight=False)
        try:
            server.supervise(lambda message: errors.print(message, soft_wrap=True, highlight=False,
                                                          markup=False),
                             max_restarts=max_restarts, poll_s=poll, watch=watch)
        except TritonForgeError as exc:
            fail(exc)
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
@remote_options("url")
def query(
    name: Annotated[str, typer.Argument(help="Model name on the server, e.g. bert_fp32_text.")],
    url: UrlOption = "127.0.0.1:8001",
    text: Annotated[list[str] | None, typer.Option(
        "--text", help="A text to send (repeat for several; they go as one batch).")] = None,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", help="An image file to send (repeat for several; they go as one batch).")] = None,
    npy: Annotated[list[str] | None, typer.Option(
        "--npy", help="A .npy array: FILE for a model with one input, else NAME=FILE per input.")] = None,
    input_json: Annotated[Path | None, typer.Option(
        help="JSON object {input name: nested list} sent as the request.")] = None,
    stream: Annotated[Path | None, typer.Option(
        help="A streaming model: a .npy recording [frames, ...], sent frame by frame as one "
             "sequence; the output of every frame is printed.")] = None,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Repository with the model's export, to encode raw input for a tensor model "
                       "(its tokenizer).")] = None,
    seq_len: SeqLenOption = None,
    min_score: Annotated[float, typer.Option(help="Detections: the lowest score printed.")] = 0.5,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write every output (kind, shape, dtype, values) and the summary here.")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Image outputs (super-resolution): save them as PNG here; detectors: draw the "
             "detections of the first --image on it and save a PNG here.")] = None,
    endpoint: Endpoint | None = None,  # from --url and the TLS/header options (remote_options)
):
    """Send one request over gRPC and print each output in its natural form (a stream: one
    request per frame, each frame's output a row)."""
    from tritonforge.serving.client import (
        connect,
        infer,
        json_inputs,
        model_info,
        new_sequence_ids,
        outputs_json,
        query_request,
        stream_file,
        stream_sequences,
        summarize,
    )

    given = {option: values for option, values in (("text", text), ("image", image), ("npy", npy)) if values}
    if len(given) + bool(input_json) + bool(stream) != 1:
        raise TritonForgeError("give exactly one kind of input: --text, --image, --npy, --input-json "
                               "or --stream")
    check_shape(seq_len, None, None)
    client = connect(endpoint)
    info = model_info(client, name, endpoint)
    if info.sequence and not stream:
        raise TritonForgeError(f"model {name!r} is a streaming model: send a recording with --stream "
                               "FILE.npy ([frames, ...]), one frame per request")
    if stream:
        frames = stream_file(info, stream)
        (sequence,) = new_sequence_ids(1)
        result = stream_sequences(client, name, {sequence: frames}, info.frame_input().name, endpoint)
        outputs = result.outputs[sequence]
        rows = [f"frame {t + 1}/{len(frames)}" for t in range(len(frames))]
    elif input_json:
        arrays, rows = json_inputs(info, input_json), []
    else:
        option, values = given.popitem()
        arrays, rows = query_request(info, option, [str(v) for v in values], tokenizer_repo(repo),
                                     shape_options(seq_len, None, None))
    if not stream:
        outputs = infer(client, name, arrays, url=endpoint)
    summary = summarize(info, outputs, min_score)
    print_query(info, outputs, summary, rows, min_score)
    if save and "images" in summary:
        from tritonforge.serving.client import save_images

        for written in save_images(info, outputs, save):
            console.print(f"image written to {written}")
    elif save:
        from tritonforge.serving.client import draw_detections

        found = summary.get("detections")
        if not image or found is None:
            raise TritonForgeError(f"--save writes image outputs or draws detections on an --image; "
                                   f"{name!r} returns neither")
        console.print(f"detections drawn on {draw_detections(image[0].read_bytes(), found[0], save)}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(outputs_json(info, outputs, summary, rows), indent=2) + "\n")
        console.print(f"outputs written to {json_path}")


def print_query(info, outputs, summary, rows: list[str], min_score: float) -> None:
    kinds = info.output_kinds
    shapes = new_table(f"{info.name} (versions {', '.join(info.versions)}): outputs",
                       "output", "kind", "datatype", "shape")
    for output in info.outputs:
        shapes.add_row(output.name, kinds.get(output.name, ""), output.datatype,
                       str(summary["shapes"].get(output.name)))
    console.print(shapes)
    rows = rows or [f"#{i}" for i in range(len(next(iter(outputs.values()))))]
    for name, values in summary.get("embeddings", {}).items():
        table = new_table(f"{name}: L2 norm and cosine similarity", "input", "norm",
                          *(f"#{index}" for index in range(len(rows))))
        for index, label in enumerate(rows):
            table.add_row(label, f"{values['norms'][index]:.4f}",
                          *(f"{c:.4f}" for c in values["cosine"][index]))
        console.print(table)
    for name, ranked in summary.get("labels", {}).items():
        table = new_table(f"{name}: most probable labels", "input", "label", "probability")
        for label, row in zip(rows, ranked, strict=True):
            for position, (cls, probability) in enumerate(row):
                table.add_row(label if position == 0 else "", cls, f"{probability:.4f}")
        console.print(table)
    if "detections" in summary:
        table = new_table(f"detections scoring at least {min_score}", "input", "label", "score",
                          "box (x1, y1, x2, y2)")
        for label, found in zip(rows, summary["detections"], strict=True):
            if not found:
                table.add_row(label, "(none)", "", "")
            for position, item in enumerate(found):
                table.add_row(label if position == 0 else "", str(item["label"]), f"{item['score']:.3f}",
                              ", ".join(f"{v:.1f}" for v in item["box"]))
        console.print(table)
    for name, stats in summary.get("tensors", {}).items():
        if stats:
            console.print(f"{name}: {summary['dtypes'][name]} {summary['shapes'][name]}, "
                          f"min {stats['min']:.6g}, max {stats['max']:.6g}, mean {stats['mean']:.6g}",
                          highlight=False)


@app.command()
@friendly
@remote_options("url")
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
        "--repo", help="Repository with the model's export (a token model's tokenizer, a tensor "
                       "model's saved samples).")] = None,
    seq_len: SeqLenOption = None,
    frame_size: Annotated[str | None, typer.Option(
        help="Image models that take any size (super-resolution): send the photographs fitted to "
             "WxH, e.g. 640x360 (default: each at its own size).")] = None,
    perf_analyzer: Annotated[bool, typer.Option(
        "--perf-analyzer", help="Also measure each level with Triton's perf_analyzer (same inputs, "
                                "about as many requests) and compare (`make perf-analyzer` installs it).")
                             ] = False,
    compare: Annotated[str | None, typer.Option(
        help="Comma-separated models with the same inputs (e.g. the encoder exported for other "
             "targets: bert_bf16_text,bert_w8a8_text), benched in the same run on the same "
             "payloads; ratios against NAME.")] = None,
    endpoint: Endpoint | None = None,  # from --url and the TLS/header options (remote_options)
):
    """Asynchronous gRPC load: throughput and p50/p95/p99 per concurrency level, with and without
    dynamic batching (the latter when the server has <name>_nobatch: `serve --nobatch-twins`)."""
    from tritonforge.serving.bench import (
        bench_report,
        compare_models,
        parse_levels,
        plot_latency_throughput,
        run_bench,
        run_stream_bench,
    )
    from tritonforge.serving.client import bench_payloads, connect, model_info, served_models, stream_samples
    from tritonforge.serving.local import NOBATCH_SUFFIX

    levels = parse_levels(concurrency)
    check_shape(seq_len, None, None)
    require_at_least("--requests", requests, 1)
    require_positive("--duration", duration)
    if requests is None and duration is None:
        requests = 2000
    if perf_analyzer:
        from tritonforge.serving.perf_analyzer import (
            comparison,
            connection_arguments,
            cross_check,
            find_perf_analyzer,
        )

        analyzer_binary = find_perf_analyzer()  # first: a missing binary says how to install it
        connection_arguments(endpoint)  # headers it cannot send are refused before the load
    analyzer_rows: list[dict] = []
    client = connect(endpoint)
    info = model_info(client, name, endpoint)
    others = compared_models(client, endpoint, name, info, compare)
    if info.sequence:
        if others:
            raise TritonForgeError(f"--compare benches single requests; {name!r} is a streaming model "
                                   "(sequence batcher): bench each model on its own")
        if duration is not None:
            raise TritonForgeError("a streaming model is benched by --requests (frames per level), "
                                   "not --duration")
        if perf_analyzer:
            raise TritonForgeError(f"--perf-analyzer compares single requests; {name!r} is a streaming "
                                   "model (sequence batcher): bench it without --perf-analyzer")
        sequences = stream_samples(info, repo)
        title = (f"bench {name} at {url}: 'conc' sequences streaming at once, one frame per request, "
                 "latency per frame in ms, req/s = frames/s")
        with progress_bar() as progress:
            stages = Stages(progress)
            results = run_stream_bench(endpoint, name, info.frame_input().name, sequences, levels,
                                       requests, stages)
            stages.finish()
    else:
        shape = {**shape_options(seq_len, None, None), **parse_frame_size(frame_size)}
        kind, payloads = bench_payloads(info, tokenizer_repo(repo), shape)
        models = [(name, "dynamic")]
        if name + NOBATCH_SUFFIX in served_models(client, endpoint):
            models.append((name + NOBATCH_SUFFIX, "none"))
        models += [(other, "dynamic") for other in others]
        with progress_bar() as progress:
            stages = Stages(progress)
            if perf_analyzer:
                results, analyzed = cross_check(
                    endpoint, [(m, model_info(client, m, endpoint), b) for m, b in models], payloads, levels,
                    requests, duration, stages, analyzer_binary)
                analyzer_rows = comparison(results, analyzed)
            else:
                results = run_bench(endpoint, models, payloads, levels, requests, duration, stages)
            stages.finish()
        title = (f"bench {name} at {url}: one real {kind} input per request, latency in ms "
                 f"({name}{NOBATCH_SUFFIX}: without dynamic batching)")
    table = Table(title=title)
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
    if analyzer_rows:
        print_analyzer_comparison(analyzer_rows)
    compared = compare_models(results, name) if others else []
    if compared:
        table = new_table(f"against {name}, same payloads, same run", "model", "conc", "req/s",
                          "x req/s", "p50 ms", "x p50")
        for row in compared:
            table.add_row(row["model"], str(row["concurrency"]), f"{row['throughput']:.1f}",
                          f"{row['throughput_ratio']:.2f}" if row["throughput_ratio"] else "-",
                          f"{row['p50_ms']:.1f}", f"{row['p50_ratio']:.2f}")
        console.print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        report = bench_report(endpoint, results)
        if analyzer_rows:
            report["perf_analyzer"] = analyzer_rows
        if compared:
            report["comparison"] = compared
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"results written to {json_path}")
    if plot:
        plot_latency_throughput(results, plot, f"{name}: latency vs throughput ({url})")
        console.print(f"plot written to {plot}")


def compared_models(client, url: Endpoint | str, name: str, info, compare: str | None) -> list[str]:
    """The --compare models, each checked to take the same inputs as `name`."""
    from tritonforge.serving.client import model_info
    from tritonforge.verify.recipe_table import parse_list

    if compare is None:
        return []
    others = [m for m in parse_list(compare, "--compare") if m != name]
    signature = [(i.name, i.datatype) for i in info.inputs]
    for other in others:
        other_info = model_info(client, other, url)
        theirs = [(i.name, i.datatype) for i in other_info.inputs]
        if theirs != signature:
            raise TritonForgeError(
                f"--compare {other}: its inputs {theirs} differ from {name}'s {signature}, so the "
                "same payloads cannot be sent: compare models that take the same inputs (e.g. "
                "two _text ensembles, or two encoders)")
    return others


def print_analyzer_comparison(rows: list[dict]) -> None:
    """`bench --perf-analyzer`: per level, both tools' figures and their ratio."""
    from tritonforge.serving.perf_analyzer import AGREEMENT

    table = Table(title=f"bench and perf_analyzer (PA), same inputs: req/s, latency in ms; ratio = "
                        f"PA / bench; agree: req/s and p50 within {AGREEMENT:.0%}")
    table.add_column("model", no_wrap=True)
    for column in ("conc", "by", "req/s", "p50", "p95", "p99", "agree"):
        table.add_column(column, justify="right")
    keys = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms")
    for row in rows:
        table.add_row(row["model"], str(row["concurrency"]), "bench",
                      *(f"{row['bench'][k]:.1f}" for k in keys))
        table.add_row("", "", "PA", *(f"{row['perf_analyzer'][k]:.1f}" for k in keys))
        table.add_row("", "", "ratio", *(f"{row['ratio'][k]:.2f}" for k in keys),
                      "yes" if row["agree"] else "[red]no[/]", end_section=True)
    console.print(table)


@app.command()
@friendly
@remote_options("url")
def soak(
    name: Annotated[str, typer.Argument(help="An export served by Triton, e.g. bert_fp32.")],
    url: UrlOption = "127.0.0.1:8001",
    repo: RepoOption = DEFAULT_REPO,
    requests: Annotated[int, typer.Option(help="Requests in all.")] = 10_000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    min_cosine: Annotated[float, typer.Option(
        help="An answer is right when its cosine with ONNX Runtime's is at least this.")] = 0.9999,
    raw: Annotated[bool, typer.Option(
        help="Also send raw inputs to the export's ensemble (<name>_text, ...), alternating.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds before one request counts as failed.")] = 60,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG plot of every request's latency over time.")
                    ] = None,
    endpoint: Endpoint | None = None,  # from --url and the TLS/header options (remote_options)
):
    """Sustained load with every answer checked: requests alternate between the export's tensor
    model and its raw-input ensemble, real inputs in turn, each answer compared with ONNX Runtime
    run here on the export. Exits 1 when any request failed or answered wrong."""
    from tritonforge.serving.repository import ModelRepository
    from tritonforge.serving.soak import plot_soak, run_soak

    require_at_least("--requests", requests, 1)
    require_at_least("--concurrency", concurrency, 1)
    require_positive("--timeout", timeout)
    if not 0 < min_cosine <= 1:
        raise TritonForgeError(f"--min-cosine {min_cosine} must be in (0, 1], e.g. 0.9999")
    ModelRepository(repo).check_is_repository()
    with progress_bar() as progress:
        stages = Stages(progress)
        report = run_soak(endpoint, repo, name, requests, concurrency, min_cosine, raw_model=raw,
                          stage=stages, timeout_s=timeout)
        stages.finish()
    table = Table(title=f"soak {name} at {url}: {requests} requests at concurrency {concurrency} in "
                        f"{report.seconds:.1f} s; right = cosine with ONNX Runtime >= {min_cosine}")
    table.add_column("model", no_wrap=True)
    for column in ("n", "err", "wrong", "min cos", "req/s", "p50", "p95", "p99", "versions"):
        table.add_column(column, justify="right")
    for row in report.rows():
        latency = row["latency_ms"]
        table.add_row(row["model"], str(row["requests"]),
                      f"[red]{row['errors']}[/]" if row["errors"] else "0",
                      f"[red]{row['wrong']}[/]" if row["wrong"] else "0",
                      "" if row["min_cosine"] is None else f"{row['min_cosine']:.6f}",
                      f"{row['throughput_rps']:.1f}",
                      *("" if latency[q] is None else f"{latency[q]:.1f}" for q in ("p50", "p95", "p99")),
                      ", ".join(row["versions"]))
    console.print(table)
    for problem in report.first_problems():
        errors.print(f"{problem.model} at {problem.start_s:.2f} s: {problem.status}"
                     f"{': ' + problem.error if problem.error else f' (cosine {problem.cosine:.6f})'}",
                     markup=False, highlight=False)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_path}")
    if plot:
        console.print(f"plot written to {plot_soak(report, plot)}")
    if report.failed:
        raise typer.Exit(EXIT_PARITY)


@app.command()
@friendly
def push(
    repo: Annotated[Path, typer.Argument(help="The model repository to upload, e.g. model_repo.")],
    storage_uri: Annotated[str, typer.Argument(help="Where it goes: s3://BUCKET/PREFIX.")],
    endpoint_url: Annotated[str | None, typer.Option(
        help="An S3-compatible store instead of AWS S3: MinIO's URL, or "
             "https://storage.googleapis.com for GCS (HMAC key).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be uploaded and skipped; change nothing.")] = False,
):
    """Upload the model repository to S3-compatible object storage (for KServe or Triton's
    s3:// repositories): each model's version files first, config.pbtxt last; files already
    there with the same sha256 are skipped, so rerunning completes a stopped push; every object
    is checked afterwards. Credentials come from the environment or a profile
    (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), never from the command line."""
    from tritonforge.scale.push import execute_push, plan_push, verify_push

    plan = plan_push(repo, storage_uri, endpoint_url)
    if dry_run:
        uploading, bucket = {f.relative for f in plan.upload}, f"s3://{plan.location.bucket}"
        for stale in plan.stale_uploads:
            console.print(f"abort   {bucket}/{stale['Key']} (an unfinished multipart upload)",
                          soft_wrap=True, markup=False, highlight=False)
        for local in plan.files:
            action = "upload" if local.relative in uploading else "skip  "
            console.print(f"{action}  {bucket}/{plan.location.key(local.relative)} "
                          f"({local.size / 1e6:.2f} MB{'' if action == 'upload' else ', same sha256'})",
                          soft_wrap=True, markup=False, highlight=False)
        console.print(f"dry run, nothing changed: would upload {len(plan.upload)} files "
                      f"({plan.upload_bytes / 1e6:.1f} MB) and skip {len(plan.skip)}")
        return
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"uploading to {plan.location.uri}", total=len(plan.upload) or 1)
            execute_push(plan, on_uploaded=lambda _file: progress.advance(task))
            progress.update(task, completed=len(plan.upload) or 1)
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted:[/] the push stopped part-way; run it again to complete "
                     "it (files already there are skipped)")
        raise typer.Exit(130) from None
    check = verify_push(plan)
    table = new_table(f"pushed {repo} -> {plan.location.uri}", "model", "uploaded", "skipped (same)",
                      "MB uploaded")
    for model in dict.fromkeys(f.model for f in plan.files):
        sent = [f for f in plan.upload if f.model == model]
        table.add_row(model, str(len(sent)), str(sum(f.model == model for f in plan.skip)),
                      f"{sum(f.size for f in sent) / 1e6:.2f}")
    console.print(table)
    console.print(f"verified: {check.describe()}", soft_wrap=True, highlight=False)
    if plan.extra_keys:
        errors.print(f"[yellow]note:[/] {len(plan.extra_keys)} objects under {plan.location.uri} are "
                     f"not in {repo} (e.g. {plan.extra_keys[0]}); they were left alone, and a Triton "
                     "reading the prefix sees them too", soft_wrap=True)


# -- scaling out: plan and KServe manifests -------------------------------------------------

deploy_app = typer.Typer(no_args_is_help=True, help="Manifests to run the model repository elsewhere.")
app.add_typer(deploy_app, name="deploy")


@app.command()
@friendly
def plan(
    bench_path: Annotated[Path, typer.Option("--bench", help="The JSON `tritonforge bench --json` wrote.")],
    target_rps: Annotated[float, typer.Option(help="Requests per second the fleet must serve.")],
    p99_ms: Annotated[float, typer.Option(help="The p99 latency each request must meet, in ms.")],
    model: Annotated[str | None, typer.Option(
        help="Which model of the bench report (default: the first, the one benched).")] = None,
    headroom: Annotated[float, typer.Option(
        help="Share of the measured throughput kept spare per replica, in [0, 1).")] = 0.2,
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the plan (JSON).")
                   ] = Path("plan.json"),
):
    """Replicas and per-replica concurrency for a target load at a p99 bound, from a measured
    bench curve: the highest measured concurrency with p99 within the bound (no errors), its
    throughput less the headroom, replicas = ceil(target / that). `deploy kserve --plan` uses it."""
    from tritonforge.scale.plan import plan_replicas, read_bench, write_plan

    report = read_bench(bench_path)
    result = plan_replicas(report, target_rps, p99_ms, model, headroom, source=str(bench_path))
    table = new_table(f"{result.model}: measured levels ({bench_path})", "conc", "req/s", "p99 ms",
                      "errors", "p99 <= target")
    for level in report["levels"]:
        if level.get("model") != result.model:
            continue
        p99, errs = level["latency_ms"]["p99"], level["errors"]
        meets = "[green]yes[/]" if errs == 0 and p99 <= p99_ms else "no"
        chosen = " <- per-replica target" if level["concurrency"] == result.concurrency else ""
        table.add_row(str(level["concurrency"]), f"{level['throughput_rps']:g}", f"{p99:g}",
                      str(errs), meets + chosen)
    console.print(table)
    for line in result.arithmetic():
        console.print(line, highlight=False, soft_wrap=True)
    write_plan(result, out)
    console.print(f"plan written to {out}: {result.replicas} replicas at concurrency {result.concurrency} "
                  f"(`tritonforge deploy kserve REPO --plan {out} ...`)", highlight=False, soft_wrap=True)


@deploy_app.command("kserve")
@friendly
def kserve_manifests(
    repo: Annotated[Path, typer.Argument(help="The model repository (as pushed), e.g. model_repo.")],
    storage_uri: Annotated[str, typer.Option(
        help="Where `tritonforge push` put it: s3://BUCKET/PREFIX.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the YAML files.")] = Path("kserve"),
    name: Annotated[str, typer.Option(help="InferenceService name (a DNS-1035 label).")] = "tritonforge",
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    gpu: Annotated[int | None, typer.Option(
        help="GPUs per replica (default: 1 when the repository was exported for a GPU, else 0).")] = None,
    cpu: Annotated[str, typer.Option(help="CPU per replica, a Kubernetes quantity.")] = "2",
    memory: Annotated[str, typer.Option(help="Memory per replica, a Kubernetes quantity.")] = "4Gi",
    min_replicas: Annotated[int | None, typer.Option(help="Fewest replicas (0: scale to zero). Default 1.")
                            ] = None,
    max_replicas: Annotated[int | None, typer.Option(
        help="Most replicas (default: the plan's replicas, else --min-replicas).")] = None,
    target_concurrency: Annotated[int | None, typer.Option(
        help="Requests in flight per replica before KServe adds one (or --plan).")] = None,
    plan_path: Annotated[Path | None, typer.Option(
        "--plan", help="PLAN.json from `tritonforge plan`: concurrency target and replicas.")] = None,
    image: Annotated[str, typer.Option(
        help="Registry path of the image docker/Dockerfile builds, without tag.")] = "tritonforge-triton",
    image_tag: Annotated[str | None, typer.Option(
        help="NGC release YY.MM of that image (pins the runtime; default 24.10).")] = None,
    restrict_admin_api: Annotated[bool, typer.Option(
        help="Model control, shared memory, statistics, trace and logging only with the "
             "triton-admin-key header, key from a Secret (as docker-compose.yml).")] = True,
    admin_key_secret: Annotated[str, typer.Option(
        help="Secret holding the admin key (key 'admin-key').")] = "tritonforge-triton-admin",
    storage_secret: Annotated[str, typer.Option(
        help="Secret holding the storage credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).")
                              ] = "tritonforge-storage",
    s3_endpoint: Annotated[str | None, typer.Option(
        help="host[:port] of an S3-compatible store (MinIO, GCS); default AWS S3.")] = None,
    s3_use_https: Annotated[bool, typer.Option(help="Reach the store over HTTPS.")] = True,
    s3_region: Annotated[str | None, typer.Option(help="The bucket's region.")] = None,
):
    """KServe manifests for the repository in object storage: an InferenceService (Triton,
    storageUri, resources, readiness, concurrency autoscaling), a ServingRuntime where the
    cluster's default Triton runtime does not fit, and a ServiceAccount that references the
    storage Secret (no credentials are written). Apply with `kubectl apply -f DIR`."""
    from tritonforge.scale.kserve import KServeOptions, deploy_kserve, secret_commands, summary_rows
    from tritonforge.scale.plan import read_plan

    options = KServeOptions(
        storage_uri=storage_uri, name=name, namespace=namespace, gpu=gpu, cpu=cpu, memory=memory,
        min_replicas=min_replicas, max_replicas=max_replicas, target_concurrency=target_concurrency,
        image=image, image_tag=image_tag, restrict_admin_api=restrict_admin_api,
        admin_key_secret=admin_key_secret, storage_secret=storage_secret, s3_endpoint=s3_endpoint,
        s3_use_https=s3_use_https, s3_region=s3_region,
        plan=read_plan(plan_path) if plan_path else None)
    deployment, paths = deploy_kserve(repo, options, out)
    table = new_table(f"KServe deployment {namespace}/{name}", "what", "value")
    for key, value in summary_rows(deployment, options):
        table.add_row(key, value)
    console.print(table)
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
    console.print("before `kubectl apply -f " + str(out) + "`, create the Secrets it references "
                  "(values typed by you, never written by tritonforge):", highlight=False)
    for command in secret_commands(options):
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"tritonforge {version('tritonforge')}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    _version: Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                           help="Print the version and exit.")] = False,
) -> None:
    """Export research models to verified ONNX and serve them with Triton."""


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
