"""Commands on the exported models in a repository: `verify` and `ls`, and on a model's versions:
`versions`, `prune` and `rollback`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tritonforge.cli.base import (
    EXIT_PARITY,
    SHAPE_COMMAND,
    app,
    friendly,
    model_shape,
    shape_parameters,
)
from tritonforge.command_options import (
    DEFAULT_REPO,
    RepoOption,
    remote_options,
    require_at_least,
)
from tritonforge.console import Stages, console, errors, new_table, progress_bar
from tritonforge.errors import TritonForgeError
from tritonforge.serving.endpoint import Endpoint  # light: the commands' `endpoint` parameter


@app.command(context_settings=SHAPE_COMMAND)
@friendly
@remote_options("triton")
@shape_parameters
def verify(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    version: Annotated[int | None, typer.Option(help="Version. Default: the latest.")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size for parity and latency. Default: the family's (8 for most).")] = None,
    threads: Annotated[int, typer.Option(help="Threads for PyTorch and ONNX Runtime alike.")] = 2,
    iterations: Annotated[int | None, typer.Option(
        help="Timed runs per runtime. Default: the family's (10 for most).")] = None,
    samples: Annotated[int | None, typer.Option(
        help="Parity samples. Default: the family's (for most, the whole evaluation set).")] = None,
    precise: Annotated[bool, typer.Option(
        "--precise", help="The long, precise run: batch 8, the whole evaluation set, 30 timed runs "
                          "(options given still win).")] = False,
    provider: Annotated[str, typer.Option(help="cpu, cuda or tensorrt.")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    triton: Annotated[str | None, typer.Option(
        help="gRPC address of a Triton serving the model (e.g. 127.0.0.1:8001, grpcs://HOST:443): "
             "check its outputs too and time it beside PyTorch and ONNX Runtime.")] = None,
    endpoint: Endpoint | None = None,
    shape: dict[str, int] | None = None,  # the shape options (shape_parameters)
    shape_arguments: list[str] | None = None,
):
    """Parity and latency of an export against its PyTorch reference."""
    from tritonforge.pipeline.verify import verify_model
    from tritonforge.serving.repository import ModelRepository

    for option, value in (("--batch-size", batch_size), ("--threads", threads),
                          ("--iterations", iterations), ("--samples", samples)):
        require_at_least(option, value, 1)
    ModelRepository(repo).check_exported(name, version)
    if shape_arguments:  # options of the model's own modality
        from tritonforge.modalities import manifest_io

        manifest = ModelRepository(repo).read_manifest(name, version)
        shape = model_shape(shape or {}, shape_arguments, manifest_io(manifest).preprocessing)
    with progress_bar() as progress:
        stages = Stages(progress)
        report = verify_model(repo, name, version, batch_size, shape, threads, samples, iterations,
                              provider, stages, triton_url=endpoint, precise=precise)
        stages.finish()
    print_report(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        console.print(f"report written to {json_path}")
    if not report.parity.passed:
        errors.print("[bold red]parity FAILED[/]: the ONNX model does not match its reference")
        raise typer.Exit(EXIT_PARITY)
    if report.triton_parity is not None and not report.triton_parity.passed:
        errors.print(f"[bold red]parity FAILED[/]: Triton at {triton} does not match the reference")
        raise typer.Exit(EXIT_PARITY)
    if not report.gates_passed:
        failed = ", ".join(gate.metric for gate in report.gates if not gate.passed)
        errors.print(f"[bold red]gate FAILED[/]: the ONNX model fails its publish gates ({escape(failed)})")
        raise typer.Exit(EXIT_PARITY)


def print_report(report) -> None:
    from tritonforge.runtime import RUNTIME_NAMES

    parity = new_table(f"{report.model} v{report.version} ({report.precision}): parity vs PyTorch",
                       "runtime", "metric", "value", "tolerance", "result")
    served = [("triton", report.triton_parity)] if report.triton_parity is not None else []
    for runtime, result in [(report.runtime, report.parity), *served]:
        for check in result.checks:
            parity.add_row(runtime, *check_cells(check))
    console.print(parity)
    if report.gates:
        gates = new_table("publish gates", "metric", "value", "tolerance", "result")
        for gate in report.gates:
            gates.add_row(*check_cells(gate))
        console.print(gates)
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
    name = RUNTIME_NAMES[report.runtime]
    serving = ("" if report.serving_speedup is None else
               f", [bold]{report.serving_speedup:.2f}x[/] on the serving request")
    console.print(f"{name} is [bold]{report.speedup:.2f}x[/] PyTorch eager{serving} (p50; the FP32 model "
                  "for quantized exports)")
    if report.quality:
        console.print("quality on {samples} held-out inputs: ".format(**report.quality)
                      + ", ".join(f"{k} {v:.4f}" for k, v in report.quality.items() if k != "samples"))


def check_cells(check) -> tuple[str, str, str, str]:
    """A check as table cells: metric, value, bound, result."""
    bound = ">=" if check.higher_is_better else "<="
    return (check.metric, f"{check.value:.6g}", f"{bound} {check.tolerance:g}",
            "[green]pass[/]" if check.passed else "[red]FAIL[/]")


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


def _size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


@app.command("versions")
@friendly
@remote_options("url")
def list_versions(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    url: Annotated[str | None, typer.Option(
        help="gRPC address of a Triton serving the repository: also show which versions it reports "
             "ready (e.g. 127.0.0.1:8001).")] = None,
    endpoint: Endpoint | None = None,
):
    """A model's versions on disk, which of them are served, and what each holds."""
    from tritonforge.serving.versions import model_versions, server_versions

    found = model_versions(repo, name)
    ready = server_versions(endpoint, name, [row.version for row in found.rows]) if endpoint else None
    varying = found.varying_recipe()
    policy = found.policy + (f", rolled back (its newest export asked for {found.export_policy})"
                             if found.rolled_back else "")
    if found.companion_of:
        policy += f", following the export {found.companion_of}"
    table = new_table(f"{name} in {repo}: version policy {policy}", "version", "served",
                      *(["ready on server"] if ready is not None else []), "created", "precision", "target",
                      "recipe" if not varying else "recipe (" + ", ".join(varying) + ")", "parity", "size")
    for row in found.rows:
        if row.manifest is None:
            parity = f"[yellow]{escape(row.problem.split(':')[0])}: no manifest[/]"
        elif row.parity:
            verdict = "[green]pass[/]" if row.parity.get("passed") else "[red]FAIL[/]"
            parity = f"{row.parity.get('metric')} {row.parity.get('value', float('nan')):.3g} {verdict}"
        else:
            parity = "companion" if "companion_of" in row.manifest else ""
        recipe = ", ".join(f"{key}={row.recipe.get(key)}" for key in varying) if varying else "same"
        on_server = [] if ready is None else ["[green]ready[/]" if ready.get(row.version) else "no"]
        table.add_row(str(row.version), "[green]yes[/]" if row.served else "no", *on_server, row.created,
                      row.precision, row.target, escape(recipe), parity, _size(row.bytes))
    console.print(table)
    on_disk = {row.version for row in found.rows}
    if ready is not None:
        stale = [v for v, is_ready in sorted(ready.items()) if is_ready and v not in on_disk]
        served = [v for v, is_ready in sorted(ready.items()) if is_ready]
        console.print(f"{url} serves {name} version(s) {', '.join(map(str, served)) or 'none'}"
                      + (f" (no longer on disk: {', '.join(map(str, stale))})" if stale else ""),
                      highlight=False)
    if found.companions:
        console.print("companions (they follow its policy): " + ", ".join(
            f"{companion} ({policy})" for companion, policy in found.companions), highlight=False)
    console.print(f"{len(found.rows)} version(s), {_size(sum(row.bytes for row in found.rows))} on disk; "
                  f"served: {', '.join(map(str, found.served)) or 'none'}", highlight=False)


