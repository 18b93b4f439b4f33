"""`tritonforge spikedepth ...`: simulate a spike camera, make procedural stereo scenes, train
mono / stereo / UGDF networks, and evaluate them per distance band."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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
        scenes: Annotated[int, typer.Option(help="Training scenes.")] = 800,
        epochs: Annotated[int, typer.Option(help="Epochs over them.")] = 15,
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

        recipe = TrainRecipe(arch=arch, scenes=scenes, epochs=epochs, window=window, seed=seed)
        with progress_bar() as bar:
            task = bar.add_task(f"rendering {scenes} training scenes", total=scenes)
            data = scene_set("train", scenes, window, seed=seed, progress=lambda: bar.advance(task))
            task = bar.add_task(f"training {arch}", total=epochs)
            net = train(recipe, lambda: bar.advance(task), data)
        metrics = evaluate(net, scene_set("test", eval_scenes, window))
        path = save_checkpoint(out or Path(f"spikedepth_{arch}.pt"), net, recipe_json(recipe), metrics)
        console.print(metrics_table(f"{arch}: {eval_scenes} held-out scenes", metrics))
        console.print(f"written to {path}; export it with `tritonforge export spikedepth --arch {arch} "
                      f"--checkpoint {path}`")

    @commands.command("eval")
    def eval_command(
        checkpoint: Annotated[list[Path], typer.Argument(help="Checkpoints to compare "
                                                              "(`spikedepth train`).")],
        scenes: Annotated[int, typer.Option(help="Held-out scenes.")] = 100,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    ):
        """abs rel, RMSE and delta < 1.25 overall and per distance band (near < 3 m, middle, far >= 8 m)
        of every branch of every checkpoint, on held-out procedural scenes."""
        from tritonforge.console import console
        from tritonforge.export.spikedepth.data import scene_set
        from tritonforge.export.spikedepth.train import evaluate, load_checkpoint

        results = {}
        for path in checkpoint:
            net, _recipe = load_checkpoint(path)
            data = scene_set("test", scenes, net.config.window)
            for branch, metrics in evaluate(net, data).items():
                results[f"{path.stem}:{branch}"] = metrics
        console.print(metrics_table(f"{scenes} held-out scenes", results))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            console.print(f"written to {json_path}")

    return commands


def metrics_table(title: str, results):
    from tritonforge.console import new_table

    bands = ("", "near_", "middle_", "far_")
    table = new_table(title, "model", *(f"{band or 'all '}abs rel" for band in bands), "RMSE (m)", "δ<1.25")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics[band + 'abs_rel']:.4f}" if band + "abs_rel" in metrics else "-"
                              for band in bands),
                      f"{metrics['rmse']:.3f}", f"{metrics['delta_1.25']:.3f}")
    return table
