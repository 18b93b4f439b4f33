"""`tritonforge dask train`: fine-tune a knowledge-injected classifier on labelled source text.

The classifier (`model.py`) starts from any BERT directory (the embedded MiniLM by default),
its head random; every text is injected (`knowledge_injection.py`) with the pivots' knowledge
exactly as it will be served, and the model is trained with cross-entropy (AdamW, linear
decay). DASK's pseudo-label pivot updates and its domain-adversarial terms are training
research and stay in the reference; this is the supervised source-domain step.

The output folder is self-contained: `classifier.pt` (a state dict in the reference's
`BertClassifier` layout), the BERT `config.json` and tokenizer files, the `knowledge.json`
table it was trained with, and `dask.json` (the recipe).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.dask.model import POOLING_MODES, KnowledgeClassifier, inject_inputs

CHECKPOINT_FILE = "classifier.pt"
RECIPE_FILE = "dask.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class TrainRecipe:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 5e-5
    max_length: int = 128  # injected tokens per training text (tweets are short)
    train_size: int = 1600  # balanced source texts
    pooling: str = "first"
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.train_size < 2:
            raise TritonForgeError(f"--epochs {self.epochs}, --batch-size {self.batch_size} and "
                                   f"--train-size {self.train_size} must be positive (train size at least 2)")
        if self.pooling not in POOLING_MODES:
            raise TritonForgeError(f"--pooling {self.pooling!r}: choose one of {', '.join(POOLING_MODES)}")


def batch_tensors(injector, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(array) for name, array in inject_inputs(injector, texts).items()}


@torch.inference_mode()
def predict(model: KnowledgeClassifier, injector, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Probabilities [N, classes]."""
    model.eval()
    parts = [model(**batch_tensors(injector, texts[i:i + batch_size]))[1].numpy()
             for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts)


def accuracy(model: KnowledgeClassifier, injector, texts: Sequence[str], labels: np.ndarray) -> float:
    return float((predict(model, injector, texts).argmax(1) == labels).mean())


def train(model: KnowledgeClassifier, injector, texts: Sequence[str], labels: np.ndarray, recipe: TrainRecipe,
          on_step: Callable[[], None] | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> KnowledgeClassifier:
    """Fine-tune in place; `on_step` after each batch, `on_epoch(epoch, mean loss)`."""
    if len(texts) != len(labels):
        raise TritonForgeError(f"{len(texts)} texts but {len(labels)} labels")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
        steps = recipe.epochs * -(-len(texts) // recipe.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / steps))
        generator = torch.Generator().manual_seed(recipe.seed)
        targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        for epoch in range(recipe.epochs):
            model.train()
            total = 0.0
            for batch in torch.randperm(len(texts), generator=generator).split(recipe.batch_size):
                logits, _probabilities = model(**batch_tensors(injector, [texts[i] for i in batch]))
                loss = torch.nn.functional.cross_entropy(logits, targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
                if on_step:
                    on_step()
            if on_epoch:
                on_epoch(epoch + 1, total / len(texts))
    return model.eval()


def save_trained(model: KnowledgeClassifier, model_dir: Path, injector, table: dict[str, list[str]],
                 out: Path, recipe: TrainRecipe, record: dict[str, Any]) -> Path:
    """Write the self-contained output folder (see the module doc); returns it."""
    from tritonforge.export.dask.knowledge_injection import write_knowledge

    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / CHECKPOINT_FILE)
    model.bert.config.to_json_file(str(out / "config.json"))
    for name in TOKENIZER_FILES:
        source = Path(model_dir) / name
        if source.is_file() and source.resolve() != (out / name).resolve():
            shutil.copy2(source, out / name)
    write_knowledge(out, table, injector.max_length, injector.max_triples, injector.lengths)
    (out / RECIPE_FILE).write_text(json.dumps({"recipe": asdict(recipe), "pooling": model.pooling,
                                               "classes": int(model.classifier[-1].out_features),
                                               **record}, indent=2) + "\n")
    return out
