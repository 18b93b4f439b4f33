"""Commands against a Triton server: `serve` (a real one here), `query`, `bench`, `tune` and `soak`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tritonforge.cli.base import (
    EXIT_PARITY,
    SHAPE_COMMAND,
    app,
    fail,
    friendly,
    model_shape,
    parse_named_inputs,
    shape_parameters,
    tokenizer_repo,
)
from tritonforge.command_options import (
    DEFAULT_REPO,
    RepoOption,
    UrlOption,
    check_host,
    check_port,
    remote_options,
    require_at_least,
    require_positive,
)
from tritonforge.console import Stages, console, errors, new_table, progress_bar
from tritonforge.errors import TritonForgeError
from tritonforge.serving.endpoint import Endpoint  # light: the commands' `endpoint` parameter


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
    """Serve the repository with a real Triton on this machine (no Docker).

    Runs until Ctrl-C or SIGTERM; it picks up new exports while serving, and is restarted if it
    dies."""
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


@app.command(context_settings=SHAPE_COMMAND)
@friendly
@remote_options("url")
@shape_parameters
def query(
    name: Annotated[str, typer.Argument(help="Model name on the server, e.g. bert_fp32_text.")],
    url: UrlOption = "127.0.0.1:8001",
    text: Annotated[list[str] | None, typer.Option(
        "--text", help="A text to send (repeat for several; they go as one batch).")] = None,
    image: Annotated[list[Path] | None, typer.Option(
        "--image", help="An image file to send (repeat for several; they go as one batch).")] = None,
    npy: Annotated[list[str] | None, typer.Option(
        "--npy", help="A .npy array: FILE for a model with one input, else NAME=FILE per input.")] = None,
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", help="NAME=VALUE: a raw input by name, for models that take several (e.g. "
                        "--image cat.png --input LABELS=cat --input LABELS=dog): a file, or the text "
                        "itself for text inputs; repeat for several values.")] = None,
    input_json: Annotated[Path | None, typer.Option(
        help="JSON object {input name: nested list} sent as the request.")] = None,
    stream: Annotated[list[str] | None, typer.Option(
        "--stream", help="A streaming model: a .npy recording [frames, ...] (or the model's own format, "
                         "such as a spike camera's .dat), sent frame by frame as one sequence; the "
                         "output of every frame is printed. A model with several per-frame inputs "
                         "(left and right): NAME=FILE for each.")] = None,
    repo: Annotated[Path | None, typer.Option(
        "--repo", help="Repository with the model's export, to encode raw input for a tensor model "
                       "(its tokenizer).")] = None,
    min_score: Annotated[float, typer.Option(help="Detections: the lowest score printed.")] = 0.5,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write every output (kind, shape, dtype, values) and the summary here.")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Write the outputs that have a file form here: images (super-resolution) as PNG, "
             "depth maps as a colour PNG and .npy, detections drawn on each --image; several "
             "files get _<output>_<index> added to the name.")] = None,
    endpoint: Endpoint | None = None,  # from --url and the TLS/header options (remote_options)
    shape: dict[str, int] | None = None,  # the shape options (shape_parameters)
    shape_arguments: list[str] | None = None,
):
    """Send one request and print each output by its kind.

    Over gRPC; each output in its natural form (a stream: one request per frame, each frame's
    output a row)."""
    from tritonforge.outputs import summaries, summary_json
    from tritonforge.serving.client import (
        connect,
        infer,
        json_inputs,
        model_info,
        new_sequence_ids,
        outputs_json,
        query_context,
        query_request,
        save_query_outputs,
        stream_files,
        stream_sequences,
    )

    given = {option: values for option, values in (("text", text), ("image", image), ("npy", npy)) if values}
    named = parse_named_inputs(inputs or [])
    if len(given) > 1 or bool(given or named) + bool(input_json) + bool(stream) != 1:
        raise TritonForgeError("give exactly one kind of input: --text, --image, --npy (each with "
                               "--input NAME=VALUE for a model's other raw inputs), --input, "
                               "--input-json or --stream")
    client = connect(endpoint)
    info = model_info(client, name, endpoint)
    if shape_arguments:
        shape = model_shape(shape or {}, shape_arguments, info.modality(tokenizer_repo(repo)))
    if info.sequence and not stream:
        raise TritonForgeError(f"model {name!r} is a streaming model: send a recording with --stream "
                               "FILE.npy ([frames, ...]), one frame per request")
    if stream:
        frames = stream_files(info, stream)
        (sequence,) = new_sequence_ids(1)
        result = stream_sequences(client, name, {sequence: frames}, endpoint)
        outputs = result.outputs[sequence]
        count = len(next(iter(frames.values())))
        arrays, rows = {}, [f"frame {t + 1}/{count}" for t in range(count)]
    elif input_json:
        arrays, rows = json_inputs(info, input_json), []
    else:
        option, values = given.popitem() if given else (None, [])
        arrays, rows = query_request(info, option, [str(v) for v in values], tokenizer_repo(repo),
                                     shape, named)
    if not stream:
        outputs = infer(client, name, arrays, url=endpoint)
    raw = [path.read_bytes() for path in image] if save and image else []  # detections are drawn on them
    context = query_context(info, min_score, arrays, raw, rows)
    shown = summaries(info.output_kinds, outputs, context)
    summary = summary_json(shown, outputs)
    print_query(info, shown, summary)
    if save:
        for written in save_query_outputs(info, outputs, save, context):
            console.print(written.message)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(outputs_json(info, outputs, summary, context), indent=2) + "\n")
        console.print(f"outputs written to {json_path}")


def print_query(info, shown, summary) -> None:
    """The table of outputs, then what each output's kind shows: its tables, then its lines."""
    kinds = info.output_kinds
    shapes = new_table(f"{info.name} (versions {', '.join(info.versions)}): outputs",
                       "output", "kind", "datatype", "shape")
    for output in info.outputs:
        shapes.add_row(output.name, kinds.get(output.name, ""), output.datatype,
                       str(summary["shapes"].get(output.name)))
    console.print(shapes)
    for table in (table for item in shown for table in item.tables):
        printed = new_table(table.title, *table.columns)
        for row in table.rows:
            printed.add_row(*row)
        console.print(printed)
    for line in (line for item in shown for line in item.lines):
        console.print(line, highlight=False)


