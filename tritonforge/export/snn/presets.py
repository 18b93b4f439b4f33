"""The TET paper's own networks, loading checkpoints of its reference code
(Gus-Lab/temporal_efficient_training: models/VGG_models.py, models/resnet_models.py, models/layers.py).

Attributes are named so that `state_dict()` keys are the reference's:

    vggsnn    features.{0,1,3,4,6,7,9,10}.fwd.module.{0,1}.*   Layer = SeqToANNContainer(conv, BN) + LIF
              classifier.module.{weight,bias}                 features 2, 5, 8, 11 pool (no weights)
    resnet19  conv1.weight  bn1.bn.*  fc1.*  fc2.*
              layer{1,2,3}.{i}.conv{1,2}.weight  layer{1,2,3}.{i}.bn{1,2}.bn.*
              layer{1,2,3}.0.downsample.layer.module.weight  layer{1,2,3}.0.downsample.bn.bn.*

The reference's ResNet registers some modules twice, so its checkpoints also hold aliases of
those tensors: tdBatchNorm keeps its BatchNorm as `bn` and again as `seqbn.module`; tdLayer(conv,
bn) holds the block's conv and tdBatchNorm again as `conv1_s.layer.module` and `conv1_s.bn`;
tdLayer(fc) holds fc again as `fc1_s.layer.module`. Our ResNet19 has the canonical names only;
the loader drops each alias after checking it equals the tensor it aliases. The reference also
calls one LIFSpike several times per block; LIFSpike keeps no state between calls, so distinct
LIF instances compute the same and let spike rates be recorded per use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.snn.model import LIF, Folded, SpikingClassifier, over_steps
from tritonforge.safe_load import load_weights

SUMMED_SHARE = 0.3  # --random-init: the share of the mean each of two summed terms gets
SHOWN = 5  # key names an error lists before "and N more"


class ConvBNLIF(nn.Module):
    """The reference's `Layer`: conv (with bias) + BatchNorm over B·T samples, then LIF."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.fwd = Folded(nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)))
        self.act = LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fwd(x))


class VGGSNN(SpikingClassifier):
    """The reference's VGGSNN with average pooling, for CIFAR10-DVS event frames [B, T, 2, 48, 48]:
    eight conv-BN-LIF layers, AvgPool2d(2) after every second one (48 -> 3), Linear(512·3·3)."""

    PLAN = (64, 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512, "pool")

    def __init__(self, timesteps: int, classes: int = 10):
        super().__init__()
        self.timesteps = timesteps
        layers: list[nn.Module] = []
        channels = 2
        for item in self.PLAN:
            if item == "pool":
                layers.append(Folded(nn.AvgPool2d(2)))
            else:
                layers.append(ConvBNLIF(channels, item))
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = Folded(nn.Linear(512 * 3 * 3, classes))
        for module in self.modules():  # as the reference initialises its convs
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def input_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[0].fwd.module(x)

    def spiking_layers(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[1:](self.features[0].act(x))
        return self.classifier(x.flatten(2))


class StepBatchNorm(nn.Module):
    """BatchNorm2d over [B, T, C, H, W] as B·T samples, held as `.bn` (the reference's tdBatchNorm
    without its `seqbn` alias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return over_steps(self.bn, x)


class Downsample(nn.Module):
    """The shortcut's 1x1 conv + BN (the reference's tdLayer(conv1x1, tdBatchNorm))."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = Folded(nn.Conv2d(cin, cout, 1, stride, bias=False))
        self.bn = StepBatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.layer(x))


