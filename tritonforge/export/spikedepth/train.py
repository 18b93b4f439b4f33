"""`tritonforge spikedepth train`: mono, stereo or UGDF networks on procedural spike scenes.

Every branch is trained by the Laplace negative log likelihood of its log depth,
|mu - log d| / b + log b, so its uncertainty b learns its expected error. UGDF trains both
branches and their fusion at once (the paper's joint training): the loss is the sum of the
mono, stereo and fused likelihoods, so each branch stays a depth estimator of its own and the
fusion learns which to trust where. Deterministic for a seed (2 threads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.data import SceneSet, depth_metrics, scene_set
from tritonforge.export.spikedepth.model import DepthNet, NetConfig, signed
from tritonforge.export.spikedepth.scenes import Rig
from tritonforge.safe_load import read_checkpoint
from tritonforge.safe_load import save_checkpoint as write_checkpoint

CHECKPOINT_FORMAT = "tritonforge.spikedepth/1"


@dataclass(frozen=True)
class TrainRecipe:
    arch: str = "ugdf"
    window: int = 32
    scenes: int = 2000
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    width_factor: int = 16
    disparities: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.scenes < 1 or self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise TritonForgeError(f"--scenes {self.scenes}, --epochs {self.epochs}, --batch-size "
                                   f"{self.batch_size} and --lr {self.lr} must be positive")
        self.config()  # checks the architecture and sizes

    def config(self, rig: Rig | None = None) -> NetConfig:
        rig = rig or Rig()
        return NetConfig(arch=self.arch, window=self.window, height=rig.height, width=rig.width,
                         focal=rig.focal, baseline=rig.baseline, width_factor=self.width_factor,
                         disparities=self.disparities)


def laplace_nll(mu: torch.Tensor, s: torch.Tensor, log_truth: torch.Tensor) -> torch.Tensor:
    return (torch.abs(mu - log_truth) * torch.exp(-s) + s).mean()


def batches(count: int, size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(count) if rng is not None else np.arange(count)
    for start in range(0, count, size):
        yield order[start:start + size]


def as_inputs(data: SceneSet, index) -> tuple[torch.Tensor, torch.Tensor]:
    return (signed(torch.from_numpy(data.windows(index, "left"))),
            signed(torch.from_numpy(data.windows(index, "right"))))


def supervised_loss(net: DepthNet, left: torch.Tensor, right: torch.Tensor, depth: torch.Tensor
                    ) -> torch.Tensor:
    """The joint likelihood of every branch the network has."""
    log_truth = torch.log(depth).unsqueeze(1)
    return sum(laplace_nll(mu, s, log_truth) for mu, s, _features in net.predict(left, right).values())


def mirrored(net: DepthNet, left: torch.Tensor, right: torch.Tensor, depth: torch.Tensor,
             depth_right: torch.Tensor | None, chosen: torch.Tensor):
    """The samples `chosen` ([B] bool) seen in a mirror: a stereo pair mirrored swaps its cameras
    (the mirrored right view becomes the left, with the right camera's depth), a monocular
    window just flips."""
    pick = chosen.reshape(-1, 1, 1, 1)
    if net.config.stereo:
        if depth_right is None:
            return left, right, depth
        new_left, new_right, new_depth = right.flip(-1), left.flip(-1), depth_right.flip(-1)
    else:
        new_left, new_right, new_depth = left.flip(-1), right.flip(-1), depth.flip(-1)
    return (torch.where(pick, new_left, left), torch.where(pick, new_right, right),
            torch.where(pick[:, 0], new_depth, depth))


def fit(net: DepthNet, data: SceneSet, epochs: int, batch_size: int, lr: float, seed: int,
        progress: Callable[[], None] | None = None,
        loss_fn: Callable[..., torch.Tensor] | None = None, augment: bool = True) -> DepthNet:
    """Train `net` on `data` (AdamW, one-cycle learning rate); `progress()` after each epoch.
    `augment`: each epoch after the first re-records the scenes with fresh spikes
    (`SceneSet.respiked`), and half of every batch is mirrored. `loss_fn(net, left, right,
    depth, index)` replaces the supervised loss (adaptation)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.2)
    net.train()
    for epoch in range(epochs):
        recorded = data.respiked(seed * 1000 + epoch) if augment and epoch else data
        for index in batches(len(data), batch_size, rng):
            left, right = as_inputs(recorded, index)
            depth = torch.from_numpy(recorded.depth[index])
            if augment:
                other = recorded.depth_right
                other = None if other is None else torch.from_numpy(other[index])
                chosen = torch.from_numpy(rng.random(len(index)) < 0.5)
                left, right, depth = mirrored(net, left, right, depth, other, chosen)
            if loss_fn is None:
                loss = supervised_loss(net, left, right, depth)
            else:
                loss = loss_fn(net, left, right, depth, index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress:
            progress()
    return net.eval()


def train(recipe: TrainRecipe, progress: Callable[[], None] | None = None, data: SceneSet | None = None
          ) -> DepthNet:
    """A network trained on `recipe.scenes` training scenes (the default camera)."""
    torch.set_num_threads(2)
    data = data or scene_set("train", recipe.scenes, recipe.window, seed=recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = DepthNet(recipe.config(data.rig))
    return fit(net, data, recipe.epochs, recipe.batch_size, recipe.lr, recipe.seed, progress)


def predict(net: DepthNet, data: SceneSet, batch_size: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """{branch: {"depth": [N, H, W], "uncertainty": [N, H, W]}} of every branch of `net`."""
    out: dict[str, dict[str, list]] = {}
    net.eval()
    with torch.inference_mode():
        for index in batches(len(data), batch_size):
            for branch, (mu, s, _features) in net.predict(*as_inputs(data, index)).items():
                entry = out.setdefault(branch, {"depth": [], "uncertainty": []})
                entry["depth"].append(torch.exp(mu)[:, 0].numpy())
                entry["uncertainty"].append(torch.exp(s)[:, 0].numpy())
    return {branch: {k: np.concatenate(v) for k, v in entry.items()} for branch, entry in out.items()}


def evaluate(net: DepthNet, data: SceneSet) -> dict[str, dict[str, float]]:
    """depth_metrics of every branch on `data`."""
    return {branch: depth_metrics(entry["depth"], data.depth) for branch, entry in predict(net, data).items()}


# -- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(path: Path, net: DepthNet, recipe: dict[str, Any], metrics: dict[str, Any]) -> Path:
    return write_checkpoint(path, CHECKPOINT_FORMAT, net.config.to_json(), recipe, net.state_dict(), metrics)


def load_checkpoint(path: Path) -> tuple[DepthNet, dict[str, Any]]:
    """A network saved by `save_checkpoint` and its recipe; another file is refused by name."""
    saved = read_checkpoint(path, CHECKPOINT_FORMAT, "tritonforge spikedepth train --out FILE")
    known = {f.name for f in fields(NetConfig)}
    config = NetConfig(**{k: v for k, v in saved["config"].items() if k in known})
    net = DepthNet(config)
    missing, unexpected = net.load_state_dict(saved["state_dict"], strict=False)
    if missing or unexpected:
        raise TritonForgeError(f"--checkpoint {path} does not fit a {config.arch} network: missing "
                               f"{list(missing)[:4]}, unexpected {list(unexpected)[:4]}")
    return net.eval(), dict(saved.get("recipe", {}))


def recipe_json(recipe: TrainRecipe) -> dict[str, Any]:
    return asdict(recipe)