@app.command(context_settings=SHAPE_COMMAND)
@friendly
@remote_options("url")
@shape_parameters
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
    perf_analyzer: Annotated[bool, typer.Option(
        "--perf-analyzer", help="Also measure each level with Triton's perf_analyzer (same inputs, "
                                "about as many requests) and compare (`make perf-analyzer` installs it).")
                             ] = False,
    compare: Annotated[str | None, typer.Option(
        help="Comma-separated models with the same inputs (e.g. the encoder exported for other "
             "targets: bert_bf16_text,bert_w8a8_text), benched in the same run on the same "
             "payloads; ratios against NAME.")] = None,
    endpoint: Endpoint | None = None,  # from --url and the TLS/header options (remote_options)
    shape: dict[str, int] | None = None,  # the shape options (shape_parameters)
    shape_arguments: list[str] | None = None,
):
    """Throughput and latency percentiles under gRPC load.

    Asynchronous gRPC load: throughput and p50/p95/p99 per concurrency level, with and without
    dynamic batching (the latter when the server has <name>_nobatch: `serve --nobatch-twins`)."""
    from tritonforge.serving.bench import (
        bench_report,
        compare_models,
        parse_levels,
        plot_latency_throughput,
        run_bench,
        run_stream_bench,
    )
    from tritonforge.serving.client import bench_payloads, connect, model_info, model_ready, stream_samples
    from tritonforge.serving.local import NOBATCH_SUFFIX

    levels = parse_levels(concurrency)
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
    if shape_arguments:
        shape = model_shape(shape or {}, shape_arguments, info.modality(tokenizer_repo(repo)))
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
            results = run_stream_bench(endpoint, name, sequences, levels,
                                       requests, stages)
            stages.finish()
    else:
        kind, payloads = bench_payloads(info, tokenizer_repo(repo), shape)
        models = [(name, "dynamic")]
        if model_ready(client, name + NOBATCH_SUFFIX, endpoint):
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


