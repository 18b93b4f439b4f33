"""Commands for running the repository elsewhere: `push`, `plan` and `deploy kserve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tritonforge.cli.base import (
    app,
    friendly,
)
from tritonforge.console import console, errors, new_table, progress_bar


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
    """Upload the repository to S3-compatible object storage.

    For KServe or Triton's s3:// repositories: each model's version files first, config.pbtxt
    last; files already there with the same sha256 are skipped, so rerunning completes a stopped
    push; every object is checked afterwards. Credentials come from the environment or a profile
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
    """Replicas for a target load at a p99 bound, from a bench curve.

    From a measured bench curve: the highest measured concurrency with p99 within the bound (no errors), its
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
