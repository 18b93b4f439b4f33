"""`tritonforge spikedepth ...`: simulate a spike camera, make procedural stereo scenes, train
mono / stereo / UGDF networks, and evaluate them per distance band."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from tritonforge.errors import TritonForgeError

SeedOption = Annotated[int, typer.Option(help="Seed: the same seed gives the same result.")]
GainOption = Annotated[float, typer.Option(help="Accumulated per step at luminance 1.")]
ThresholdOption = Annotated[float, typer.Option(help="Firing threshold of the accumulator.")]
DarkOption = Annotated[float, typer.Option(help="Dark current per step.")]
NoiseOption = Annotated[float, typer.Option(help="Std of the per-step accumulation noise.")]


def spikedepth_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="Spike-camera depth: simulate, make scenes, train, "
                                                      "evaluate.")

    @commands.command("simulate")
    def simulate_command(
        source: Annotated[list[Path], typer.Argument(help="Images (one still scene, or the frames of a "
                                                          "video in order) or one video file.")],
        out: Annotated[Path, typer.Option(help="The .dat file to write.")] = Path("spikes.dat"),
        frames: Annotated[int, typer.Option(help="Spike frames per source image (a still image: the "
                                                 "whole recording).")] = 256,
        height: Annotated[int | None, typer.Option(help="Resize to this height (default: the source's; "
                                                        "height x width must be a multiple of 8).")] = None,
        width: Annotated[int | None, typer.Option(help="Resize to this width.")] = None,
        gain: GainOption = 0.5,
        threshold: ThresholdOption = 1.0,
        dark: DarkOption = 0.01,
        noise: NoiseOption = 0.02,
        seed: SeedOption = 0,
    ):
        """Record images or a video with a simulated spike camera into a SpikeCV `.dat` stream, and
        report how well the firing rate gives the luminance back (PSNR)."""
        from tritonforge.console import console
        from tritonforge.export.spikedepth.spikes import (
            Camera,
            psnr,
            read_dat,
            reconstruct,
            simulate,
            write_dat,
        )
        from tritonforge.export.spikedepth.video import read_luminance

        camera = Camera(gain=gain, threshold=threshold, dark=dark, noise=noise)
        luminance = read_luminance(source, height, width)
        steps = luminance.repeat(frames, axis=0)
        spikes = simulate(steps, camera, seed)
        write_dat(out, spikes)
        check = read_dat(out, *spikes.shape[1:])
        quality = psnr(luminance[-1], reconstruct(check[-frames:], camera))
        console.print(f"{len(spikes)} frames of {spikes.shape[1]} x {spikes.shape[2]} written to {out} "
                      f"({out.stat().st_size:,} bytes; firing rate {spikes.mean():.3f}); luminance rebuilt "
                      f"from the last {frames} frames' firing rate: PSNR {quality:.2f} dB")

    @commands.command("scenes")
    def scenes_command(
        out: Annotated[Path, typer.Option(help="Folder to write the scenes to.")] = Path("spike_scenes"),
        count: Annotated[int, typer.Option(help="Scenes to make.")] = 8,
        split: Annotated[str, typer.Option(help="train, test (held out) or target (adaptation).")] = "test",
        window: Annotated[int, typer.Option(help="Spike frames per camera.")] = 32,
        textures: Annotated[str, typer.Option(help="source (the training textures) or target (photographs "
                                                   "training never saw).")] = "source",
        gain: GainOption = 0.5,
        threshold: ThresholdOption = 1.0,
        dark: DarkOption = 0.01,
        noise: NoiseOption = 0.02,
        seed: SeedOption = 0,
    ):
        """Procedural stereo scenes with exact depth: per scene left.dat and right.dat (spike streams
        of the moving rig), depth.npy (metres, the left camera at the last frame), image.png and a
        depth PNG, plus rig.json (focal length, baseline)."""
        import numpy as np
        from PIL import Image

        from tritonforge.console import console, progress_bar
        from tritonforge.export.spikedepth.data import scene_set
        from tritonforge.export.spikedepth.scenes import Rig
        from tritonforge.export.spikedepth.spikes import Camera
        from tritonforge.outputs.images import depth_colours

        camera = Camera(gain=gain, threshold=threshold, dark=dark, noise=noise)
        with progress_bar() as bar:
            task = bar.add_task(f"rendering {count} scenes", total=count)
            scenes = scene_set(split, count, window, Rig(), camera, textures, seed,
                               progress=lambda: bar.advance(task))
        out.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            folder = out / f"scene_{index:04d}"
            folder.mkdir(exist_ok=True)
            (folder / "left.dat").write_bytes(scenes.left[index].tobytes())
            (folder / "right.dat").write_bytes(scenes.right[index].tobytes())
            np.save(folder / "depth.npy", scenes.depth[index])
            Image.fromarray((scenes.image[index] * 255).round().astype(np.uint8)).save(folder / "image.png")
            Image.fromarray(depth_colours(scenes.depth[index])).save(folder / "depth.png")
        (out / "rig.json").write_text(json.dumps({**scenes.rig.to_json(), "window": window, "split": split,
                                                  "textures": textures, "camera": camera.to_json(),
                                                  "seed": seed}, indent=2) + "\n")
        console.print(f"{count} scenes written to {out} (depth {scenes.depth.min():.2f}-"
                      f"{scenes.depth.max():.2f} m); query a served model with "
                      f"--input left={out}/scene_0000/left.dat --input right={out}/scene_0000/right.dat")

    @commands.command("train")
    def train_command(
        arch: Annotated[str, typer.Option(help="mono, stereo or ugdf (both, trained jointly and fused).")
                        ] = "ugdf",
        scenes: Annotated[int | None, typer.Option(help="Training scenes (default 2,000).")] = None,
        epochs: Annotated[int | None, typer.Option(help="Epochs over them (default 8).")] = None,
        window: Annotated[int, typer.Option(help="Spike frames per window (T).")] = 32,
        seed: SeedOption = 0,
        eval_scenes: Annotated[int, typer.Option(help="Held-out scenes it is reported on.")] = 100,
        out: Annotated[Path | None, typer.Option(help="Checkpoint to write (default: spikedepth_ARCH.pt).")
                       ] = None,
    ):
        """Train a spike-depth network on procedural scenes and report it on held-out ones;
        `export spikedepth --checkpoint FILE` takes the result."""
        from tritonforge.console import console, progress_bar
        from tritonforge.export.spikedepth.data import scene_set
        from tritonforge.export.spikedepth.train import (
            TrainRecipe,
            evaluate,
            recipe_json,
            save_checkpoint,
            train,
        )

        given = {"scenes": scenes, "epochs": epochs}
        recipe = TrainRecipe(arch=arch, window=window, seed=seed,
                             **{k: v for k, v in given.items() if v is not None})
        with progress_bar() as bar:
            task = bar.add_task(f"rendering {recipe.scenes} training scenes", total=recipe.scenes)
            data = scene_set("train", recipe.scenes, window, seed=seed, progress=lambda: bar.advance(task))
            task = bar.add_task(f"training {arch}", total=recipe.epochs)
            net = train(recipe, lambda: bar.advance(task), data)
        metrics = evaluate(net, scene_set("test", eval_scenes, window))
        path = save_checkpoint(out or Path(f"spikedepth_{arch}.pt"), net, recipe_json(recipe), metrics)
        console.print(metrics_table(f"{arch}: {eval_scenes} held-out scenes", metrics))
        console.print(f"written to {path}; export it with `tritonforge export spikedepth --arch {arch} "
                      f"--checkpoint {path}`")

    @commands.command("eval")
    def eval_command(
        checkpoint: Annotated[list[Path], typer.Argument(help="Checkpoints to compare "
                                                              "(`spikedepth train`, `spikedepth adapt`).")],
        scenes: Annotated[int, typer.Option(help="Scenes (or recordings of the Motorcycle scene).")] = 100,
        domain: Annotated[str, typer.Option(help="source (held-out procedural scenes), camera (the "
                                                 "adaptation target camera) or motorcycle (the real "
                                                 "Middlebury scene).")] = "source",
        recordings: Annotated[Path | None, typer.Option(help="Or a folder of recorded scenes with depth "
                                                             "(`spikedepth scenes`' layout).")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    ):
        """abs rel, RMSE and delta < 1.25 overall and per distance band (near < 3 m, middle, far >= 8 m)
        of every branch of every checkpoint."""
        from tritonforge.console import console
        from tritonforge.export.spikedepth.data import domain_scenes, read_recordings
        from tritonforge.export.spikedepth.train import evaluate, load_checkpoint

        results = {}
        for path in checkpoint:
            net, _recipe = load_checkpoint(path)
            window = net.config.window
            if recordings:
                data = read_recordings(recordings, window)
            else:
                data = domain_scenes(domain, scenes, window)
            for branch, metrics in evaluate(net, data).items():
                results[f"{path.stem}:{branch}"] = metrics
        where = str(recordings) if recordings else f"{scenes} {domain} scenes"
        console.print(metrics_table(where, results))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            console.print(f"written to {json_path}")

    @commands.command("adapt")
    def adapt_command(
        ctx: typer.Context,
        name: Annotated[str | None, typer.Option(help="The model to adapt: its latest version in --repo is "
                                                      "loaded, and the adapted network is published as its "
                                                      "next version.")] = None,
        checkpoint: Annotated[Path | None, typer.Option(help="Or a checkpoint to adapt (nothing is "
                                                             "published).")] = None,
        repo: Annotated[Path, typer.Option(help="Model repository.")] = Path("model_repo"),
        domain: Annotated[str, typer.Option(help="camera (a dimmer, noisier spike camera filming scenes "
                                                 "textured with unseen photographs) or motorcycle (the "
                                                 "Middlebury scene recorded by the spike camera).")
                              ] = "camera",
        cfkd: Annotated[bool, typer.Option(help="Distil an RGB teacher on the source scenes.")] = True,
        ugmt: Annotated[bool, typer.Option(help="Learn the mean teacher's certain pseudo-labels.")] = True,
        glfa: Annotated[bool, typer.Option(help="Align global features of source and target.")] = True,
        target_scenes: Annotated[int, typer.Option(help="Unlabelled target windows.")] = 400,
        source_scenes: Annotated[int, typer.Option(help="Labelled source scenes.")] = 800,
        teacher_epochs: Annotated[int, typer.Option(help="Epochs of the RGB teacher.")] = 6,
        cfkd_epochs: Annotated[int, typer.Option(help="Epochs of the source stage.")] = 2,
        adapt_epochs: Annotated[int, typer.Option(help="Epochs over the target windows.")] = 4,
        eval_scenes: Annotated[int, typer.Option(help="Held-out scenes the report is measured on.")] = 100,
        publish_worse: Annotated[bool, typer.Option(help="Publish even if the adapted network scores worse "
                                                         "than the source-only one on the held-out target "
                                                         "scenes.")] = False,
        seed: SeedOption = 0,
        out: Annotated[Path | None, typer.Option(help="Where to write the adapted checkpoint (default: "
                                                      "NAME_DOMAIN.pt).")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    ):
        """BiCross: adapt a network to a new spike camera without its depth labels (CFKD, UGMT,
        GLFA), report it against the source-only network on the target domain, and publish it
        as the next version of --name."""
        from tritonforge.console import Stages, console, progress_bar
        from tritonforge.export.spikedepth.adapt import AdaptRecipe, adapt, worse_than_source
        from tritonforge.export.spikedepth.train import save_checkpoint

        if (name is None) == (checkpoint is None):
            raise TritonForgeError("give the model to adapt: --name (a served model in --repo) or "
                                   "--checkpoint FILE")
        recipe = AdaptRecipe(domain=domain, cfkd=cfkd, ugmt=ugmt, glfa=glfa, target_scenes=target_scenes,
                             source_scenes=source_scenes, teacher_epochs=teacher_epochs,
                             cfkd_epochs=cfkd_epochs, adapt_epochs=adapt_epochs, eval_scenes=eval_scenes,
                             seed=seed)
        net, options = load_for_adaptation(name, checkpoint, repo)
        with progress_bar() as bar:
            adapted, report = adapt(net, recipe, Stages(bar))
        origin = str(checkpoint or f"{repo}/{name}")
        path = save_checkpoint(out or Path(f"{name or checkpoint.stem}_{domain}.pt"), adapted,
                               {"adapted_from": origin, "adaptation": recipe.to_json()}, report)
        console.print(adaptation_table(report, recipe))
        console.print(f"adapted network written to {path}")
        if json_path:
            json_path.write_text(json.dumps(report, indent=2) + "\n")
        if name is not None:
            refusal = worse_than_source(report, adapted.final)
            if refusal and not publish_worse:
                raise TritonForgeError(f"not published: {refusal}; {name}'s served version stays as it was. "
                                       "Adapt longer (--adapt-epochs, --target-scenes), or pass "
                                       "--publish-worse to publish anyway")
            options = dataclasses.replace(options, checkpoint=str(path))
            result = ctx.obj.export_model("spikedepth", options, repo, name=name)
            console.print(f"published as version {result.version} of {name} in {repo}")

    @commands.command("adapt-study")
    def adapt_study_command(
        checkpoint: Annotated[Path, typer.Argument(help="The source network (`spikedepth train`).")],
        domain: Annotated[str, typer.Option(help="camera or motorcycle.")] = "camera",
        target_scenes: Annotated[int, typer.Option(help="Unlabelled target windows.")] = 400,
        seed: SeedOption = 0,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    ):
        """BiCross with and without each of CFKD, UGMT and GLFA, against the source-only network,
        on the target domain: one table."""
        from tritonforge.console import Stages, console, new_table, progress_bar
        from tritonforge.export.spikedepth.adapt import AdaptRecipe, adapt
        from tritonforge.export.spikedepth.train import load_checkpoint

        net, _recipe = load_checkpoint(checkpoint)
        variants = {"BiCross (CFKD+UGMT+GLFA)": {}, "without CFKD": {"cfkd": False},
                    "without UGMT": {"ugmt": False}, "without GLFA": {"glfa": False},
                    "source fine-tuning only (same compute)": {"cfkd": False, "ugmt": False, "glfa": False}}
        if net.mono is None:
            variants = {k: {**v, "cfkd": False} for k, v in variants.items() if k != "without CFKD"}
        results = {}
        with progress_bar() as bar:
            stage = Stages(bar)
            for label, changes in variants.items():
                recipe = AdaptRecipe(domain=domain, target_scenes=target_scenes, seed=seed, **changes)
                def labelled(what: str, total: int, label: str = label):
                    return stage(f"{label}: {what}", total)

                _adapted, report = adapt(net, recipe, labelled)
                results.setdefault("source only", report["source_only"])
                results[label] = report["adapted"]
        final = net.final
        table = new_table(f"{checkpoint.name} adapted to the {domain} domain ({final} output)", "network",
                          "target abs rel", "target δ<1.25", "target RMSE (m)", "source test abs rel")
        for label, metrics in results.items():
            target, source = metrics["target"][final], metrics["source_test"][final]
            table.add_row(label, f"{target['abs_rel']:.4f}", f"{target['delta_1.25']:.3f}",
                          f"{target['rmse']:.3f}", f"{source['abs_rel']:.4f}")
        console.print(table)
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            console.print(f"written to {json_path}")

    return commands


def load_for_adaptation(name: str | None, checkpoint: Path | None, repo: Path):
    """The network to adapt and the recipe its next version is exported with."""
    from tritonforge.export.spikedepth import SpikeDepthOptions, network
    from tritonforge.export.spikedepth.train import load_checkpoint
    from tritonforge.family import get_family
    from tritonforge.serving.repository import ModelRepository

    if checkpoint is not None:
        net, _recipe = load_checkpoint(checkpoint)
        return net, SpikeDepthOptions(arch=net.config.arch, checkpoint=str(checkpoint))
    repository = ModelRepository(repo)
    manifest = repository.read_manifest(name)
    if manifest.get("family") != "spikedepth":
        raise TritonForgeError(f"{name!r} in {repo} is a {manifest.get('family')} model, not a spikedepth "
                               "one: give a spikedepth model or --checkpoint")
    family = get_family("spikedepth")
    options = family.options_from_json(manifest["recipe"])
    _version, folder = repository.resolve(name)
    return network(family.load_version(options, folder)), options


def adaptation_table(report, recipe):
    from tritonforge.console import new_table

    table = new_table(f"BiCross ({recipe.parts}) on the {recipe.domain} domain", "network", "branch",
                      "target abs rel", "target δ<1.25", "source test abs rel")
    for label in ("source_only", "adapted"):
        for branch, metrics in report[label]["target"].items():
            source = report[label]["source_test"][branch]
            table.add_row(label.replace("_", " "), branch, f"{metrics['abs_rel']:.4f}",
                          f"{metrics['delta_1.25']:.3f}", f"{source['abs_rel']:.4f}")
    return table


def metrics_table(title: str, results):
    from tritonforge.console import new_table

    bands = ("", "near_", "middle_", "far_")
    table = new_table(title, "model", *(f"{band or 'all '}abs rel" for band in bands), "RMSE (m)", "δ<1.25")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics[band + 'abs_rel']:.4f}" if band + "abs_rel" in metrics else "-"
                              for band in bands),
                      f"{metrics['rmse']:.3f}", f"{metrics['delta_1.25']:.3f}")
    return table