@app.command()
@friendly
def tune(
    name: Annotated[str, typer.Argument(help="A model of the repository, e.g. bert_fp32_text (an "
                                             "ensemble: its ONNX steps are tuned) or bert_fp32.")],
    repo: RepoOption = DEFAULT_REPO,
    p99_ms: Annotated[float, typer.Option(help="The p99 latency each request must stay under.")] = 200.0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight while each setting is measured.")] = 16,
    requests: Annotated[int, typer.Option(help="Requests per setting (real payloads, as bench).")] = 300,
    max_batch: Annotated[str, typer.Option(help="Max batch sizes to try (comma-separated).")] = "8,32",
    queue_delay_us: Annotated[str, typer.Option(help="Batcher queue delays to try, in microseconds.")
                              ] = "0,500,2000",
    instances: Annotated[str, typer.Option(help="Instance counts to try.")] = "1,2",
    threads: Annotated[str | None, typer.Option(
        help="Runtime threads per instance to try (default: 1 and each power of two up to the "
             "cores); combinations using more threads than cores are left out.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Measure and report; write nothing.")
                       ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write every trial here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG plot of throughput against p99, per setting.")
                    ] = None,
):
    """Choose a model's batcher, instances and threads by measurement on a local Triton.

    Today's config and each setting tried are served one after the other by a local Triton on a
    copy of the model, under the same real load; the fastest under --p99-ms becomes the model's
    new config (written atomically; a running `serve` reloads it), unless --dry-run."""
    import os

    from tritonforge.serving.tune import candidate_settings, default_threads, parse_values, plot_trials
    from tritonforge.serving.tune import tune as run_tune

    cores = os.cpu_count() or 1
    settings = candidate_settings(parse_values(max_batch, "--max-batch", 1),
                                  parse_values(queue_delay_us, "--queue-delay-us", 0),
                                  parse_values(instances, "--instances", 1),
                                  parse_values(threads or default_threads(), "--threads", 1), cores)
    with progress_bar() as progress:  # run_tune checks --p99-ms, --concurrency and --requests first
        stages = Stages(progress)
        report = run_tune(repo, name, settings, p99_ms, concurrency, requests, dry_run=dry_run, stage=stages)
        stages.finish()
    table = new_table(f"tune {name}: concurrency {concurrency}, {requests} real requests per setting, "
                      f"p99 target {p99_ms:g} ms ({', '.join(report.models)} tuned)",
                      "setting", "req/s", "x today", "p50", "p99", "err", "")
    base = report.current.result.throughput
    first_today = next(t for t in report.trials if t.current)
    for trial in sorted(report.trials, key=lambda t: -t.result.throughput):
        result = trial.result
        marks = [f"today, {'first' if trial is first_today else 'last'} run"] if trial.current else []
        if trial is report.chosen:
            marks.append("chosen")
        elif not trial.meets(p99_ms):
            marks.append("over p99" if not result.errors else "errors")
        mark = "; ".join(marks)
        table.add_row(trial.setting.label(), f"{result.throughput:.1f}",
                      f"{result.throughput / base:.2f}" if base else "-", f"{result.percentile(50):.1f}",
                      f"{result.percentile(99):.1f}", str(result.errors), mark)
    console.print(table)
    chosen = report.chosen
    if report.written:
        console.print(f"wrote {chosen.setting.label()} into {', '.join(report.models)}'s config in {repo} "
                      f"({report.gain:.2f}x today's throughput at p99 {chosen.result.percentile(99):.0f} ms)")
    elif chosen.current:
        console.print("today's config is the fastest under the target: nothing was written")
    else:
        console.print(f"--dry-run: {chosen.setting.label()} would give {report.gain:.2f}x; nothing was "
                      "written")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"trials written to {json_path}")
    if plot:
        plot_trials(report, plot)
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
        help="Outputs judged by cosine (embeddings, class scores, float tensors) are right when "
             "their cosine with ONNX Runtime's is at least this.")] = 0.9999,
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
    run here on the export, each output by its kind (detections by matched IoU and labels, images
    by PSNR, class scores by top-1 and cosine, embeddings and float tensors by cosine, integer
    tensors by equality). Exits 1 when any request failed or answered wrong."""
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
                        f"{report.seconds:.1f} s; right = every output agrees with ONNX Runtime "
                        f"(cosine >= {min_cosine} where judged by cosine)")
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
    agreement = new_table("agreement with ONNX Runtime, worst over the answers", "output", "kind",
                          "metric", "worst", "bar", "missed")
    for output, row in report.rows()[-1]["agreement"].items():
        for metric, seen in row["metrics"].items():
            agreement.add_row(output, row["kind"], metric, f"{seen['worst']:.6g}",
                              f"{'>=' if seen['higher_is_better'] else '<='} {seen['tolerance']:g}",
                              f"[red]{seen['failed']}[/]" if seen["failed"] else "0")
    console.print(agreement)
    for problem in report.first_problems():
        errors.print(f"{problem.model} at {problem.start_s:.2f} s: {problem.status}: {problem.describe()}",
                     markup=False, highlight=False)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_path}")
    if plot:
        console.print(f"plot written to {plot_soak(report, plot)}")
    if report.failed:
        raise typer.Exit(EXIT_PARITY)
