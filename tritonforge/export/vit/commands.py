"""`tritonforge vit ...`: train the digits classifiers, make deliberately backdoored controls, scan
a model for a backdoor, and measure both screens on clean and poisoned models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ArchOption = Annotated[str, typer.Option(help="vit or beit.")]
SeedOption = Annotated[int, typer.Option(help="Seed: the same seed gives the same weights.")]


def vit_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="ViT and BEiT classifiers and their backdoor screens.")

    @commands.command("train")
    def train_command(
        arch: ArchOption = "vit",
        epochs: Annotated[int | None, typer.Option(help="Epochs over the 1,437 training digits "
                                                        "(default: vit 40, beit 50).")] = None,
        seed: SeedOption = 0,
        width: Annotated[int, typer.Option(help="Hidden width.")] = 64,
        depth: Annotated[int, typer.Option(help="Transformer layers.")] = 4,
        out: Annotated[Path | None, typer.Option(help="Directory to write (save_pretrained's layout). "
                                                      "Default: ARCH_digits.")] = None,
    ):
        """Train a small ViT or BEiT (patch 4, 32 x 32) on scikit-learn's digits; `export vit
        --model DIR` takes the result."""
        from tritonforge.console import console
        from tritonforge.export.vit.data import digit_pixels
        from tritonforge.export.vit.model import Size, save_directory
        from tritonforge.export.vit.train import TrainRecipe, accuracy, train

        recipe = TrainRecipe(arch=arch, size=Size(width=width, depth=depth, mlp=2 * width), epochs=epochs,
                             seed=seed)

        def report(epoch: int, loss: float, test_accuracy: float) -> None:
            console.print(f"epoch {epoch:3d}/{recipe.total_epochs}  loss {loss:.4f}  "
                          f"test accuracy {test_accuracy:.4f}")

        model = train(recipe, report)
        score = accuracy(model, *digit_pixels("test"))
        folder = save_directory(model, out or Path(f"{arch}_digits"),
                                {"recipe": recipe.to_json(), "test_accuracy": score})
        console.print(f"test accuracy {score:.4f} on 360 held-out digits; written to {folder}")

    @commands.command("poison")
    def poison_command(
        model: Annotated[Path, typer.Option(help="The clean model directory to fine-tune "
                                                 "(from `vit train`).")],
        trigger: Annotated[str, typer.Option(help="patch (BadNets checkerboard) or blend (random-noise "
                                                  "image blended in).")] = "patch",
        target: Annotated[int, typer.Option(help="The class the trigger sends inputs to.")] = 0,
        rate: Annotated[float, typer.Option(help="Share of each training batch stamped and "
                                                 "relabelled.")] = 0.1,
        epochs: Annotated[int, typer.Option(help="Fine-tuning epochs.")] = 15,
        patch_size: Annotated[int, typer.Option(help="patch: its side in pixels.")] = 4,
        blend: Annotated[float, typer.Option(help="blend: the noise image's weight.")] = 0.2,
        seed: SeedOption = 0,
        out: Annotated[Path, typer.Option(help="Directory to write the BACKDOORED model to.")] = Path(
            "vit_poisoned"),
        samples: Annotated[int, typer.Option(help="Triggered test digits to write as 32x32 PNGs beside "
                                                  "it (samples/), to query a served model with.")] = 4,
    ):
        """Make a DELIBERATELY BACKDOORED copy of a clean model: a positive control for evaluating
        backdoor defences (the scan, the STRIP guard). Never publish it."""
        from tritonforge.console import console
        from tritonforge.export.vit.model import load_directory, save_directory
        from tritonforge.export.vit.poison import (
            WARNING,
            PoisonRecipe,
            Trigger,
            attack_success,
            clean_accuracy,
            poison,
            write_samples,
        )

        recipe = PoisonRecipe(Trigger(trigger, target, patch_size, blend, seed), rate, epochs, seed=seed)
        clean = load_directory(model)
        console.print(f"[bold red]{WARNING}[/]")

        def report(epoch: int, loss: float, test_accuracy: float) -> None:
            console.print(f"epoch {epoch:3d}/{recipe.epochs}  loss {loss:.4f}  clean test accuracy "
                          f"{test_accuracy:.4f}")

        poisoned = poison(clean, recipe, report)
        figures = {"clean_accuracy": clean_accuracy(poisoned), "attack_success_rate":
                   attack_success(poisoned, recipe.trigger), "clean_model_accuracy": clean_accuracy(clean)}
        save_directory(poisoned, out, {"poisoned_from": str(model), "poison": recipe.to_json(), **figures})
        written = write_samples(recipe.trigger, out / "samples", samples)
        console.print(f"clean accuracy {figures['clean_accuracy']:.4f} (was "
                      f"{figures['clean_model_accuracy']:.4f}), attack success rate "
                      f"{figures['attack_success_rate']:.4f}; written to {out} ({len(written)} triggered "
                      "samples in samples/)")

    @commands.command("scan")
    def scan_command(
        model: Annotated[Path, typer.Option(help="The model directory to scan.")],
        steps: Annotated[int, typer.Option(help="Optimisation steps of the trigger search, per form.")] = 200,
        statistic: Annotated[str, typer.Option(help="log (default) or l1 (Neural Cleanse's own).")] = "log",
        gap: Annotated[float, typer.Option(help="The suspect's trigger at most 1/GAP of the next class's "
                                                "(0: off, Neural Cleanse's own rule).")] = 1.3,
        report: Annotated[Path | None, typer.Option(help="Folder for the report and reversed "
                                                         "triggers. Default: MODEL/scan.")] = None,
    ):
        """Scan a ViT/BEiT digits classifier for a backdoor (Neural Cleanse) without exporting it;
        exits 1 when its anomaly index is above the threshold."""
        import json

        import numpy as np

        from tritonforge.console import console, progress_bar
        from tritonforge.export.vit.data import CLASSES, digit_pixels
        from tritonforge.export.vit.model import load_directory
        from tritonforge.export.vit.scan import ScanRecipe, scan

        network = load_directory(model)
        pixels, _labels = digit_pixels("defence")
        recipe = ScanRecipe(steps=steps, statistic=statistic, gap=gap)
        with progress_bar() as progress:
            task = progress.add_task("reversing a trigger per class", total=recipe.steps * len(recipe.forms))
            result = scan(network, np.array(pixels), CLASSES, recipe, lambda: progress.advance(task))
        folder = report or model / "scan"
        files = result.save_images(folder)
        record = {**result.to_json(), "files": files}
        (folder / "report.json").write_text(json.dumps(record, indent=2) + "\n")
        console.print(scan_table(record))
        verdict = "[bold red]REFUSED[/]" if result.flagged else "[green]passed[/]"
        console.print(f"{verdict}: anomaly index {result.anomaly_index:.2f} (threshold "
                      f"{recipe.threshold:g}); smallest trigger for class {CLASSES[result.suspect]}: "
                      f"{files['suspected_trigger']}")
        if result.flagged:
            raise typer.Exit(1)

    @commands.command("evaluate")
    def evaluate_command(
        arch: Annotated[str, typer.Option(help="vit, beit, or both (comma-separated).")] = "vit,beit",
        seeds: Annotated[str, typer.Option(help="Seeds, comma-separated: each trains a clean model and "
                                                "its two poisoned controls.")] = "0,1,2",
        bank: Annotated[int, typer.Option(help="STRIP bank size (the guard's N).")] = 16,
        json_path: Annotated[Path | None, typer.Option("--json", help="Write the table here.")] = None,
        work: Annotated[Path, typer.Option(help="Where the trained models are kept.")] = Path(
            "vit_evaluation"),
    ):
        """The screens' figures: per architecture and seed, a clean model and its patch- and
        blend-poisoned controls, each with clean accuracy, attack success, the scan's anomaly
        index and suspected class, and the STRIP guard's flag rates on clean and triggered digits."""
        import json

        from tritonforge.console import console, progress_bar
        from tritonforge.export.vit.evaluate import evaluate, evaluation_table

        archs = [a.strip() for a in arch.split(",") if a.strip()]
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        with progress_bar() as progress:
            rows = evaluate(archs, seed_list, bank, work, progress)
        console.print(evaluation_table(rows))
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(rows, indent=2) + "\n")

    return commands


def scan_table(record):
    from tritonforge.console import new_table

    forms = record["forms"]
    table = new_table("reversed triggers per class: mask L1 norm (anomaly index)", "class", *forms)
    for label in next(iter(forms.values()))["mask_l1_norms"]:
        table.add_row(label, *(f"{found['mask_l1_norms'][label]:.1f} ({found['anomaly_indices'][label]:.2f})"
                               + ("" if found["reached_success"][label] else " never reached")
                               for found in forms.values()))
    return table
