"""`tritonforge snn ...`: the spiking family's own commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def snn_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="Spiking classifiers trained with TET.")

    @commands.command("train")
    def train_command(
        arch: Annotated[str, typer.Option(help="vgg: the spiking VGG of --widths (the presets vggsnn "
                                               "and resnet19 are trained by the TET reference).")] = "vgg",
        timesteps: Annotated[int, typer.Option(help="Time steps T of the LIF neurons.")] = 4,
        epochs: Annotated[int, typer.Option(help="Training epochs over the 1,437 training digits.")] = 30,
        seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same weights.")] = 0,
        lam: Annotated[float, typer.Option("--lambda", help="TET's weight of the MSE term.")] = 1e-3,
        phi: Annotated[float, typer.Option(help="TET's MSE target for the per-step logits.")] = 1.0,
        widths: Annotated[str, typer.Option(help="Conv widths, comma-separated.")] = "16,32",
        out: Annotated[Path, typer.Option(help="Where to write the checkpoint.")] = Path("snn_digits.pt"),
    ):
        """Train the spiking VGG on scikit-learn's digits with the TET loss; `export snn
        --checkpoint FILE` takes the result."""
        from rich.console import Console

        from tritonforge.errors import TritonForgeError
        from tritonforge.export.snn.train import TrainRecipe, save_checkpoint, train

        console = Console()
        if arch != "vgg":
            raise TritonForgeError(
                f"--arch {arch}: `snn train` trains the spiking VGG (--arch vgg) on the digits; "
                "vggsnn and resnet19 need CIFAR10-DVS / CIFAR-10 and GPU hours: train them with the "
                "TET reference and export its checkpoint with `export snn --arch ... --checkpoint`")
        try:
            layer_widths = tuple(int(w) for w in widths.split(","))
        except ValueError:
            raise TritonForgeError(f"--widths {widths!r} must be whole numbers separated by commas, "
                                   "e.g. 16,32") from None
        recipe = TrainRecipe(widths=layer_widths, timesteps=timesteps, epochs=epochs, lam=lam, phi=phi,
                             seed=seed)

        def report(epoch: int, loss: float, accuracy: float) -> None:
            console.print(f"epoch {epoch:3d}/{recipe.epochs}  TET loss {loss:.4f}  "
                          f"test accuracy {accuracy:.4f}")

        model = train(recipe, report)
        console.print(f"checkpoint written to {save_checkpoint(model, recipe, out)}")

    return commands