class BasicBlock(nn.Module):
    """conv-BN-LIF, conv-BN, plus the shortcut, then LIF: the reference's BasicBlock."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = StepBatchNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = StepBatchNorm(cout)
        self.downsample = Downsample(cin, cout, stride) if stride != 1 or cin != cout else None
        self.spike1 = LIF()
        self.spike2 = LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spike1(self.bn1(over_steps(self.conv1, x)))
        out = self.bn2(over_steps(self.conv2, out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.spike2(out + shortcut)


class ResNet19(SpikingClassifier):
    """The reference's resnet19 for CIFAR images [B, 3, 32, 32] (or frames [B, T, 3, 32, 32]):
    a 3x3 stem to 64 channels, BasicBlocks [3, 3, 2] of widths 128/256/512 (the last two stages
    stride 2), global average pooling, fc1 512 -> 256, LIF, fc2 256 -> classes."""

    STAGES = ((128, 3, 1), (256, 3, 2), (512, 2, 2))  # (width, blocks, first stride)

    def __init__(self, timesteps: int, classes: int = 10):
        super().__init__()
        self.timesteps = timesteps
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = StepBatchNorm(64)
        self.spike = LIF()
        channels = 64
        for index, (width, blocks, stride) in enumerate(self.STAGES, start=1):
            stage = [BasicBlock(channels, width, stride)]
            stage += [BasicBlock(width, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            channels = width
        self.avgpool = Folded(nn.AdaptiveAvgPool2d(1))
        self.fc1 = nn.Linear(512, 256)
        self.fc1_spike = LIF()
        self.fc2 = nn.Linear(256, classes)

    def input_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1.bn(self.conv1(x))

    def spiking_layers(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.spike(x))))
        x = self.avgpool(x).flatten(2)
        return over_steps(self.fc2, self.fc1_spike(over_steps(self.fc1, x)))

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        pairs = [("conv1", "bn1.bn")]
        for name, block in self.named_modules():
            if isinstance(block, BasicBlock):
                pairs += [(f"{name}.conv1", f"{name}.bn1.bn"), (f"{name}.conv2", f"{name}.bn2.bn")]
                if block.downsample is not None:
                    pairs.append((f"{name}.downsample.layer.module", f"{name}.downsample.bn.bn"))
        return pairs

    def summed_norms(self) -> list[str]:
        """BatchNorms whose outputs a block adds before its LIF (the residual branch, the
        downsampled shortcut)."""
        return [bn for _conv, bn in self.conv_bn_pairs() if bn.endswith(("bn2.bn", "downsample.bn.bn"))]


# The reference's alias keys, rewritten in turn to the key they alias (see the module docstring):
# conv1_s.bn.seqbn.module.weight -> bn1.seqbn.module.weight -> bn1.bn.weight.
RESNET_ALIASES = (
    (r"(^|\.)conv(\d)_s\.layer\.module\.", r"\1conv\2."),  # tdLayer(conv, bn).layer.module is conv
    (r"(^|\.)conv(\d)_s\.bn\.", r"\1bn\2."),  # tdLayer(conv, bn).bn is bn
    (r"(^|\.)fc(\d)_s\.layer\.module\.", r"\1fc\2."),  # tdLayer(fc).layer.module is fc
    (r"(^|\.)seqbn\.module\.", r"\1bn."),  # tdBatchNorm.seqbn.module is its bn
)


@dataclass(frozen=True)
class Preset:
    """One of the reference's architectures: how to build it and what it takes as input."""

    network: type[SpikingClassifier]
    input_kind: str  # "frames": [B, T, *input_shape]; "image": a static [B, *input_shape]
    input_shape: tuple[int, ...]
    timesteps: int  # the paper's T for the dataset the reference trains it on
    mean: tuple[float, ...] | None = None  # the reference's input normalisation; None: raw input
    std: tuple[float, ...] | None = None
    aliases: tuple[tuple[str, str], ...] = ()  # (regex, replacement): alias key -> canonical key


PRESETS: dict[str, Preset] = {
    # CIFAR10-DVS: 10 frames of the two event polarities, resized to 48x48, values in [0, 1].
    "vggsnn": Preset(VGGSNN, "frames", (2, 48, 48), timesteps=10),
    # CIFAR-10, normalised as the reference's data_loaders.build_cifar does.
    "resnet19": Preset(ResNet19, "image", (3, 32, 32), timesteps=4,
                       mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                       aliases=RESNET_ALIASES),
}


def canonical_key(key: str, aliases: tuple[tuple[str, str], ...]) -> str:
    """The key `key` aliases (itself when it is no alias)."""
    for pattern, replacement in aliases:
        key = re.sub(pattern, replacement, key)
    return key


