"""A search as a command runs it (`searched_genotype`), and the paper's comparison: genotypes
searched on each kind of data, and random genotypes at the same predicted latency, all trained
the same way on the digits and timed on the target in one interleaved run.

Everything `compare` makes is kept in its work folder (latency table, genotypes, trained
accuracies), so a rerun with more seeds or kinds reuses what was done.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonforge.errors import TritonForgeError
from tritonforge.export.nas.data import DATA_KINDS, Labelled, load_labelled, real_digits, split_held_out
from tritonforge.export.nas.latency import (
    NETWORK_ITERATIONS,
    LatencyTable,
    calibration_genotypes,
    measure_networks,
    obtain_table,
)
from tritonforge.export.nas.network import NetworkSize
from tritonforge.export.nas.search import SearchRecipe, search
from tritonforge.export.nas.space import Genotype, random_genotype, read_genotype, write_genotype
from tritonforge.files import write_text_atomic

SERVED = NetworkSize()  # the network every genotype is trained and served as (width 16, 5 cells)
EQUAL_LATENCY = 0.03  # a random genotype counts as equally fast within this share of the target
RANDOM_TRIES = 20_000
Say = Callable[[str], None]


def training_data(data: str, channels: int = 1, image_size: int = 8) -> tuple[Labelled, Labelled]:
    """`digits` (training and test splits) or a user's folder / .npz (20% held out)."""
    if data == "digits":
        if (channels, image_size) != (1, 8):
            raise TritonForgeError(f"the digits are 8 x 8 grayscale; --channels {channels} and --image-size "
                                   f"{image_size} are for a folder or .npz of your own")
        return real_digits("train"), real_digits("test")
    return split_held_out(load_labelled(Path(data), channels, image_size))


def searched_genotype(recipe: SearchRecipe, target: str, threads: int, batch: int, table_path: Path | None,
                      out: Path, stage=None, say: Say | None = None, table: LatencyTable | None = None,
                      measure: bool = True) -> dict[str, Any]:
    """Search on `recipe.data`, export and time the derived network on `target` (unless `measure`
    is off: `compare` times every network at once), write the genotype file with its search record
    and predicted against measured latency."""
    stage = stage or (lambda _description, _total=0: (lambda: None))
    size = SERVED
    if table is None:
        table = obtain_table(table_path, target, threads, batch, size, stage, say)
    tick = stage(f"searching on {recipe.data} (seed {recipe.seed})", recipe.epochs)
    result = search(recipe, table, lambda _epoch, _record: tick())
    predicted = table.predict(result.genotype)
    latency = {"target": target, "threads": threads, "batch": batch, "cpu": table.cpu,
               "predicted_ms": round(predicted, 4), "table": table.summary()}
    if measure:
        # timed beside the calibration's cheapest and costliest networks, in the same rounds: a
        # moment of load on the machine then weighs on all three, not on the one figure recorded
        others = dict(list(calibration_genotypes().items())[:2])
        measured = measure_networks({"searched": result.genotype, **others}, size, target, threads, batch,
                                    tick=stage(f"timing the derived network on {target}", NETWORK_ITERATIONS))
        latency["measured_ms"] = round(measured["searched"], 4)
        latency["relative_error"] = round((predicted - latency["measured_ms"]) / latency["measured_ms"], 4)
    record = {"search": {"recipe": recipe.to_json(), **result.to_json()}, "network": size.to_json(),
              "latency": latency, "genotype_text": result.genotype.describe()}
    write_genotype(out, result.genotype, record)
    return record


@dataclass(frozen=True)
class CompareRecipe:
    seeds: tuple[int, ...] = (0, 1, 2)
    kinds: tuple[str, ...] = DATA_KINDS
    search_epochs: int = 10
    train_epochs: int = 10
    search_width: int = 8
    search_layers: int = 5
    search_samples: int = 0  # 0: all 1,437
    latency_weights: tuple[float, ...] = ()
    target: str = "onnxruntime"
    threads: int = 2
    batch: int = 8

    def __post_init__(self):
        unknown = [k for k in self.kinds if k not in DATA_KINDS]
        if unknown or not self.kinds:
            raise TritonForgeError(f"--data {','.join(self.kinds) or '(empty)'}: choose among "
                                   f"{', '.join(DATA_KINDS)}")
        if not self.seeds:
            raise TritonForgeError("--seeds is empty: give at least one seed, e.g. 0,1,2")
        if any(w < 0 for w in self.latency_weights):
            raise TritonForgeError(f"--latency-weights {self.latency_weights}: weights are 0 or positive")


