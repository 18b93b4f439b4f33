"""Building a DASK classifier for export or training: weights, tokenizer and knowledge table.

Every loaded classifier carries what its inputs are made with: `tokenizer` (a `tokenizers`
Tokenizer), `table` (pivot word -> branch texts), `injector` (the KnowledgeInjector over both)
and `record` (where each came from, for the manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tritonforge.errors import TritonForgeError
from tritonforge.export.dask.knowledge import (
    WORDNET_GRAPH,
    compute_pivots,
    injection_table,
    load_graph,
    load_pivots,
)
from tritonforge.export.dask.model import (
    KnowledgeClassifier,
    empty_classifier,
    load_classifier_state,
    new_classifier,
)
from tritonforge.export.dask.train import CHECKPOINT_FILE, RECIPE_FILE, TrainRecipe, save_trained, train
from tritonforge.safe_load import load_weights

SOURCE_DOMAIN, TARGET_DOMAIN = "airlines", "technology"
MIN_OCCUR, NUM_PIVOTS = 10, 500


def knowledge_table(graph: str | None, pivots: str | None, max_triples: int,
                    source: tuple[list[str], Any] | None = None,
                    target: list[str] | None = None) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The injection table for `graph` (default: the shipped WordNet graph) and the pivots of
    a file, or computed by DASK's polarity rule from labelled source and unlabelled target text
    (default: the demo domains)."""
    graph_path = Path(graph).expanduser() if graph else WORDNET_GRAPH
    knowledge = load_graph(graph_path)
    if pivots:
        words, pivot_source = load_pivots(Path(pivots).expanduser()), str(pivots)
    else:
        if source is None or target is None:
            from tritonforge.export.dask.data import domain_texts

            source = domain_texts(SOURCE_DOMAIN, "train")
            target = domain_texts(TARGET_DOMAIN, "train")[0]
            pivot_source = f"computed from the demo domains ({SOURCE_DOMAIN} -> {TARGET_DOMAIN})"
        else:
            pivot_source = "computed from the training text"
        words = [w for w, _score in compute_pivots(source[0], source[1], target, MIN_OCCUR, NUM_PIVOTS)]
    table = injection_table(knowledge, words, max_triples) if max_triples else {}
    return table, {"graph": str(graph_path), "pivots": pivot_source, "pivot_words": len(words),
                   "knowledge_words": len(table)}


def attach(model: KnowledgeClassifier, tokenizer, table: dict[str, list[str]], max_length: int,
           max_triples: int, record: dict[str, Any]) -> KnowledgeClassifier:
    from tritonforge.export.dask.knowledge_injection import InjectionError, KnowledgeInjector

    try:
        model.injector = KnowledgeInjector(tokenizer, table, max_length, max_triples)
    except InjectionError as exc:
        raise TritonForgeError(str(exc)) from None
    model.tokenizer, model.table, model.record = tokenizer, table, record
    return model


def read_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise TritonForgeError(f"{path} is missing: the BERT directory needs its tokenizer.json")
    return Tokenizer.from_file(str(path))


def load_classifier(options, stage=None) -> KnowledgeClassifier:
    """The classifier an export's options name (see DaskOptions)."""
    from tritonforge.encoders.bert_checkpoint import embedded_model_dir, resolve_model_dir

    if options.checkpoint is None:
        return train_default(options, stage)
    checkpoint = Path(options.checkpoint).expanduser()
    if checkpoint.is_dir():
        return load_trained(checkpoint, options)
    model_dir = resolve_model_dir(options.model) if options.model else embedded_model_dir()
    state = read_state_dict(checkpoint)
    classes = int(state["classifier.3.weight"].shape[0]) if "classifier.3.weight" in state else 2
    model = empty_classifier(model_dir, classes, options.pooling)
    load_classifier_state(model, state, str(checkpoint))
    table, record = knowledge_table(options.graph, options.pivots, options.max_triples)
    return attach(model.eval(), read_tokenizer(model_dir), table, options.max_length, options.max_triples,
                  {"weights": f"reference BertClassifier state dict {checkpoint}", "model": str(model_dir),
                   "pooling": options.pooling, **record})