@app.command("prune")
@friendly
def prune_versions(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    keep: Annotated[int, typer.Option(help="How many of the newest versions to keep (at least 1).")],
    repo: RepoOption = DEFAULT_REPO,
    dry_run: Annotated[bool, typer.Option(help="Only say what would be removed.")] = False,
):
    """Delete a model's oldest versions beyond its newest K, never a served one."""
    from tritonforge.serving.versions import prune

    require_at_least("--keep", keep, 1)

    def removed(model: str, version: int, size: int) -> None:
        console.print(f"removed {model} version {version} ({_size(size)})", highlight=False)

    plan = prune(repo, name, keep, dry_run, None if dry_run else removed)
    for model, version, policy in plan.kept_served:
        console.print(f"kept {model} version {version}: its version policy ({policy}) serves it "
                      "(roll back to another version first to remove it)", highlight=False)
    if dry_run:
        for model, version, size in plan.remove:
            console.print(f"would remove {model} version {version} ({_size(size)})", highlight=False)
        console.print(f"dry run: would remove {len(plan.remove)} version folder(s), freeing "
                      f"{_size(plan.bytes)}; nothing was removed", highlight=False)
        return
    freed = sum(size for _model, _version, size in plan.removed)
    console.print(f"removed {len(plan.removed)} version folder(s), freed {_size(freed)}; {name} keeps "
                  f"version(s) {', '.join(map(str, plan.remaining))}", highlight=False)


@app.command("rollback")
@friendly
def rollback_version(
    name: Annotated[str, typer.Argument(help="Model name in the repository.")],
    repo: RepoOption = DEFAULT_REPO,
    to: Annotated[int | None, typer.Option(
        help="The version to serve. Default: the one before the newest version served now.")] = None,
    undo: Annotated[bool, typer.Option(
        help="Serve again as the newest export asked (the newest version, unless it was exported "
             "with another --version-policy).")] = False,
):
    """Serve an earlier version by changing the version policy; nothing is deleted."""
    from tritonforge.serving.versions import rollback, undo_rollback

    if undo and to is not None:
        raise TritonForgeError("--undo and --to contradict each other: give one of them")
    done = undo_rollback(repo, name) if undo else rollback(repo, name, to)
    before, after = (", ".join(map(str, v)) or "none" for v in (done.served_before, done.served_after))
    if not done.changed and not done.companions:
        console.print(f"{name} already serves version(s) {after} (version policy {done.after}): nothing "
                      "changed", highlight=False)
        return
    console.print(f"{name} now serves version(s) {after} (version policy {done.after}; was {before}, "
                  f"{done.before})", highlight=False)
    if done.companions:
        console.print(f"its companions follow: {', '.join(done.companions)}", highlight=False)
    if not undo:
        console.print(f"nothing was deleted: `tritonforge rollback {name} --undo` (or a new export) serves "
                      "the newest export's choice again", highlight=False)