def equal_latency_genotype(table: LatencyTable, target_ms: float, seed: int) -> Genotype:
    """The random genotype (seeded) whose predicted latency is nearest `target_ms`; the first
    within EQUAL_LATENCY of it."""
    rng = np.random.default_rng([seed, 7])
    best, gap = None, np.inf
    for _ in range(RANDOM_TRIES):
        candidate = random_genotype(rng)
        distance = abs(table.predict(candidate) - target_ms) / target_ms
        if distance < gap:
            best, gap = candidate, distance
        if gap <= EQUAL_LATENCY:
            break
    return best


def compare(recipe: CompareRecipe, work: Path, table_path: Path | None = None, stage=None,
            say: Say | None = None) -> dict[str, Any]:
    from tritonforge.export.nas.train import TrainRecipe, accuracy, train

    stage = stage or (lambda _description, _total=0: (lambda: None))
    work = Path(work)
    cached = work / f"latency_{recipe.target}_t{recipe.threads}_b{recipe.batch}.json"
    table = obtain_table(table_path or (cached if cached.is_file() else None), recipe.target, recipe.threads,
                         recipe.batch, SERVED, stage, say)
    if table_path is None:
        table.write(cached)
    entries: list[dict[str, Any]] = []

    def searched(kind: str, seed: int, weight: float = 0.0) -> Genotype:
        name = f"{kind}_s{seed}" + (f"_w{weight:g}" if weight else "")
        path = work / "genotypes" / f"{name}.json"
        search_recipe = SearchRecipe(data=kind, seed=seed, epochs=recipe.search_epochs,
                                     width=recipe.search_width, layers=recipe.search_layers,
                                     samples=recipe.search_samples, latency_weight=weight)
        if path.is_file():  # kept from an earlier run: reused when searched with this same recipe
            genotype, record = read_genotype(path)
            if (record.get("search") or {}).get("recipe") == search_recipe.to_json():
                return genotype
        searched_genotype(search_recipe, recipe.target, recipe.threads, recipe.batch, None, path, stage, say,
                          table, measure=False)
        return read_genotype(path)[0]

    for seed in recipe.seeds:
        found = {kind: searched(kind, seed) for kind in recipe.kinds}
        entries += [{"name": f"{kind}_s{seed}", "kind": kind, "seed": seed, "latency_weight": 0.0,
                     "genotype": g} for kind, g in found.items()]
        anchor = found.get("real") or next(iter(found.values()))
        entries.append({"name": f"random_s{seed}", "kind": "random", "seed": seed, "latency_weight": 0.0,
                        "genotype": equal_latency_genotype(table, table.predict(anchor), seed)})
    for weight in recipe.latency_weights:
        entries.append({"name": f"noise_s0_w{weight:g}", "kind": "noise (latency curve)", "seed": 0,
                        "latency_weight": weight, "genotype": searched("noise", 0, weight)})
    stage(f"timing {len(entries)} networks on {recipe.target}, interleaved", 0)
    measured = measure_networks({e["name"]: e["genotype"] for e in entries}, SERVED, recipe.target,
                                recipe.threads, recipe.batch)
    training, test = real_digits("train"), real_digits("test")
    results = work / "trained"
    for entry in entries:
        entry["predicted_ms"] = round(table.predict(entry["genotype"]), 4)
        entry["measured_ms"] = round(measured[entry["name"]], 4)
        kept = results / f"{entry['name']}_e{recipe.train_epochs}.json"
        key = entry["genotype"].to_json()
        if kept.is_file() and json.loads(kept.read_text()).get("genotype") == key:
            entry["accuracy"] = json.loads(kept.read_text())["accuracy"]
            continue
        tick = stage(f"training {entry['name']} on the digits", recipe.train_epochs)
        model = train(entry["genotype"], training, test,
                      TrainRecipe(epochs=recipe.train_epochs, seed=entry["seed"]), lambda *_, t=tick: t())
        entry["accuracy"] = accuracy(model, test)
        write_text_atomic(kept, json.dumps({"genotype": key, "accuracy": entry["accuracy"]}) + "\n")
    rows = [{**{k: v for k, v in e.items() if k != "genotype"}, "genotype": e["genotype"].to_json()}
            for e in entries]
    result = {"recipe": asdict(recipe), "machine": table.cpu, "table": table.summary(), "rows": rows,
              "summary": summarise(rows)}
    write_text_atomic(work / "compare.json", json.dumps(result, indent=2) + "\n")
    return result


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per kind: mean and spread of accuracy, mean latency, and the gap to the real-data genotypes."""
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["latency_weight"] == 0 and row["kind"] != "noise (latency curve)":
            kinds.setdefault(row["kind"], []).append(row)
    summary = {kind: {"accuracy_mean": float(np.mean([r["accuracy"] for r in found])),
                      "accuracy_std": float(np.std([r["accuracy"] for r in found])),
                      "measured_ms_mean": float(np.mean([r["measured_ms"] for r in found])),
                      "predicted_ms_mean": float(np.mean([r["predicted_ms"] for r in found])),
                      "runs": len(found)} for kind, found in kinds.items()}
    if "real" in summary:
        for figures in summary.values():
            figures["accuracy_gap_points"] = 100 * (figures["accuracy_mean"]
                                                    - summary["real"]["accuracy_mean"])
    return summary


def comparison_table(result: Mapping[str, Any]) -> list[Any]:
    from tritonforge.console import new_table

    seeds = result["recipe"]["seeds"]
    recipe = result["recipe"]
    table = new_table(f"searched on each kind of data, trained on the digits ({recipe['train_epochs']} "
                      f"epochs); latency on {recipe['target']} at batch {recipe['batch']} "
                      f"({result['machine']})", "searched on", *(f"seed {s}" for s in seeds), "mean ± std",
                      "vs real (points)", "measured ms", "predicted ms")
    for kind, figures in result["summary"].items():
        accuracies = {r["seed"]: r["accuracy"] for r in result["rows"] if r["kind"] == kind}
        gap = figures.get("accuracy_gap_points")
        table.add_row(kind, *(f"{accuracies[s]:.4f}" if s in accuracies else "—" for s in seeds),
                      f"{figures['accuracy_mean']:.4f} ± {figures['accuracy_std']:.4f}",
                      "—" if gap is None or kind == "real" else f"{gap:+.2f}",
                      f"{figures['measured_ms_mean']:.3f}", f"{figures['predicted_ms_mean']:.3f}")
    tables = [table]
    curve = [r for r in result["rows"] if r["kind"] == "noise (latency curve)"]
    if curve:
        sweep = new_table("latency weight on noise (seed 0)", "latency weight", "measured ms", "predicted ms",
                          "error", "accuracy")
        for row in sorted(curve, key=lambda r: r["latency_weight"]):
            error = (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
            sweep.add_row(f"{row['latency_weight']:g}", f"{row['measured_ms']:.3f}",
                          f"{row['predicted_ms']:.3f}", f"{100 * error:+.1f}%", f"{row['accuracy']:.4f}")
        tables.append(sweep)
    return tables


def plot_comparison(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tritonforge.figures import save_figure

    figure, axes = plt.subplots(figsize=(7, 4.5))
    kinds = sorted({r["kind"] for r in result["rows"]})
    for kind in kinds:
        rows = [r for r in result["rows"] if r["kind"] == kind]
        axes.scatter([r["measured_ms"] for r in rows], [100 * r["accuracy"] for r in rows], label=kind, s=40,
                     marker="x" if kind == "random" else "o")
    recipe = result["recipe"]
    axes.set_xlabel(f"measured latency on {recipe['target']}, batch {recipe['batch']} (ms)")
    axes.set_ylabel("test accuracy on the digits (%)")
    axes.set_title(f"genotypes by search data ({result['machine']})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)
