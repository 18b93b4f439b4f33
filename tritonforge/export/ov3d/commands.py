"""`tritonforge ov3d ...`: write procedural rooms as point files, train the open-vocabulary
detector, and evaluate it on seen and unseen classes with any vocabulary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tritonforge.errors import TritonForgeError

SeedOption = Annotated[int, typer.Option(help="Seed: the same seed gives the same result.")]
ROOM_FORMATS = ("ply", "npy")


def ov3d_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="Open-vocabulary 3-D detection: rooms, train, "
                                                      "evaluate.")

    @commands.command("rooms")
    def rooms_command(
        out: Annotated[Path, typer.Option(help="Folder to write the rooms to.")] = Path("ov3d_rooms"),
        count: Annotated[int, typer.Option(help="Rooms to write.")] = 4,
        split: Annotated[str, typer.Option(help="test (held out) or train.")] = "test",
        file_format: Annotated[str, typer.Option("--format", help="ply or npy.")] = "ply",
        seed: SeedOption = 0,
    ):
        """Procedural rooms as point files (room_NNNN.ply or .npy: x, y, z in metres, z up) with
        their true boxes and class names beside them (room_NNNN.json)."""
        import numpy as np

        from tritonforge.console import console
        from tritonforge.export.ov3d.scenes import CLASSES, SEEN, room

        if file_format not in ROOM_FORMATS:
            raise TritonForgeError(f"--format {file_format!r} is unknown: choose ply or npy")
        if count < 1:
            raise TritonForgeError(f"--count {count} must be at least 1")
        out.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            scene = room(split, index, seed)
            path = out / f"room_{index:04d}.{file_format}"
            if file_format == "npy":
                np.save(path, scene.points)
            else:
                import trimesh

                trimesh.PointCloud(scene.points).export(path, file_type="ply")
            objects = [{"class": CLASSES[label], "seen": CLASSES[label] in SEEN,
                        "box": [round(float(v), 4) for v in box]}
                       for box, label in zip(scene.boxes, scene.labels, strict=True)]
            described = {"points": len(scene.points), "objects": objects,
                         "box_layout": "centre x, y, z, size l, w, h, yaw"}
            path.with_suffix(".json").write_text(json.dumps(described, indent=2) + "\n")
        console.print(f"{count} {split} rooms written to {out}; query a served detector with --input "
                      f"points={out}/room_0000.{file_format} --input classes=chair,table,lamp")

    @commands.command("train")
    def train_command(
        rooms: Annotated[int, typer.Option(help="Training rooms.")] = 200,
        epochs: Annotated[int, typer.Option(help="Epochs over them.")] = 80,
        supervision: Annotated[str, typer.Option(help="open (seen boxes, unseen classes from room tags "
                                                      "through pseudo boxes) or seen (seen boxes only).")
                               ] = "open",
        contrast: Annotated[str, typer.Option(help="Query-text contrast: debiased (same-class queries "
                                                   "never negatives), plain (InfoNCE) or none.")
                            ] = "debiased",
        seed: SeedOption = 0,
        eval_rooms: Annotated[int, typer.Option(help="Held-out rooms it is reported on.")] = 50,
        num_points: Annotated[int, typer.Option(help="Points the detector keeps of each cloud.")] = 2048,
        centres: Annotated[int, typer.Option(help="Farthest-point centres (encoder tokens).")] = 256,
        queries: Annotated[int, typer.Option(help="Queries (boxes per cloud before suppression).")] = 64,
        width: Annotated[int, typer.Option(help="Transformer width.")] = 96,
        out: Annotated[Path, typer.Option(help="Checkpoint to write.")] = Path("ov3d.pt"),
    ):
        """Train the detector on procedural rooms and report seen and unseen mAP on held-out ones;
        `export ov3d --checkpoint FILE` takes the result."""
        from tritonforge.console import console, progress_bar
        from tritonforge.export.ov3d.data import room_set
        from tritonforge.export.ov3d.scenes import CLASSES
        from tritonforge.export.ov3d.train import TrainRecipe, save_detector, train

        recipe = TrainRecipe(rooms=rooms, epochs=epochs, supervision=supervision, contrast=contrast,
                             seed=seed, num_points=num_points, centres=centres, queries=queries, width=width)
        with progress_bar() as bar:
            task = bar.add_task(f"preparing {rooms} training rooms", total=None)
            room_set("train", rooms, recipe.config)
            bar.update(task, total=1, completed=1)
            task = bar.add_task(f"training ({supervision} supervision)", total=epochs)
            detector = train(recipe, lambda: bar.advance(task))
        result = evaluate(detector, recipe.template, CLASSES, eval_rooms)
        path = save_detector(out, detector, recipe, {"vocabulary": list(CLASSES), **result})
        console.print(ap_table(f"{eval_rooms} held-out rooms, every class named", {path.stem: result}))
        console.print(f"written to {path}; export it with `tritonforge export ov3d --checkpoint {path}`")

    @commands.command("eval")
    def eval_command(
        checkpoint: Annotated[list[Path], typer.Argument(help="Checkpoints of `ov3d train` to compare.")],
        vocab: Annotated[str | None, typer.Option(
            help="Comma-separated class names to detect (default: all ten room classes); NAME=CLASS sends "
                 "another name for a room class, e.g. couch=sofa.")] = None,
        rooms: Annotated[int, typer.Option(help="Held-out rooms.")] = 50,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
    ):
        """mAP@0.25 and @0.5 on seen and unseen classes, and AP per class, with the vocabulary given."""
        from tritonforge.console import console
        from tritonforge.export.ov3d.evaluation import parse_vocabulary
        from tritonforge.export.ov3d.scenes import CLASSES
        from tritonforge.export.ov3d.train import load_detector

        names, classes = parse_vocabulary(vocab) if vocab else (CLASSES, CLASSES)
        results = {}
        for path in checkpoint:
            detector, recipe = load_detector(path)
            results[path.stem] = evaluate(detector, recipe.template, names, rooms, classes)
        console.print(ap_table(f"{rooms} held-out rooms; vocabulary: {', '.join(names)}", results))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            console.print(f"written to {json_path}")

    @commands.command("study")
    def study_command(
        seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0,1,2",
        rooms: Annotated[int, typer.Option(help="Training rooms per detector.")] = 200,
        epochs: Annotated[int, typer.Option(help="Epochs per detector.")] = 80,
        eval_rooms: Annotated[int, typer.Option(help="Held-out rooms.")] = 50,
        work: Annotated[Path, typer.Option(help="Folder for the detectors (kept: a rerun reuses them).")
                        ] = Path("ov3d_study"),
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the figures here.")] = None,
    ):
        """The paper's comparison: seen-only training, open-vocabulary training without a contrast,
        with plain InfoNCE and with the debiased contrast, each over the seeds; seen and unseen
        mAP with every class named (mean and spread over the seeds)."""
        from tritonforge.console import console, progress_bar
        from tritonforge.export.ov3d.scenes import CLASSES
        from tritonforge.export.ov3d.train import TrainRecipe, load_detector, save_detector, train

        chosen = [int(seed) for seed in seeds.split(",") if seed.strip()]
        results: dict[str, dict[int, dict]] = {}
        with progress_bar() as bar:
            for seed in chosen:  # every row of a seed before the next seed: a stopped study compares
                for key, label, supervision, contrast in STUDY_ROWS:
                    path = work / f"{key}_seed{seed}.pt"
                    recipe = TrainRecipe(rooms=rooms, epochs=epochs, supervision=supervision,
                                         contrast=contrast, seed=seed)
                    kept = load_detector(path) if path.is_file() else None
                    if kept is not None and kept[1] == recipe:
                        detector = kept[0]
                    else:
                        task = bar.add_task(f"{label}, seed {seed}", total=epochs)
                        detector = train(recipe, lambda task=task: bar.advance(task))
                        save_detector(path, detector, recipe, {})
                    found = evaluate(detector, recipe.template, CLASSES, eval_rooms)
                    results.setdefault(label, {})[seed] = found
        console.print(study_table(results, eval_rooms))
        if json_path:
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            console.print(f"written to {json_path}")

    return commands


# (file key, row, supervision, contrast) of `ov3d study`
STUDY_ROWS = (("seen", "seen-only", "seen", "none"), ("open", "open, no contrast", "open", "none"),
              ("plain", "open, plain InfoNCE", "open", "plain"),
              ("debiased", "open, debiased contrast", "open", "debiased"))


def study_table(results: dict, rooms: int):
    import numpy as np

    from tritonforge.console import new_table

    def spread(values) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "-"
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    table = new_table(f"{rooms} held-out rooms, every class named; mean ± std over seeds", "training",
                      "seeds", "seen mAP@0.25", "seen mAP@0.5", "unseen mAP@0.25", "unseen mAP@0.5")
    for label, by_seed in results.items():
        table.add_row(label, ",".join(map(str, by_seed)),
                      *(spread([r[split][t] for r in by_seed.values()]) for split in ("seen", "unseen")
                        for t in ("0.25", "0.5")))
    return table


def evaluate(detector, template: str, names, rooms: int, classes=None) -> dict:
    """seen / unseen mAP and per-class AP (at 0.25 and 0.5) on `rooms` held-out rooms, each name
    scored against its room class's boxes (`classes`, default the names)."""
    from tritonforge.export.ov3d.data import room_set
    from tritonforge.export.ov3d.evaluation import detect, pytorch_run, room_ap
    from tritonforge.export.ov3d.text import embed_names

    test = room_set("test", rooms, detector.config)
    found = detect(pytorch_run(detector), test, embed_names(names, template))
    result = room_ap(found, test, names, classes)
    return json_ready(result)


def json_ready(value):
    """Figures as JSON holds them: threshold keys as text ("0.25"), NaN (a class no room holds)
    as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    return None if isinstance(value, float) and value != value else value


def ap_table(title: str, results: dict):
    from tritonforge.console import new_table

    def cell(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = new_table(title, "detector", "seen mAP@0.25", "seen mAP@0.5", "unseen mAP@0.25", "unseen mAP@0.5")
    for name, result in results.items():
        table.add_row(name, *(cell(result[s][t]) for s in ("seen", "unseen") for t in ("0.25", "0.5")))
    classes = new_table("AP@0.25 per class", "detector", *next(iter(results.values()))["per_class"])
    for name, result in results.items():
        classes.add_row(name, *(cell(v["0.25"]) for v in result["per_class"].values()))
    from rich.console import Group

    return Group(table, classes)
