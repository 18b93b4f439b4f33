"""`tritonforge vit evaluate`: the backdoor screens measured on clean models and on their
deliberately poisoned controls, per architecture and seed, in one table.

Per (architecture, seed): a clean model trained on the digits, and two controls fine-tuned from
it (`poison.py`: a patch and a blend trigger, to a target class that changes with the seed).
Each model gets its clean accuracy and attack success rate, the scan's anomaly index and
suspected class (`scan.py`), and the STRIP guard's flag rates (`strip.py`) on the evaluation
digits: clean ones, and the same digits with the trigger stamped. Models are kept in `work` and
reused by a second run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.export.vit.data import CLASSES, digit_pixels
from tritonforge.export.vit.model import load_directory, save_directory
from tritonforge.export.vit.poison import (
    TRIGGERS,
    PoisonRecipe,
    Trigger,
    attack_success,
    clean_accuracy,
    poison,
)
from tritonforge.export.vit.scan import STATISTICS, ScanRecipe, scan
from tritonforge.export.vit.strip import GuardSpec, guarded, strip_scores
from tritonforge.export.vit.train import TrainRecipe, train

TARGETS = (3, 7, 1, 5, 9)  # the poisoned class of seed i is TARGETS[i % 5]


def model_for(work: Path, arch: str, seed: int, kind: str, progress=None):
    """The clean model or a poisoned control (`kind` a trigger), trained once and kept."""
    folder = work / f"{arch}_seed{seed}" / kind
    if (folder / "config.json").is_file():
        return load_directory(folder)
    if kind == "clean":
        recipe = TrainRecipe(arch=arch, seed=seed)
        model = train(recipe)
        save_directory(model, folder, {"recipe": recipe.to_json()})
        return model
    clean = model_for(work, arch, seed, "clean", progress)
    recipe = PoisonRecipe(Trigger(kind, TARGETS[seed % len(TARGETS)]), seed=seed)
    model = poison(clean, recipe)
    save_directory(model, folder, {"poison": recipe.to_json()})
    return model


def measure(model, kind: str, target: int, bank: int, recipe: ScanRecipe) -> dict[str, Any]:
    defence, _labels = digit_pixels("defence")
    pixels, labels = digit_pixels("evaluation")
    result = scan(model, np.array(defence), CLASSES, recipe)
    screen, record = guarded(model, GuardSpec(bank))
    clean_flagged = float((strip_scores(screen, pixels) < record["threshold"]).mean())
    row: dict[str, Any] = {"model": kind, "clean_accuracy": clean_accuracy(model),
                           "anomaly_index": result.anomaly_index, "suspected_class": CLASSES[result.suspect],
                           "refused": result.flagged, "scan_form": result.form,
                           **{f"anomaly_index_{form}_{statistic}": result.index_of(form, statistic)
                              for form in result.searches for statistic in STATISTICS},
                           **{f"norms_{form}": [round(float(n), 3) for n in found.norms]
                              for form, found in result.searches.items()},
                           "guard_threshold": record["threshold"],
                           "clean_flagged": clean_flagged}
    triggers = TRIGGERS if kind == "clean" else (kind,)
    for name in triggers:  # a clean model: how often each trigger is flagged without a backdoor
        trigger = Trigger(name, target)
        others = labels != target
        stamped = trigger.apply(pixels[others])
        row[f"{name}_triggered_flagged"] = float((strip_scores(screen, stamped) < record["threshold"]).mean())
        row[f"{name}_attack_success"] = attack_success(model, trigger, "evaluation")
    return row


def evaluate(archs: list[str], seeds: list[int], bank: int, work: Path,
             progress=None) -> list[dict[str, Any]]:
    rows = []
    total = len(archs) * len(seeds) * 3
    task = progress.add_task("clean and poisoned models", total=total) if progress else None
    for arch in archs:
        for seed in seeds:
            target = TARGETS[seed % len(TARGETS)]
            for kind in ("clean", *TRIGGERS):
                model = model_for(Path(work), arch, seed, kind)
                row = {"arch": arch, "seed": seed, "target": target,
                       **measure(model, kind, target, bank, ScanRecipe(seed=seed))}
                row["scan_correct"] = (row["refused"] and row["suspected_class"] == str(target)) \
                    if kind != "clean" else not row["refused"]
                rows.append(row)
                if progress:
                    progress.advance(task)
    return rows


def evaluation_table(rows: list[dict[str, Any]]):
    from tritonforge.console import new_table

    table = new_table("backdoor screens on clean models and poisoned controls (digits)",
                      "arch", "seed", "model", "target", "clean acc", "attack success", "anomaly index",
                      "suspected", "scan", "flagged clean", "flagged triggered")
    for row in rows:
        kind = row["model"]
        success = "-" if kind == "clean" else f"{row[f'{kind}_attack_success']:.3f}"
        triggered = (f"{row[f'{kind}_triggered_flagged']:.3f}" if kind != "clean" else
                     " / ".join(f"{row[f'{t}_triggered_flagged']:.3f}" for t in TRIGGERS))
        verdict = ("refused" if row["refused"] else "passed") + ("" if row["scan_correct"] else " (WRONG)")
        table.add_row(row["arch"], str(row["seed"]), kind, str(row["target"]) if kind != "clean" else "-",
                      f"{row['clean_accuracy']:.4f}", success, f"{row['anomaly_index']:.2f}",
                      row["suspected_class"], verdict, f"{row['clean_flagged']:.3f}", triggered)
    return table
