"""`tritonforge dask ...`: the DASK family's own commands (pivots, train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def dask_commands() -> typer.Typer:
    commands = typer.Typer(no_args_is_help=True, help="DASK knowledge-injected sentiment classifiers.")

    @commands.command("pivots")
    def pivots_command(
        source_labeled: Annotated[Path, typer.Option(help="Labelled source-domain text: label<TAB>text "
                                                          "per line (0/1 or negative/neutral/positive).")],
        target: Annotated[Path, typer.Option(help="Target-domain text, one per line.")],
        min_occur: Annotated[int, typer.Option(help="Documents a pivot must occur in, in each domain.")] = 10,
        num_pivots: Annotated[int, typer.Option(help="Pivots kept, by |polarity|.")] = 500,
        out: Annotated[Path, typer.Option(help="Where to write them (word<TAB>polarity).")
                       ] = Path("pivots.tsv"),
    ):
        """Pivot words by DASK's polarity rule: frequent in both domains, ranked by
        |#positive - #negative| / #source documents containing them."""
        from rich.console import Console
        from rich.table import Table

        from tritonforge.export.dask.knowledge import compute_pivots, read_labeled, read_texts, write_pivots

        console = Console()
        texts, labels = read_labeled(source_labeled)
        found = compute_pivots(texts, labels, read_texts(target), min_occur, num_pivots)
        write_pivots(found, out)
        table = Table(title=f"{len(found)} pivots (the first 10), written to {out}")
        table.add_column("word")
        table.add_column("polarity", justify="right")
        for word, score in found[:10]:
            table.add_row(word, f"{score:+.3f}")
        console.print(table)

    @commands.command("train")
    def train_command(
        model: Annotated[Path | None, typer.Option(help="A Hugging Face BERT directory. Default: the "
                                                        "embedded all-MiniLM-L6-v2.")] = None,
        source_labeled: Annotated[Path | None, typer.Option(
            help="Labelled source text (label<TAB>text). Default: the demo's airline tweets.")] = None,
        graph: Annotated[Path | None, typer.Option(help="Knowledge graph TSV. Default: the shipped "
                                                        "WordNet graph.")] = None,
        pivots: Annotated[Path | None, typer.Option(help="Pivot file. Default: computed from the source "
                                                         "text (and the demo's target domain).")] = None,
        epochs: Annotated[int, typer.Option(help="Passes over the training texts.")] = 2,
        train_size: Annotated[int, typer.Option(help="Training texts (balanced for the demo).")] = 1600,
        max_length: Annotated[int, typer.Option(help="Tokens per injected training text.")] = 128,
        max_triples: Annotated[int, typer.Option(help="Knowledge branches per pivot word.")] = 2,
        pooling: Annotated[str, typer.Option(help="first, mean, max or last.")] = "first",
        seed: Annotated[int, typer.Option(help="The same seed gives the same weights.")] = 0,
        out: Annotated[Path, typer.Option(help="Output folder, for `export dask --checkpoint`.")
                       ] = Path("dask_classifier"),
    ):
        """Fine-tune a knowledge-injected classifier on labelled source-domain text."""
        import torch
        from rich.console import Console

        from tritonforge.encoders.bert_checkpoint import embedded_model_dir, resolve_model_dir
        from tritonforge.export.dask.knowledge import read_labeled
        from tritonforge.export.dask.loading import train_classifier
        from tritonforge.export.dask.train import TrainRecipe, accuracy, save_trained

        console = Console()
        torch.set_num_threads(2)
        recipe = TrainRecipe(epochs=epochs, train_size=train_size, max_length=max_length,
                             pooling=pooling, seed=seed)
        model_dir = resolve_model_dir(str(model)) if model else embedded_model_dir()
        source = read_labeled(source_labeled) if source_labeled else None
        if source is not None:
            labels = [{"negative": 0, "positive": 1}.get(str(y), y) for y in source[1]]
            if any(y not in (0, 1, "0", "1") for y in labels):
                from tritonforge.errors import TritonForgeError

                raise TritonForgeError(f"--source-labeled {source_labeled}: training takes negative "
                                       "and positive texts only (found neutral ones): drop them")
            source = (source[0], [int(y) for y in labels])

        def report(epoch: int, loss: float) -> None:
            console.print(f"epoch {epoch}/{recipe.epochs}  cross-entropy {loss:.4f}")

        trained = train_classifier(model_dir, recipe, max_triples, str(graph) if graph else None,
                                   str(pivots) if pivots else None, source, on_epoch=report)
        if source is None:
            from tritonforge.export.dask.data import domain_texts
            from tritonforge.export.dask.loading import SOURCE_DOMAIN, TARGET_DOMAIN

            for domain in (SOURCE_DOMAIN, TARGET_DOMAIN):
                texts, labels = domain_texts(domain, "test")
                score = accuracy(trained, trained.injector, texts, labels)
                console.print(f"{domain} test accuracy: {score:.4f} ({len(texts)} texts)")
        save_trained(trained, model_dir, trained.injector, trained.table, out, recipe, trained.record)
        console.print(f"classifier written to {out}: `tritonforge export dask --checkpoint {out}`")

    return commands

