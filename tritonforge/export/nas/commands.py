"""`tritonforge nas ...`: measure a latency table, search a genotype on unreal data, train it on
real data, and run the paper's comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SeedOption = Annotated[int, typer.Option(help="Seed: the same seed gives the same result on this machine.")]
TargetOption = Annotated[str, typer.Option(help="The runtime whose latency is measured: onnxruntime or "
                                                "openvino.")]
ThreadsOption = Annotated[int, typer.Option(help="Intra-op threads the latency is measured with.")]
BatchOption = Annotated[int, typer.Option(help="Batch size the latency is measured at.")]
TableOption = Annotated[Path | None, typer.Option(help="A latency table `nas latency` wrote (its target, "
                                                       "threads and batch must match; measured now if "
                                                       "left out).")]


def nas_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="Architecture search on unreal data, with the serving "
                                                      "runtime's measured latency.")

    @commands.command("latency")
    def latency_command(
        target: TargetOption = "onnxruntime",
        threads: ThreadsOption = 2,
        batch: BatchOption = 8,
        width: Annotated[int, typer.Option(help="Width of the network to be trained and served.")] = 16,
        layers: Annotated[int, typer.Option(help="Cells of that network.")] = 5,
        out: Annotated[Path, typer.Option(help="Where to write the table.")] = Path("nas_latency.json"),
    ):
        """Time every primitive at every shape of the served network on TARGET, calibrate against
        whole networks, and write the table `nas search --latency-table` reads."""
        from tritonforge.console import Stages, console, progress_bar
        from tritonforge.export.nas.latency import measure_table
        from tritonforge.export.nas.network import NetworkSize

        with progress_bar() as progress:
            table = measure_table(target, threads, batch, NetworkSize(width=width, layers=layers),
                                  Stages(progress))
        table.write(out)
        console.print(calibration_table(table))
        console.print(f"{len(table.entries)} entries on {table.target} ({table.cpu}, {threads} threads, "
                      f"batch {batch}); written to {out}")

    @commands.command("search")
    def search_command(
        data: Annotated[str, typer.Option(help="What to search on: noise (Gaussian noise, random labels), "
                                               "random-labels (digit images, random labels), generated "
                                               "(shapes drawn here) or real (the digits).")] = "noise",
        seed: SeedOption = 0,
        epochs: Annotated[int, typer.Option(help="Search epochs.")] = 20,
        width: Annotated[int, typer.Option(help="Width of the search network (the derived network is "
                                               "trained and served at 16).")] = 8,
        layers: Annotated[int, typer.Option(help="Cells of the search network.")] = 5,
        samples: Annotated[int, typer.Option(help="Search on the first this many images (0: all "
                                                 "1,437).")] = 0,
        latency_weight: Annotated[float, typer.Option(help="Weight of the expected latency (relative to "
                                                           "the uniform mix's) in the architecture's "
                                                           "loss; 0: accuracy alone.")] = 0.0,
        target: TargetOption = "onnxruntime",
        threads: ThreadsOption = 2,
        batch: BatchOption = 8,
        latency_table: TableOption = None,
        out: Annotated[Path | None, typer.Option(help="Genotype file to write. Default: "
                                                      "genotype_DATA_sSEED.json.")] = None,
    ):
        """Search a cell genotype with first-order DARTS on DATA, then export its network, time it
        on TARGET and record predicted against measured latency."""
        from tritonforge.console import Stages, console, progress_bar
        from tritonforge.export.nas.compare import searched_genotype
        from tritonforge.export.nas.search import SearchRecipe

        recipe = SearchRecipe(data=data, seed=seed, epochs=epochs, width=width, layers=layers,
                              samples=samples, latency_weight=latency_weight)
        path = out or Path(f"genotype_{data}_s{seed}.json")
        with progress_bar() as progress:
            record = searched_genotype(recipe, target, threads, batch, latency_table, path, Stages(progress),
                                       say=console.print)
        latency = record["latency"]
        console.print(f"genotype: {record['genotype_text']}")
        seconds = record["search"]["search_seconds"]
        console.print(f"searched on {data} in {seconds:.0f} s; latency on {target} "
                      f"at batch {batch}: predicted {latency['predicted_ms']:.3f} ms, measured "
                      f"{latency['measured_ms']:.3f} ms ({100 * latency['relative_error']:+.1f}%); "
                      f"written to {path}")

    @commands.command("train")
    def train_command(
        genotype: Annotated[Path, typer.Option(help="A genotype file (`nas search` writes them).")],
        data: Annotated[str, typer.Option(help="digits, a folder with one subfolder of images per class, or "
                                               "an .npz with images and labels (20% held out).")] = "digits",
        epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
        width: Annotated[int, typer.Option(help="Network width (the latency table's).")] = 16,
        layers: Annotated[int, typer.Option(help="Cells.")] = 5,
        image_size: Annotated[int, typer.Option(help="Folder images are resized to this.")] = 8,
        channels: Annotated[int, typer.Option(help="1 (grayscale) or 3 (RGB), for a folder or .npz.")] = 1,
        seed: SeedOption = 0,
        out: Annotated[Path, typer.Option(help="Checkpoint to write.")] = Path("nas.pt"),
    ):
        """Train a genotype's network on real labelled images; `export nas --checkpoint` takes it."""
        from tritonforge.console import console
        from tritonforge.export.nas.compare import training_data
        from tritonforge.export.nas.space import read_genotype, search_record
        from tritonforge.export.nas.train import TrainRecipe, accuracy, save_network, train

        cells, record = read_genotype(genotype)
        recipe = TrainRecipe(epochs=epochs, width=width, layers=layers, seed=seed)
        training, held_out = training_data(data, channels, image_size)

        def report(epoch: int, loss: float, held: float) -> None:
            console.print(f"epoch {epoch:3d}/{epochs}  loss {loss:.4f}  held-out accuracy {held:.4f}")

        model = train(cells, training, held_out, recipe, report)
        score = accuracy(model, held_out)
        save_network(out, model, recipe, training.classes, search_record(record, genotype),
                     {"held_out_accuracy": score, "held_out": held_out.name, "data": training.name})
        console.print(f"held-out accuracy {score:.4f} on {len(held_out.labels)} images; written to {out}")

    @commands.command("compare")
    def compare_command(
        seeds: Annotated[str, typer.Option(help="Seeds, comma-separated.")] = "0,1,2",
        data: Annotated[str, typer.Option(help="Data kinds to search on, comma-separated.")] =
            "real,random-labels,generated,noise",
        search_epochs: Annotated[int, typer.Option(help="Epochs of each search.")] = 10,
        train_epochs: Annotated[int, typer.Option(help="Epochs each genotype trains on the digits.")] = 10,
        latency_weights: Annotated[str, typer.Option(help="Also search on noise at these latency weights "
                                                          "(comma-separated; empty: skip the curve).")] = "",
        target: TargetOption = "onnxruntime",
        threads: ThreadsOption = 2,
        batch: BatchOption = 8,
        latency_table: TableOption = None,
        work: Annotated[Path, typer.Option(help="Where genotypes, checkpoints and the results go (a "
                                                "rerun reuses what is there).")] = Path("nas_compare"),
    ):
        """The paper's comparison: genotypes searched on each data kind and random genotypes at the
        real-data genotype's predicted latency, each trained the same way on the digits; a table and a
        plot of accuracy against measured latency."""
        from tritonforge.console import Stages, console, progress_bar
        from tritonforge.export.nas.compare import CompareRecipe, compare, comparison_table, plot_comparison

        weights = tuple(float(w) for w in latency_weights.split(",") if w.strip())
        recipe = CompareRecipe(seeds=tuple(int(s) for s in seeds.split(",") if s.strip()),
                               kinds=tuple(k.strip() for k in data.split(",") if k.strip()),
                               search_epochs=search_epochs, train_epochs=train_epochs,
                               latency_weights=weights,
                               target=target, threads=threads, batch=batch)
        with progress_bar() as progress:
            result = compare(recipe, work, latency_table, Stages(progress), say=console.print)
        for table in comparison_table(result):
            console.print(table)
        console.print(f"written: {work / 'compare.json'}, {plot_comparison(result, work / 'compare.png')}")

    return commands


def calibration_table(table):
    from tritonforge.console import new_table

    calibration = table.calibration
    out = new_table(f"calibration on {table.target}: measured = {calibration['scale']:.3f} x operations + "
                    f"{calibration['offset_ms']:.3f} ms", "network", "operations (ms)", "measured (ms)",
                    "predicted (ms)", "error")
    for point in calibration["points"]:
        error = (point["predicted_ms"] - point["measured_ms"]) / point["measured_ms"]
        out.add_row(point["genotype"], f"{point['operations_ms']:.3f}", f"{point['measured_ms']:.3f}",
                    f"{point['predicted_ms']:.3f}", f"{100 * error:+.1f}%")
    return out
