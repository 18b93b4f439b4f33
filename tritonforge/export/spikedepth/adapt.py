"""`tritonforge spikedepth adapt`: BiCross, label-free adaptation to another spike camera.

There are no depth labels for a new camera's spikes, so knowledge moves RGB -> simulated spikes
-> the new camera's spikes (arXiv 2208.12527):

1. **CFKD** (coarse-to-fine knowledge distillation, on the labelled source scenes): an RGB
   teacher (the monocular network on the rendered image instead of spikes) is trained first;
   the spike network's monocular branch then learns from the labels with BiCross' loss, the
   scale-invariant log loss plus an uncertainty term |u - clamp(|d - gt| / gt, 0, 1)|, and from
   the teacher: 0.01 x (a contrastive loss between the pooled coarsest features of student and
   teacher over the batch, plus the MSE between their full-resolution decoder features).
2. **UGMT** (uncertainty-guided mean teacher, on the unlabelled target spikes): a mean teacher
   (an exponential moving average of the student) predicts depth on the target windows; its
   pseudo-labels are kept where its uncertainty is below the batch's median, and the student,
   fed the windows with 1 % of the spikes flipped, learns them by the L1 of log depth (the
   uncertainty heads learn from labels only: pseudo-labels taught them to trust a copy of
   themselves, and the fusion weights by them). The learning rate decays to zero over the
   stage and the mean teacher is the network it returns: the student's last steps averaged.
3. **GLFA** (global feature alignment): the mean direction of the pooled coarsest features
   (L2-normalised) of a source batch and a target batch are pulled together.

Stage 2 keeps a labelled source batch in every step, so the network does not forget its task.
Each part can be switched off (`--no-cfkd`, `--no-ugmt`, `--no-glfa`): without CFKD the
source stage is plain supervised fine-tuning for as many epochs, without both target losses
stage 2 is source fine-tuning only, so every ablation spends the same compute.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tritonforge.errors import TritonForgeError
from tritonforge.export.spikedepth.data import SceneSet, domain_scenes, rig_of, scene_set
from tritonforge.export.spikedepth.model import DepthNet, MonoNet, NetConfig
from tritonforge.export.spikedepth.train import (
    as_inputs,
    batches,
    evaluate,
    fit,
    laplace_nll,
    mirrored,
)

DOMAINS = ("camera", "motorcycle")  # the target domains (data.DOMAINS less the source)


@dataclass(frozen=True)
class AdaptRecipe:
    domain: str = "camera"
    source_scenes: int = 800
    target_scenes: int = 400
    teacher_epochs: int = 6
    cfkd_epochs: int = 2
    adapt_epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-4
    ema: float = 0.99  # the mean teacher's decay per step (BiCross: 0.999 over far longer runs)
    feature_weight: float = 0.01
    ugmt_weight: float = 1.0
    glfa_weight: float = 0.1
    flip_rate: float = 0.01  # spikes flipped in the student's view of a target window
    cfkd: bool = True
    ugmt: bool = True
    glfa: bool = True
    eval_scenes: int = 100  # held-out scenes (or recordings of the Motorcycle scene) the report uses
    seed: int = 0

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise TritonForgeError(f"--domain {self.domain!r} is unknown: choose one of {', '.join(DOMAINS)}")
        if min(self.source_scenes, self.target_scenes, self.batch_size, self.eval_scenes) < 1 or \
                min(self.teacher_epochs, self.cfkd_epochs, self.adapt_epochs) < 0:
            raise TritonForgeError("scene counts and the batch size must be positive, epochs at least 0")

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def parts(self) -> str:
        kept = [name for name in ("cfkd", "ugmt", "glfa") if getattr(self, name)]
        return "+".join(kept).upper() or "source fine-tuning only"


def pooled(features: torch.Tensor) -> torch.Tensor:
    return features.mean(dim=(2, 3))


def si_log(mu: torch.Tensor, depth: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """The scale-invariant log loss per image, averaged."""
    g = (mu[:, 0] - torch.log(depth)).flatten(1)
    return (g.pow(2).mean(1) - lam * g.mean(1).pow(2)).mean()


def contrastive(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE: each sample's pooled student features should match its own teacher's, not the
    batch's others."""
    logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(student)))