def drop_aliases(state: dict[str, torch.Tensor], aliases: tuple[tuple[str, str], ...],
                 source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`state` without the alias keys whose canonical key it also holds, each alias having been
    checked equal to that tensor. An alias without its canonical key stays (and is reported as
    unexpected, next to the missing canonical key)."""
    kept = {}
    for key, value in state.items():
        canonical = canonical_key(key, aliases)
        if canonical == key or canonical not in state:
            kept[key] = value
            continue
        target = state[canonical]
        if value.shape != target.shape or not torch.equal(value, target):
            raise TritonForgeError(
                f"{source}: {key} should be an alias of {canonical} (the reference registers the "
                f"same module under both names) but its values differ: the checkpoint was edited "
                f"or is not the reference's resnet; re-save it from the reference model")
    return kept


def load_reference_checkpoint(arch: str, path: Path, timesteps: int) -> SpikingClassifier:
    """A preset network (eval mode) with the weights of a checkpoint saved by the reference code:
    a state dict, bare or under "state_dict"/"model", keys optionally prefixed "module."
    (nn.DataParallel). Every key must match, unlike the reference's own strict=False."""
    if arch not in PRESETS:
        raise TritonForgeError(f"unknown architecture {arch!r}: choose one of {', '.join(PRESETS)}")
    if timesteps < 1:
        raise TritonForgeError(f"timesteps must be at least 1, got {timesteps}")
    preset, path = PRESETS[arch], Path(path).expanduser()
    state = _read_state_dict(path)
    state = drop_aliases(state, preset.aliases, source=str(path))
    model = preset.network(timesteps)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        guess = _which_preset(state)
        hint = (f"; its keys are those of {guess!r}: load it as {guess}" if guess and guess != arch
                else f"; is it a checkpoint of {preset.network.__name__} from the TET reference?")
        raise TritonForgeError(
            f"{path} does not fit {arch} ({preset.network.__name__}): "
            f"{_listing(missing, 'missing')}, {_listing(unexpected, 'unexpected')}{hint}")
    wrong = [f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
             for key, value in expected.items() if state[key].shape != value.shape]
    if wrong:
        raise TritonForgeError(f"{path} does not fit {arch} ({preset.network.__name__}): "
                               f"{_listing(wrong, 'tensor(s) of another shape')}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TritonForgeError(f"{path}: no such checkpoint file; give the .pth the TET reference "
                               "saved with torch.save(model.state_dict(), ...)")
    saved: Any = load_weights(path, str(path), "re-save only the weights, torch.save(model.state_dict(), "
                              "path), where the reference code is installed")
    if isinstance(saved, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(saved.get(wrapper), dict):
                saved = saved[wrapper]
                break
    if not isinstance(saved, dict) or not saved:
        raise TritonForgeError(f"{path} holds {type(saved).__name__}, not a state dict of tensors")
    not_tensors = [key for key, value in saved.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise TritonForgeError(f"{path} is not a state dict: {_listing(not_tensors, 'non-tensor entries')}")
    if all(key.startswith("module.") for key in saved):  # saved from nn.DataParallel
        saved = {key.removeprefix("module."): value for key, value in saved.items()}
    return saved


def _which_preset(state: dict[str, torch.Tensor]) -> str | None:
    """The preset whose keys are exactly `state`'s (built on the meta device: no weights)."""
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            keys = set(preset.network(1).state_dict())
        if {canonical_key(key, preset.aliases) for key in state} == keys:
            return name
    return None


def _listing(names: list[str], what: str) -> str:
    if not names:
        return f"no {what} keys"
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{len(names)} {what}: {', '.join(names[:SHOWN])}{more}"


@torch.no_grad()
def activate_random(model: SpikingClassifier, inputs: torch.Tensor, mean: float = 0.5, std: float = 0.5,
                    logit_std: float = 4.0) -> SpikingClassifier:
    """Data-dependent scaling of a randomly initialised network (`--random-init`), in place.

    With random weights and BatchNorm's default statistics the spikes die out within a layer or
    two, and an all-silent network passes any parity check; its logits, nearly tied, would flip
    their argmax on any rounding. So, in forward order, each BatchNorm takes the mean and
    variance of the activations that reach it on `inputs` and scales them to `mean` +- `std`
    (a unit then crosses the threshold, 1.0, about a sixth of the time on its own), hidden
    Linear layers are scaled the same way, and the last Linear so its logits spread by
    `logit_std`, as a trained classifier's do.
    """
    model.eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    layers = [model.get_submodule(name) for _conv, name in model.conv_bn_pairs()] + linears
    # Two terms added before one LIF: each gets a part of the mean, or their sum sits right at
    # the threshold, where the least rounding flips a spike.
    summed = {id(model.get_submodule(name)) for name in getattr(model, "summed_norms", list)()}
    for layer in layers:
        values = _observed(model, inputs, layer, before=isinstance(layer, nn.BatchNorm2d))
        centre, spread = values.mean(1), values.std(1, unbiased=False).clamp(min=1e-6)
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(centre)
            layer.running_var.copy_(spread ** 2)
            layer.weight.fill_(std)
            layer.bias.fill_(mean * SUMMED_SHARE if id(layer) in summed else mean)
        elif layer is linears[-1]:
            scale = logit_std / values.std()
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
        else:  # per unit: (W x + b - centre) * std / spread + mean
            layer.weight.mul_((std / spread)[:, None])
            layer.bias.copy_((layer.bias - centre) * std / spread + mean)
    return model


def _observed(model: nn.Module, inputs: torch.Tensor, layer: nn.Module, before: bool) -> torch.Tensor:
    """What reaches `layer` (before) or leaves it, on `inputs`: [channels or units, values]."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, args, out: seen.append(args[0] if before else out))
    try:
        model(inputs)
    finally:
        handle.remove()
    return torch.cat([x.transpose(0, 1).flatten(1) for x in seen], dim=1)
