"""`tritonforge tune NAME`: a model's serving settings chosen by measurement, the job Triton's
Model Analyzer does, for this project's repositories.

The settings searched are those of each ONNX model that serves NAME (NAME itself, or the ONNX
steps of an ensemble such as `bert_fp32_text`): the batcher's max batch size (preferred sizes
follow it) and queue delay, the instance count, and the runtime's threads per instance
(ONNX Runtime's `intra_op_thread_count`, OpenVINO's `INFERENCE_NUM_THREADS`). Combinations that
would run more threads than this machine has cores are left out.

Every setting, today's first, is served by one local Triton on a copy of the models (the
repository itself is not touched while measuring): the copy's config is replaced, the model
reloaded, and the same real payloads sent at the same concurrency (`bench`'s load) after an
untimed warm-up. Today's setting is measured first and again last, and the better run is the
baseline: a gain is never read off a slow start. The chosen
setting is the one with the most requests per second whose p99 stays under the target without
errors. It is written as the model's new config (`ModelRepository.update_configs`: one atomic
replace per file, so a running `serve` reloads it), unless `--dry-run`.

The same config.pbtxt is what Compose and KServe serve, with Triton's own backends reading the
thread parameter; `tritonforge serve`'s python-backend wrapper reads it too (see
`tritonforge.serving.local.shadow_config`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from tritonforge.errors import TritonForgeError
from tritonforge.figures import save_figure
from tritonforge.serving.bench import LevelResult, run_bench
from tritonforge.serving.repository import ModelRepository
from tritonforge.triton_config import config_threads, preferred_batch_sizes, thread_parameter

Stage = Callable[[str, int], Callable[[], None]]


@dataclass(frozen=True)
class Setting:
    """What `tune` changes in an ONNX model's config. `threads` 0: no thread parameter (the
    backend's default; `serve --threads` for the local wrapper)."""

    max_batch_size: int
    queue_delay_us: int
    instances: int
    threads: int

    def label(self) -> str:
        threads = (f"{self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads
                   else "default threads")
        return (f"batch {self.max_batch_size}, delay {self.queue_delay_us} us, {self.instances} "
                f"instance{'s' if self.instances != 1 else ''} x {threads}")

    def to_json(self) -> dict[str, int]:
        return {"max_batch_size": self.max_batch_size, "queue_delay_us": self.queue_delay_us,
                "instances": self.instances, "threads": self.threads}


@dataclass(frozen=True)
class Trial:
    setting: Setting
    result: LevelResult
    current: bool = False  # today's config

    def meets(self, p99_ms: float) -> bool:
        return self.result.errors == 0 and self.result.ok > 0 and self.result.percentile(99) <= p99_ms

    def to_json(self) -> dict[str, Any]:
        return {**self.setting.to_json(), "current": self.current, **self.result.to_json()}


@dataclass
class TuneReport:
    name: str
    models: list[str]  # the ONNX models whose configs were tuned
    p99_ms: float
    concurrency: int
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    written: bool = False

    @property
    def current(self) -> Trial:
        """Today's setting: the better of its two measurements."""
        return max((t for t in self.trials if t.current), key=lambda t: t.result.throughput)

    @property
    def gain(self) -> float | None:
        """The chosen setting's throughput over today's."""
        if self.chosen is None or not self.current.result.throughput:
            return None
        return self.chosen.result.throughput / self.current.result.throughput

    def to_json(self) -> dict[str, Any]:
        return {"model": self.name, "tuned": self.models, "p99_ms": self.p99_ms,
                "concurrency": self.concurrency, "trials": [t.to_json() for t in self.trials],
                "chosen": self.chosen.setting.to_json() if self.chosen else None,
                "throughput_gain": round(self.gain, 3) if self.gain else None, "written": self.written}