def alignment_gap(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How far apart the two batches' mean feature directions are (pooled features L2-normalised
    first, so the loss is bounded and cannot shrink the features). Only the mean is matched: a
    target domain of one scene (the Motorcycle) has no spread across its batch to match, and
    pulling the source's spread towards none collapses the network."""
    return (F.normalize(source, dim=1).mean(0) - F.normalize(target, dim=1).mean(0)).pow(2).sum()


def image_inputs(data: SceneSet, index) -> torch.Tensor:
    return torch.from_numpy(2.0 * data.image[index][:, None] - 1.0)


def train_rgb_teacher(config: NetConfig, data: SceneSet, recipe: AdaptRecipe,
                      progress: Callable[[], None] | None = None) -> MonoNet:
    """The monocular network on the rendered image (one channel), supervised by the labels."""
    torch.manual_seed(recipe.seed)
    teacher = MonoNet(NetConfig(arch="mono", window=1, height=config.height, width=config.width,
                                width_factor=config.width_factor))
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=2e-3, weight_decay=1e-4)
    rng = np.random.default_rng(recipe.seed)
    teacher.train()
    for _epoch in range(recipe.teacher_epochs):
        for index in batches(len(data), recipe.batch_size, rng):
            image, depth = image_inputs(data, index), torch.from_numpy(data.depth[index])
            flip = torch.from_numpy(rng.random(len(index)) < 0.5).reshape(-1, 1, 1, 1)
            image = torch.where(flip, image.flip(-1), image)
            depth = torch.where(flip[:, 0], depth.flip(-1), depth)
            mu, s, _features = teacher(image)
            loss = laplace_nll(mu, s, torch.log(depth).unsqueeze(1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if progress:
            progress()
    return teacher.eval()


def cfkd_loss(teacher: MonoNet, data: SceneSet, recipe: AdaptRecipe):
    """The source stage's loss: supervised likelihood of every branch plus CFKD on the
    monocular branch (the images come from `data` by index; mirrored samples are left out of
    the distillation, whose teacher sees the image unmirrored)."""
    def loss(net: DepthNet, left, right, depth, index):
        out = net.predict(left, right)
        total = sum(laplace_nll(mu, s, torch.log(depth).unsqueeze(1)) for mu, s, _f in out.values())
        mu, s, features = out["mono"]
        truth = depth.unsqueeze(1)
        relative = torch.clamp(torch.abs(torch.exp(mu.detach()) - truth) / truth, 0, 1)
        total = total + si_log(mu, depth) + (torch.exp(s) - relative).abs().mean()
        with torch.no_grad():
            _tmu, _ts, taught = teacher(image_inputs(data, index))
        distill = contrastive(pooled(features.coarse), pooled(taught.coarse)) + \
            F.mse_loss(features.decoded, taught.decoded)
        return total + recipe.feature_weight * distill
    return loss


def adapt(net: DepthNet, recipe: AdaptRecipe, progress: Callable[[str, int], Callable[[], None]] | None = None
          ) -> tuple[DepthNet, dict]:
    """BiCross on a copy of `net`; returns it and the metrics of source-only and adapted on the
    target domain (and on held-out source scenes)."""
    if recipe.cfkd and net.mono is None:
        raise TritonForgeError("CFKD distils an RGB teacher into the monocular branch; this stereo network "
                               "has none: pass --no-cfkd, or adapt a mono or ugdf network")
    torch.set_num_threads(2)
    config = net.config
    rig = rig_of(config)
    tick = progress or (lambda _description, _total: None)
    source = scene_set("train", recipe.source_scenes, config.window, rig, seed=recipe.seed)
    target = domain_scenes(recipe.domain, recipe.target_scenes, config.window, rig, held_out=False,
                           seed=recipe.seed)  # unlabelled: training never reads its depth
    judged = domain_scenes(recipe.domain, recipe.eval_scenes, config.window, rig, seed=recipe.seed + 1)
    held_out = scene_set("test", recipe.eval_scenes, config.window, rig)
    report = {"recipe": recipe.to_json(),
              "source_only": {"target": evaluate(net, judged), "source_test": evaluate(net, held_out)}}
    student = copy.deepcopy(net)
    if recipe.cfkd_epochs:
        loss_fn = None
        if recipe.cfkd:
            step = tick("training the RGB teacher on the rendered images", recipe.teacher_epochs)
            teacher = train_rgb_teacher(config, source, recipe, step)
            loss_fn = cfkd_loss(teacher, source, recipe)
        step = tick("CFKD on the source scenes" if recipe.cfkd else "fine-tuning on the source scenes",
                    recipe.cfkd_epochs)
        # No mirroring or re-recording here, with or without CFKD: the teacher sees each scene's
        # image as rendered, and the ablation keeps everything else equal.
        fit(student, source, recipe.cfkd_epochs, recipe.batch_size, recipe.lr, recipe.seed, step,
            loss_fn=loss_fn, augment=False)
    if recipe.adapt_epochs:
        step = tick(f"adapting to the {recipe.domain} domain ({recipe.parts})", recipe.adapt_epochs)
        student = _target_stage(student, source, target, recipe, step)
    report["adapted"] = {"target": evaluate(student, judged), "source_test": evaluate(student, held_out)}
    return student.eval(), report


def worse_than_source(report: dict, branch: str) -> str | None:
    """Why `adapt`'s report says the adapted network should not replace the source-only one
    (its held-out target abs rel is higher), or None."""
    before, after = (report[row]["target"][branch]["abs_rel"] for row in ("source_only", "adapted"))
    if after > before:
        return f"the adapted network's held-out target abs rel is {after:.4f}, the source-only {before:.4f}"
    return None


def _target_stage(student: DepthNet, source: SceneSet, target: SceneSet, recipe: AdaptRecipe,
                  progress: Callable[[], None] | None) -> DepthNet:
    """The target stage; returns the mean teacher, the average of the student's last steps."""
    teacher = copy.deepcopy(student).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    rng = np.random.default_rng(recipe.seed + 1)
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.adapt_epochs * -(-len(target) // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    final = student.final
    for epoch in range(recipe.adapt_epochs):
        recorded = source.respiked(recipe.seed * 1000 + 500 + epoch)
        source_order = rng.permutation(len(source))
        for step, index in enumerate(batches(len(target), recipe.batch_size, rng)):
            student.train()
            chosen = source_order[(step * recipe.batch_size) % len(source):][:recipe.batch_size]
            left, right = as_inputs(recorded, chosen)
            depth = torch.from_numpy(recorded.depth[chosen])
            other = None if recorded.depth_right is None else torch.from_numpy(recorded.depth_right[chosen])
            left, right, depth = mirrored(student, left, right, depth, other,
                                          torch.from_numpy(rng.random(len(chosen)) < 0.5))
            own = student.predict(left, right)
            loss = sum(laplace_nll(mu, s, torch.log(depth).unsqueeze(1)) for mu, s, _f in own.values())
            if recipe.ugmt or recipe.glfa:
                t_left, t_right = as_inputs(target, index)
                out = student.predict(*(_flip_spikes(window, recipe.flip_rate, generator)
                                        for window in (t_left, t_right)))
                if recipe.ugmt:
                    with torch.no_grad():
                        mu_t, s_t, _f = teacher.predict(t_left, t_right)[final]
                    keep = (s_t < s_t.median()).float()
                    for mu, _s, _features in out.values():
                        error = torch.abs(mu - mu_t) * keep
                        loss = loss + recipe.ugmt_weight * error.sum() / keep.sum().clamp(min=1.0)
                if recipe.glfa:
                    for branch, (_mu, _s, features) in out.items():
                        if features is not None:
                            loss = loss + recipe.glfa_weight * alignment_gap(pooled(own[branch][2].coarse),
                                                                           pooled(features.coarse))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for mean, current in zip(teacher.state_dict().values(), student.state_dict().values(),
                                         strict=True):
                    if mean.dtype.is_floating_point:
                        mean.mul_(recipe.ema).add_(current.detach(), alpha=1 - recipe.ema)
                    else:
                        mean.copy_(current)
        if progress:
            progress()
    return teacher


def _flip_spikes(window: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """A window in {-1, 1} with `rate` of its spikes inverted."""
    flips = torch.rand(window.shape, generator=generator) < rate
    return torch.where(flips, -window, window)