def load_trained(folder: Path, options) -> KnowledgeClassifier:
    """A folder written by `tritonforge dask train`: its own config, tokenizer and knowledge."""
    from tritonforge.export.dask.knowledge_injection import InjectionError, read_knowledge

    recipe_file = folder / RECIPE_FILE
    if not (folder / CHECKPOINT_FILE).is_file() or not recipe_file.is_file():
        raise TritonForgeError(f"--checkpoint {folder} is not a `tritonforge dask train` folder (no "
                               f"{CHECKPOINT_FILE} and {RECIPE_FILE}); give one, or a state dict file")
    saved = json.loads(recipe_file.read_text())
    try:
        knowledge = read_knowledge(folder / "knowledge.json")
    except InjectionError as exc:
        raise TritonForgeError(str(exc)) from None
    model = empty_classifier(folder, int(saved.get("classes", 2)), saved.get("pooling", "first"))
    load_classifier_state(model, read_state_dict(folder / CHECKPOINT_FILE), str(folder / CHECKPOINT_FILE))
    record = {"weights": f"`tritonforge dask train` folder {folder}", "pooling": model.pooling,
              "knowledge_words": len(knowledge["words"]),
              **{k: v for k, v in saved.items() if k not in ("classes", "pooling")}}
    return attach(model.eval(), read_tokenizer(folder), knowledge["words"], options.max_length,
                  knowledge["max_triples"], record)


def read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise TritonForgeError(f"--checkpoint {path} does not exist: give a `tritonforge dask train` "
                               "folder or a state dict saved with torch.save(model.state_dict(), ...)")
    state = load_weights(path, f"--checkpoint {path}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TritonForgeError(f"--checkpoint {path} holds no state dict of tensors")
    return state


def train_classifier(model_dir: Path, recipe: TrainRecipe, max_triples: int = 2, graph: str | None = None,
                     pivots: str | None = None, source: tuple[list[str], Any] | None = None,
                     on_step=None, on_epoch=None) -> KnowledgeClassifier:
    """A new classifier on `model_dir`'s BERT, fine-tuned on `source` (labelled texts; default:
    the demo's source domain) injected with the knowledge table."""
    from tritonforge.export.dask.data import domain_texts

    if source is None:
        source = domain_texts(SOURCE_DOMAIN, "train", limit=recipe.train_size)
        target = domain_texts(TARGET_DOMAIN, "train")[0]
        table, record = knowledge_table(graph, pivots, max_triples)
    else:  # the user's labelled text is both sides of the pivot rule (a pivot file wins)
        target = None
        table, record = knowledge_table(graph, pivots, max_triples, source, source[0])
    model = attach(new_classifier(model_dir, pooling=recipe.pooling), read_tokenizer(model_dir), table,
                   recipe.max_length, max_triples, {"model": str(model_dir), **record})
    texts, labels = source[0][:recipe.train_size], source[1][:recipe.train_size]
    train(model, model.injector, texts, labels, recipe, on_step, on_epoch)
    model.record = {**model.record, "trained_on": len(texts), "target_texts": len(target or [])}
    return model


def train_default(options, stage=None) -> KnowledgeClassifier:
    """`export dask` without --checkpoint: `dask train`'s default, trained now, in memory."""
    import tempfile

    from tritonforge.encoders.bert_checkpoint import embedded_model_dir

    recipe = TrainRecipe()
    steps = recipe.epochs * -(-recipe.train_size // recipe.batch_size)
    tick = stage("fine-tuning the DASK classifier on the source domain", steps) if stage else None
    model = train_classifier(embedded_model_dir(), recipe, options.max_triples,
                             on_step=tick if callable(tick) else None)
    with tempfile.TemporaryDirectory() as scratch:  # through the folder format, as a user's would be
        save_trained(model, embedded_model_dir(), model.injector, model.table, Path(scratch), recipe,
                     model.record)
        loaded = load_trained(Path(scratch), options)
    loaded.record = {**model.record, "weights": "trained by this export (`dask train` defaults), kept "
                                                "in the version folder"}
    loaded.trained_here = (recipe, model.record)  # the export keeps it beside model.onnx
    return loaded