def warmup_requests(requests: int) -> int:
    """Untimed requests before each measurement: a quarter of the measured ones, at least 32."""
    return max(32, requests // 4)


def parse_values(text: str, flag: str, low: int) -> list[int]:
    """A comma-separated list of integers, each at least `low`."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise TritonForgeError(f"{flag} {text!r} must be integers separated by commas") from None
    if not values or min(values) < low:
        raise TritonForgeError(f"{flag} {text!r} needs values of at least {low}")
    return sorted(set(values))


def candidate_settings(max_batch: Sequence[int], delays: Sequence[int], instances: Sequence[int],
                       threads: Sequence[int], cores: int) -> list[Setting]:
    """Every combination that runs at most `cores` threads at once (instances x threads)."""
    found = [Setting(b, d, i, t) for b, d, i, t in itertools.product(max_batch, delays, instances, threads)
             if i * t <= cores]
    if not found:
        raise TritonForgeError(f"every combination of --instances and --threads runs more threads than "
                               f"this machine's {cores} cores: lower them")
    return found


def tuned_models(repository: ModelRepository, name: str) -> list[str]:
    """The ONNX models that serve `name`: itself, or an ensemble's ONNX steps."""
    from tritonforge.serving.local import is_onnx_model

    config = repository.read_config(name)
    if config.platform == "ensemble":
        steps = list(dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step))
        models = [step for step in steps if is_onnx_model(repository.read_config(step))]
    else:
        models = [name] if is_onnx_model(config) else []
    if not models:
        raise TritonForgeError(f"{name!r} is served by no ONNX model (backend "
                               f"{config.backend or config.platform!r}): tune tunes ONNX models and the "
                               "ensembles that run them")
    for model in models:
        tuned = repository.read_config(model)
        if tuned.max_batch_size == 0 or tuned.HasField("sequence_batching"):
            raise TritonForgeError(f"{model!r} has no dynamic batcher (it takes whole requests, or "
                                   "streams through the sequence batcher): tune searches the dynamic "
                                   "batcher's settings, so there is nothing to tune")
    return models


def current_setting(config: mc.ModelConfig) -> Setting:
    return Setting(config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds,
                   sum(group.count or 1 for group in config.instance_group) or 1, config_threads(config))


def applied(config: mc.ModelConfig, setting: Setting) -> mc.ModelConfig:
    """`config` with `setting`: batcher, instances and threads; everything else kept."""
    new = mc.ModelConfig()
    new.CopyFrom(config)
    new.max_batch_size = setting.max_batch_size
    new.dynamic_batching.max_queue_delay_microseconds = setting.queue_delay_us
    del new.dynamic_batching.preferred_batch_size[:]
    new.dynamic_batching.preferred_batch_size.extend(preferred_batch_sizes(setting.max_batch_size))
    kind = config.instance_group[0].kind if config.instance_group else mc.ModelInstanceGroup.KIND_CPU
    del new.instance_group[:]
    new.instance_group.add(count=setting.instances, kind=kind)
    if setting.threads:
        new.parameters[thread_parameter(config)].string_value = str(setting.threads)
    elif thread_parameter(config) in new.parameters:
        del new.parameters[thread_parameter(config)]
    return new


def setting_configs(repository: ModelRepository, name: str, models: Sequence[str], setting: Setting
                    ) -> dict[str, mc.ModelConfig]:
    """The configs that serve `setting`: each tuned model's, then the ensemble's when its max
    batch size must follow (Triton requires an ensemble's to be at most each step's)."""
    configs = {model: applied(repository.read_config(model), setting) for model in models}
    if name not in configs:
        ensemble = repository.read_config(name)
        steps = [configs.get(step.model_name) or repository.read_config(step.model_name)
                 for step in ensemble.ensemble_scheduling.step]
        limit = min(step.max_batch_size for step in steps)
        if ensemble.max_batch_size != limit:
            ensemble.max_batch_size = limit
            configs[name] = ensemble
    return configs


def copy_models(repository: ModelRepository, name: str, target: Path) -> ModelRepository:
    """`name` and the models it runs, copied into `target` (a repository of their own)."""
    config = repository.read_config(name)
    members = [name, *dict.fromkeys(step.model_name for step in config.ensemble_scheduling.step)]
    target.mkdir(parents=True)
    for member in members:
        shutil.copytree(repository.root / member, target / member)
    return ModelRepository(target)


def reload(server, attempts: int = 4) -> None:
    """Bring the local server up to date with its repository (a change is taken once it has
    held for two looks) and fail if a model did not load."""
    for _ in range(attempts):
        done = server.sync()
        failed = [line for line in done if line.startswith(("could not", "not loading"))]
        if failed:
            raise TritonForgeError(f"a tried setting did not load: {failed[0]}")
        if done:
            return
    raise TritonForgeError("the local server did not pick up the tried config: see its log")


