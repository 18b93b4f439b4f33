"""`tritonforge emt ...` (also `tritonforge sr ...`): EMT neural video delivery.

clip -> meta-train -> tune (chunk k published as version k) -> serve -> play; `compare` measures
EMT against bicubic and against training from scratch, per architecture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from tritonforge.command_options import DEFAULT_REPO, RepoOption, UrlOption, remote_options
from tritonforge.console import console, new_table, progress_bar
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr.delivery import MetaRecipe, TuneRecipe
from tritonforge.export.sr.model import ARCHS
from tritonforge.serving.endpoint import Endpoint

META, TUNE = MetaRecipe(), TuneRecipe()  # the defaults of the options below

VideoArgument = Annotated[Path, typer.Argument(
    help="A video file (.mp4, ...) or a folder of PNG/JPEG frames; `emt clip` writes a demo clip.")]
FpsOption = Annotated[float | None, typer.Option(
    help="Frame rate of a folder of frames (default 30), or an override of the file's own.")]
ChunkSecondsOption = Annotated[float, typer.Option(help="Chunk length in seconds (one model per chunk).")]
ArchOption = Annotated[str, typer.Option(help="Network: espcn, srcnn, fsrcnn or edsr.")]
ScaleOption = Annotated[int, typer.Option(help="Upscaling factor: 2, 3 or 4.")]
BlocksOption = Annotated[int | None, typer.Option(help="EDSR only: residual blocks (EDSR-1 is 1).")]
InitOption = Annotated[str, typer.Option(
    help="Starting weights: bicubic (random weights with a bicubic upscaler set in: training starts "
         "at bicubic quality) or random (PyTorch's initialisation, the reference's).")]


def emt_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True,
                           help="EMT neural video delivery: SR models tuned per chunk, served as versions.")

    @commands.command("clip")
    def clip_command(
        out: Annotated[Path, typer.Argument(help="Where to write it: a .mp4, or a folder for PNG frames.")],
        shots: Annotated[int, typer.Option(help="Shots, one photograph each (one per chunk).")] = 4,
        seconds: Annotated[float, typer.Option(help="Seconds per shot.")] = 5.0,
        fps: Annotated[float, typer.Option(help="Frames per second.")] = 30.0,
        seed: Annotated[int, typer.Option(help="Seed of the camera moves and photo order.")] = 0,
    ):
        """Write the demo clip: pans, zooms and cuts across the bundled photographs (384x216)."""
        from tritonforge.export.sr.video import demo_clip

        video = demo_clip(fps=fps, shot_seconds=seconds, shots=shots, seed=seed)
        path = video.write(out)
        console.print(f"{len(video.frames)} frames ({video.seconds:.1f} s at {fps:g} fps) written to {path}")

    @commands.command("meta-train")
    def meta_train_command(
        video: VideoArgument,
        arch: ArchOption = "espcn",
        scale: ScaleOption = 2,
        blocks: BlocksOption = None,
        init: InitOption = META.init,
        steps: Annotated[int, typer.Option(help="Outer (meta) steps.")] = META.steps,
        outer_lr: Annotated[float, typer.Option(help="Adam learning rate of the outer step.")
                            ] = META.outer_lr,
        schedule: Annotated[str, typer.Option(help="Outer learning rate: constant (the reference's) or "
                                                   "cosine (decayed to 0 over the steps).")] = META.schedule,
        inner_steps: Annotated[int, typer.Option(help="Inner SGD steps per task.")] = META.inner_steps,
        inner_lr: Annotated[float, typer.Option(help="Inner SGD learning rate.")] = META.inner_lr,
        task_frames: Annotated[int, typer.Option(help="Frames per temporal task.")] = META.task_frames,
        tasks_per_step: Annotated[int, typer.Option(help="Tasks per outer step.")] = META.tasks_per_step,
        patch: Annotated[int, typer.Option(help="HR patch size (LR: patch / scale).")] = META.patch,
        batch: Annotated[int, typer.Option(help="Patches per task.")] = META.batch,
        chunk_seconds: ChunkSecondsOption = 5.0,
        fps: FpsOption = None,
        seed: Annotated[int, typer.Option(help="Seed of the weights and of the sampling.")] = META.seed,
        out: Annotated[Path, typer.Option(help="Where to write the meta-learned checkpoint.")
                       ] = Path("emt_meta.pt"),
    ):
        """First-order MAML over temporal tasks of the video (held-out frames never used): the
        starting point that `emt tune` adapts to each chunk."""
        from tritonforge.export.sr.delivery import read_chunks
        from tritonforge.export.sr.emt import meta_train
        from tritonforge.export.sr.model import architecture, check_architecture, save_checkpoint

        check_architecture(arch, scale, blocks)
        recipe = MetaRecipe(steps, outer_lr, inner_steps, inner_lr, task_frames, tasks_per_step, patch, batch,
                            init, seed, schedule)
        chunks, note, clip = read_chunks(video, scale, chunk_seconds, fps)
        if note:
            console.print(f"[yellow]{note}[/yellow]")
        with progress_bar() as bar:
            task = bar.add_task(f"meta-training {arch} x{scale} on {len(chunks)} chunks", total=steps)
            meta = meta_train(arch, chunks, scale, blocks=blocks, **dataclasses.asdict(recipe),
                              progress=lambda step: bar.update(task, completed=step))
        name, blocks_of = architecture(meta)
        path = save_checkpoint(meta, out, name, scale, blocks_of, video=clip.source,
                               chunk_seconds=chunk_seconds, meta_training=dataclasses.asdict(recipe))
        console.print(f"meta-learned {arch} x{scale} written to {path}; next: "
                      f"tritonforge emt tune {video} --name NAME --meta {path}")

    @commands.command("tune")
    def tune_command(
        ctx: typer.Context,
        video: VideoArgument,
        name: Annotated[str, typer.Option(help="Model name: chunk k becomes its version k.")],
        meta: Annotated[Path, typer.Option(help="The meta-learned checkpoint (`emt meta-train`).")],
        repo: RepoOption = DEFAULT_REPO,
        bits: Annotated[int, typer.Option(help="Served precision: 32, 16 or 8.")] = 32,
        first_fraction: Annotated[float, typer.Option(help="Chunk 1: share of conv weights tuned.")
                                  ] = TUNE.first_fraction,
        later_fraction: Annotated[float, typer.Option(help="Chunks 2+: share of conv weights tuned.")
                                  ] = TUNE.later_fraction,
        full_steps: Annotated[int, typer.Option(help="Steps of full fine-tuning that choose the mask.")
                              ] = TUNE.full_steps,
        masked_steps: Annotated[int, typer.Option(help="Steps of masked fine-tuning.")] = TUNE.masked_steps,
        lr: Annotated[float, typer.Option(help="Adam learning rate (the paper: 1e-4).")] = TUNE.lr,
        patch: Annotated[int, typer.Option(help="HR patch size.")] = TUNE.patch,
        batch: Annotated[int, typer.Option(help="Patches per step.")] = TUNE.batch,
        pool: Annotated[int, typer.Option(help="Hard patches sampled per chunk.")] = TUNE.pool,
        hard_fraction: Annotated[float, typer.Option(help="Sample among the worst share of windows.")
                                 ] = TUNE.hard_fraction,
        chunk_seconds: ChunkSecondsOption = TUNE.chunk_seconds,
        fps: FpsOption = None,
        seed: Annotated[int, typer.Option(help="Seed of the patch sampling.")] = TUNE.seed,
        force: Annotated[bool, typer.Option(help="Replace the versions of an existing --name.")] = False,
    ):
        """Tune each chunk from the previous one's model (chunk 1 from --meta), export and verify
        it, and publish it as version k of --name (every version served)."""
        from tritonforge.export.sr.delivery import publish_video
        from tritonforge.export.sr.model import load_checkpoint

        start, recorded = load_checkpoint(meta)
        recipe = TuneRecipe(first_fraction, later_fraction, full_steps, masked_steps, lr, patch, batch, pool,
                            hard_fraction, seed, chunk_seconds)
        table = new_table(f"{name}: one version per chunk", "version", "time (s)", "mask", "PSNR before",
                          "PSNR after", "full bytes", "delta bytes")
        with progress_bar() as bar:
            task = bar.add_task("tuning", total=None)

            def done(result) -> None:
                chunk = result.manifest["emt"]
                share = chunk["delta_bytes"] / chunk["full_bytes"]
                table.add_row(str(result.version), f"{chunk['start_s']:.1f}-{chunk['end_s']:.1f}",
                              f"{chunk['mask_fraction']:.0%}", f"{chunk['psnr_before']:.2f} dB",
                              f"{chunk['psnr_after']:.2f} dB", f"{chunk['full_bytes']:,}",
                              f"{chunk['delta_bytes']:,} ({share:.1%})")

            results = publish_video(video, name, repo, start, int(recorded["scale"]), recipe, bits, force,
                                    fps, stage=lambda message: bar.update(task, description=message),
                                    done=done, export_model=ctx.obj.export_model)
        console.print(table)
        console.print(f"{len(results)} versions of {name} in {repo}, verified against PyTorch; serve them "
                      f"with `tritonforge serve --repo {repo}`, then "
                      f"`tritonforge emt play {video} --name {name}`")

    @commands.command("play")
    @remote_options("url")
    def play_command(
        video: VideoArgument,
        name: Annotated[str, typer.Option(help="The model `emt tune` published.")],
        url: UrlOption = "127.0.0.1:8001",
        repo: Annotated[Path, typer.Option(help="The repository with its versions (for the chunks' "
                                                "manifests and the meta-learned model).")] = DEFAULT_REPO,
        out: Annotated[Path | None, typer.Option(help="Write the SR video here (.mp4) or PNG frames "
                                                      "into this folder.")] = None,
        plot: Annotated[Path | None, typer.Option(help="PNG of PSNR and bytes per chunk (default: "
                                                       "<name>_play.png).")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the per-chunk figures here.")
                             ] = None,
        fps: FpsOption = None,
        endpoint: Endpoint | None = None,
    ):
        """Upscale each chunk through Triton with that chunk's version and report PSNR per chunk
        against HR, bicubic upscaling and the meta-learned model untuned."""
        from tritonforge.export.sr.delivery import play_video, plot_played

        with progress_bar() as bar:
            task = bar.add_task(f"playing through {name}", total=None)
            played = play_video(video, name, endpoint, repo, out, fps,
                                progress=lambda done, total: bar.update(task, completed=done, total=total))
        table = new_table(f"{name}: PSNR vs HR per chunk (dB)", "chunk", "time (s)", "version", "EMT",
                          "EMT held-out", "bicubic", "meta, untuned", "delta / full bytes")
        for p in played:
            table.add_row(str(p.index), f"{p.start_s:.1f}-{p.end_s:.1f}", str(p.version), f"{p.psnr_db:.2f}",
                          f"{p.heldout_psnr_db:.2f}", f"{p.bicubic_db:.2f}",
                          "-" if p.meta_db is None else f"{p.meta_db:.2f}",
                          f"{p.delta_bytes:,} / {p.full_bytes:,}")
        console.print(table)
        path = plot_played(played, plot or Path(f"{name}_play.png"), f"{name} on {video.name}")
        console.print(f"plot written to {path}" + (f"; SR frames written to {out}" if out else ""))
        if json_path:
            json_path.write_text(json.dumps([dataclasses.asdict(p) for p in played], indent=2) + "\n")

    @commands.command("compare")
    def compare_command(
        video: VideoArgument,
        archs: Annotated[str, typer.Option(help="Networks, comma-separated; edsrN is EDSR with N blocks.")
                         ] = "espcn,srcnn,fsrcnn,edsr1",
        scale: ScaleOption = 2,
        meta_steps: Annotated[int, typer.Option(help="Meta-training steps per network.")] = META.steps,
        outer_lr: Annotated[float, typer.Option(help="Meta-training's outer Adam learning rate.")
                            ] = META.outer_lr,
        full_steps: Annotated[int, typer.Option(help="EMT: full fine-tuning steps.")] = TUNE.full_steps,
        masked_steps: Annotated[int, typer.Option(help="EMT: masked fine-tuning steps.")] = TUNE.masked_steps,
        lr: Annotated[float, typer.Option(help="Adam learning rate of tuning and of scratch.")] = TUNE.lr,
        scratch_factor: Annotated[int, typer.Option(help="Scratch trains this many times EMT's steps.")] = 5,
        chunks: Annotated[int | None, typer.Option(help="Only the first N chunks.")] = None,
        patch: Annotated[int, typer.Option(help="HR patch size (all training).")] = TUNE.patch,
        batch: Annotated[int, typer.Option(help="Patches per step (per task, meta).")] = TUNE.batch,
        task_frames: Annotated[int, typer.Option(help="Frames per meta-training task.")] = META.task_frames,
        quality: Annotated[bool, typer.Option(help="Meta-train, tune and compare PSNR (--no-quality: "
                                                   "the speed table only).")] = True,
        speed: Annotated[bool, typer.Option(help="Also time ONNX Runtime (FP32 and INT8) against "
                                                 "PyTorch on one 640x360 LR frame.")] = True,
        chunk_seconds: ChunkSecondsOption = TUNE.chunk_seconds,
        fps: FpsOption = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures here (after each "
                                                                      "network).")] = None,
        plot: Annotated[Path, typer.Option(help="PNG of PSNR per chunk per network.")
                        ] = Path("emt_compare.png"),
    ):
        """EMT against bicubic, the meta-learned model untuned and training from scratch (5x the
        steps), per chunk and network, on held-out frames; ONNX Runtime (FP32, INT8) vs PyTorch
        speed."""
        from tritonforge.export.sr.compare import compare_arch, measure_speed, plot_comparison
        from tritonforge.export.sr.delivery import read_chunks

        networks = parse_archs(archs)
        if not (quality or speed):
            raise TritonForgeError("--no-quality and --no-speed leave nothing to compare: drop one of them")
        counts = (("--meta-steps", meta_steps), ("--scratch-factor", scratch_factor),
                  ("--chunks", chunks or 1))
        for option, value in counts:
            if value < 1:
                raise TritonForgeError(f"{option} {value} must be at least 1")
        clips, note, _clip = read_chunks(video, scale, chunk_seconds, fps)
        if note:
            console.print(f"[yellow]{note}[/yellow]")
        clips = clips[:chunks] if chunks else clips
        meta_recipe = dataclasses.replace(META, steps=meta_steps, outer_lr=outer_lr, task_frames=task_frames,
                                          patch=patch, batch=batch)
        recipe = dataclasses.replace(TUNE, full_steps=full_steps, masked_steps=masked_steps, lr=lr,
                                     patch=patch, batch=batch, chunk_seconds=chunk_seconds)
        rows, speeds = [], []
        with progress_bar() as bar:
            task = bar.add_task("comparing", total=len(networks))
            for arch, blocks in networks:
                if quality:
                    rows += compare_arch(clips, arch, blocks, scale, meta_recipe, recipe, scratch_factor,
                                         stage=lambda message: bar.update(task, description=message))
                if speed:
                    bar.update(task, description=f"{arch}: timing one 640x360 frame")
                    speeds.append(measure_speed(arch, blocks, scale))
                bar.advance(task)
                if json_path:
                    json_path.write_text(json.dumps({
                        "video": str(video), "scale": scale, "meta": dataclasses.asdict(meta_recipe),
                        "tuning": dataclasses.asdict(recipe), "scratch_factor": scratch_factor,
                        "chunks": [dataclasses.asdict(r) for r in rows],
                        "speed": [{**dataclasses.asdict(s), "speedup": s.speedup,
                                   "int8_speedup": s.int8_speedup} for s in speeds]},
                        indent=2) + "\n")
        print_comparison(rows, speeds)
        if rows:
            console.print(f"plot written to {plot_comparison(rows, plot)}")

    return commands


def print_comparison(rows, speeds) -> None:
    """The held-out PSNR table, with EMT's margins over bicubic (bar: +1 dB) and scratch (>= 0)."""
    if rows:
        table = new_table("held-out PSNR per chunk (dB)", "network", "chunk", "bicubic", "meta, untuned",
                          "EMT", "scratch", "EMT - bicubic", "EMT - scratch", "delta / full bytes")
        for r in rows:
            over_bicubic, over_scratch = r.emt_db - r.bicubic_db, r.emt_db - r.scratch_db
            table.add_row(r.arch, str(r.chunk), f"{r.bicubic_db:.2f}", f"{r.meta_db:.2f}", f"{r.emt_db:.2f}",
                          f"{r.scratch_db:.2f} ({r.scratch_steps} steps)",
                          f"[{'green' if over_bicubic >= 1 else 'red'}]{over_bicubic:+.2f}[/]",
                          f"[{'green' if over_scratch >= 0 else 'red'}]{over_scratch:+.2f}[/]",
                          f"{r.delta_bytes:,} / {r.full_bytes:,}")
        console.print(table)
    if speeds:
        timing = new_table("one LR frame, 2 threads, median of interleaved runs", "network", "frame",
                           "PyTorch eager ms", "ONNX Runtime FP32 ms", "ONNX Runtime INT8 ms",
                           "FP32 vs PyTorch", "INT8 vs FP32")
        for s in speeds:
            timing.add_row(s.arch, s.frame, f"{s.pytorch_ms:.1f}", f"{s.onnxruntime_ms:.1f}",
                           f"{s.int8_ms:.1f}", f"{s.speedup:.2f}x", f"{s.int8_speedup:.2f}x")
        console.print(timing)


def parse_archs(text: str) -> list[tuple[str, int | None]]:
    """"espcn,edsr1" -> [("espcn", None), ("edsr", 1)]: EDSR takes its block count as a suffix."""
    archs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        base = item.rstrip("0123456789")
        blocks = int(item[len(base):]) if item != base else None
        if base not in ARCHS or (blocks is not None and base != "edsr"):
            raise TritonForgeError(f"--archs: {item!r} is not espcn, srcnn, fsrcnn or edsrN (EDSR with "
                                   "N blocks, e.g. edsr1)")
        archs.append((base, blocks))
    if not archs:
        raise TritonForgeError("--archs is empty: name at least one, e.g. espcn")
    return archs