def tune(repo: Path | str, name: str, settings: Sequence[Setting], p99_ms: float = 200.0,
         concurrency: int = 16, requests: int = 300, threads: int = 2, dry_run: bool = False,
         stage: Stage | None = None) -> TuneReport:
    """Measure today's setting and each of `settings` for `name` (see the module doc); write
    the best one under `p99_ms` into `repo` unless `dry_run` or it is today's."""
    from tritonforge.serving.client import bench_payloads, connect, model_info
    from tritonforge.serving.local import LocalTriton

    if p99_ms <= 0:
        raise TritonForgeError(f"--p99-ms {p99_ms} must be positive")
    if concurrency < 1 or requests < 1:
        raise TritonForgeError(f"--concurrency {concurrency} and --requests {requests} must be at least 1")
    repository = ModelRepository(repo)
    if name not in repository.models():
        raise TritonForgeError(f"no model {name!r} in {repository.root} (models: "
                               f"{', '.join(repository.models()) or 'none'}): export it first, or pass "
                               "--repo")
    models = tuned_models(repository, name)
    today = current_setting(repository.read_config(models[0]))
    report = TuneReport(name, models, p99_ms, concurrency)
    stage = stage or (lambda _description, _total: (lambda: None))
    with tempfile.TemporaryDirectory(prefix="tritonforge-tune-") as scratch:
        trial_repository = copy_models(repository, name, Path(scratch) / "models")
        stage(f"starting a local Triton on a copy of {name}", 0)
        with LocalTriton(trial_repository.root, http_port=0, grpc_port=0, metrics_port=0,
                         threads=threads, log_file=Path(scratch) / "triton.log") as server:
            endpoint = server.grpc_endpoint
            info = model_info(connect(endpoint), name, endpoint)
            _kind, payloads = bench_payloads(info, repository.root)
            server.sync()  # the first look at the copy, against which changes are seen
            # Today's setting is measured first and again last: the machine's drift shows, and
            # the better of the two is the baseline (a gain is never read off a slow start).
            order = [today, *[s for s in settings if s != today], today]
            loaded = today
            for setting in order:
                if setting != loaded:
                    stage(f"loading {setting.label()}", 0)
                    trial_repository.update_configs(
                        lambda s=setting: setting_configs(trial_repository, name, models, s))
                    reload(server)
                    loaded = setting
                # Untimed first: the runtime meets each request shape once (OpenVINO and ONNX
                # Runtime prepare per shape) before the measured requests.
                # The first warm-up is a whole pass: the server's other steps warm up with it.
                warmup = requests if not report.trials else warmup_requests(requests)
                run_bench(endpoint, [(name, "dynamic")], payloads, [concurrency], warmup,
                          None, lambda _d, total, s=setting: stage(f"warming up {s.label()}", total))
                result = run_bench(endpoint, [(name, "dynamic")], payloads, [concurrency], requests,
                                   None, lambda _d, total, s=setting: stage(s.label(), total))[0]
                report.trials.append(Trial(setting, result, current=setting == today))
    meeting = [trial for trial in report.trials if trial.meets(p99_ms)]
    if not meeting:
        lowest = min(report.trials, key=lambda t: t.result.percentile(99))
        raise TritonForgeError(
            f"no setting kept p99 under {p99_ms:g} ms at concurrency {concurrency} (the lowest was "
            f"{lowest.result.percentile(99):.0f} ms, {lowest.setting.label()}): nothing was written; "
            "raise --p99-ms or lower --concurrency")
    report.chosen = max(meeting, key=lambda t: t.result.throughput)
    if report.chosen.current:  # today's setting, measured twice: the chosen is its better run
        report.chosen = report.current if report.current.meets(p99_ms) else report.chosen
    if not dry_run and not report.chosen.current:
        repository.update_configs(lambda: setting_configs(repository, name, models, report.chosen.setting))
        report.written = True
    return report


def plot_trials(report: TuneReport, path: Path) -> Path:
    """Each setting's throughput against its p99, today's and the chosen marked, the target drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    for trial in report.trials:
        marker, colour = ("s", "C1") if trial.current else ("o", "C0")
        if trial is report.chosen:
            marker, colour = "*", "C2"
        axes.scatter(trial.result.throughput, trial.result.percentile(99), marker=marker, color=colour,
                     s=120 if trial is report.chosen else 40, zorder=3)
    axes.axhline(report.p99_ms, color="C3", linestyle="--", linewidth=1,
                 label=f"p99 target {report.p99_ms:g} ms")
    axes.scatter([], [], marker="s", color="C1", label="today's config")
    axes.scatter([], [], marker="*", color="C2", s=120, label="chosen")
    axes.scatter([], [], marker="o", color="C0", label="tried")
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_title(f"tune {report.name}: concurrency {report.concurrency}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def default_threads() -> str:
    """--threads' default: 1 and every power of two up to this machine's cores."""
    cores = os.cpu_count() or 1
    values = [1]
    while values[-1] * 2 <= cores:
        values.append(values[-1] * 2)
    return ",".join(map(str, values))

