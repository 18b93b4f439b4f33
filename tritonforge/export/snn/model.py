"""Spiking networks as TET trains them (Deng et al., ICLR 2022): LIF neurons over T time steps.

Shapes: activations travel as [B, T, ...]. Stateless layers (conv, BatchNorm, pooling, linear)
run on B·T samples at once (`Folded`); a LIF layer walks the T steps:

    u_t = tau * u_{t-1} + x_t,   s_t = [u_t > V_th],   u_t <- (1 - s_t) * u_t   (hard reset)

The spike is a comparison and a cast, so the exported graph holds Greater + Cast + Mul and no
custom operator. Training needs a gradient through the step: the triangle surrogate of width
1, d s / d u = max(0, 1 - |u - V_th|), is used only while `training` is set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

TAU = 0.5
THRESHOLD = 1.0


class TriangleSpike(torch.autograd.Function):
    """Heaviside forward; the triangle surrogate (width 1, peak 1 at the threshold) backward."""

    @staticmethod
    def forward(ctx, u: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u)
        return (u > THRESHOLD).to(u.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (u,) = ctx.saved_tensors
        return grad * torch.clamp(1.0 - (u - THRESHOLD).abs(), min=0.0)


class LIF(nn.Module):
    """Leaky integrate-and-fire over the time axis of [B, T, ...]. Records each call's spike
    rate (spikes per neuron per step), which parity compares layer by layer."""

    def __init__(self):
        super().__init__()
        self.rate: torch.Tensor | None = None  # [B], the last forward's spike rate per sample
        # Streaming: the membrane to start from (None: zeros) and the one left after the call.
        self.initial: torch.Tensor | None = None
        self.final: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.zeros_like(x[:, 0]) if self.initial is None else self.initial
        spikes = []
        for t in range(x.shape[1]):
            u = TAU * u + x[:, t]
            s = TriangleSpike.apply(u) if self.training else (u > THRESHOLD).to(u.dtype)
            u = u * (1.0 - s)
            spikes.append(s)
        out = torch.stack(spikes, dim=1)
        self.rate = out.flatten(1).mean(1)
        self.final = u
        return out


def over_steps(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """A stateless layer applied to [B, T, ...] as B·T samples, reshaped back to [B, T, ...]."""
    batch, steps = x.shape[:2]
    y = layer(x.flatten(0, 1))
    return y.view(batch, steps, *y.shape[1:])


class Folded(nn.Module):
    """Run a stateless module on [B, T, ...] as B·T samples (the TET reference's
    SeqToANNContainer: the wrapped module is `.module` there too, so state-dict keys agree)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return over_steps(self.module, x)


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))


class SpikingClassifier(nn.Module):
    """What every network of the family shares. A subclass gives its stateless input layer
    (conv + BN on one step) and the layers after it; this class runs a static image or frames
    through them, averages the logits over T as TET infers, and finds the LIF layers and the
    conv + BatchNorm pairs that export folds."""

    timesteps: int

    def input_layer(self, x: torch.Tensor) -> torch.Tensor:
        """The first conv + BN on one step: [N, C, H, W] -> [N, C', H', W']."""
        raise NotImplementedError

    def spiking_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Everything after the input layer: [B, T, C', H', W'] -> [B, T, classes]."""
        raise NotImplementedError

    def per_step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, classes] from a static image [B, C, H, W] (the input layer runs once and its
        output is repeated over T: the same as repeating the image, with T - 1 fewer convs) or
        from frames [B, T, C, H, W]."""
        if x.dim() == 4:
            first = self.input_layer(x).unsqueeze(1).expand(-1, self.timesteps, -1, -1, -1)
        else:
            first = over_steps(self.input_layer, x)
        return self.spiking_layers(first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_step_logits(x).mean(1)

    def lif_layers(self) -> list[LIF]:
        return [m for m in self.modules() if isinstance(m, LIF)]

    def spike_rates(self) -> torch.Tensor:
        """[B, layers]: the last forward's spike rate of every LIF layer."""
        return torch.stack([layer.rate for layer in self.lif_layers()], dim=1)

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, BatchNorm) submodule names, the BN right after the conv. This default finds
        every nn.Sequential(Conv2d, BatchNorm2d); a network wired otherwise lists its own."""
        pairs = []
        for name, module in self.named_modules():
            if (isinstance(module, nn.Sequential) and len(module) == 2
                    and isinstance(module[0], nn.Conv2d) and isinstance(module[1], nn.BatchNorm2d)):
                prefix = f"{name}." if name else ""
                pairs.append((f"{prefix}0", f"{prefix}1"))
        return pairs


class SpikingVGG(SpikingClassifier):
    """A VGG-style spiking classifier: [conv-BN-LIF] x widths, average-pooling after every
    second block, then a linear head per step. `forward` takes a static image [B, C, H, W]
    (the first conv + BN runs once and its output is repeated over T) or frames
    [B, T, C, H, W]; it returns the logits averaged over T, as TET infers."""

    def __init__(self, in_channels: int, classes: int, image_size: int, widths: tuple[int, ...],
                 timesteps: int):
        super().__init__()
        self.timesteps = timesteps
        self.stem = conv_bn(in_channels, widths[0])
        self.stem_lif = LIF()
        blocks: list[nn.Module] = []
        size = image_size
        for index, (cin, cout) in enumerate(zip(widths, widths[1:], strict=False)):
            blocks += [Folded(conv_bn(cin, cout)), LIF()]
            if index % 2 == 0 and size >= 4:
                blocks.append(Folded(nn.AvgPool2d(2)))
                size //= 2
        self.blocks = nn.Sequential(*blocks)
        self.head = Folded(nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * size * size, classes)))

    def input_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def spiking_layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem_lif(x)))


def tet_loss(per_step: torch.Tensor, labels: torch.Tensor, lam: float, phi: float) -> torch.Tensor:
    """TET: (1 - lambda) * mean_t CE(O_t, y) + lambda * MSE(O_t, phi), over [B, T, classes]."""
    steps = per_step.shape[1]
    ce = sum(nn.functional.cross_entropy(per_step[:, t], labels) for t in range(steps)) / steps
    mse = nn.functional.mse_loss(per_step, torch.full_like(per_step, phi)) if lam else 0.0
    return (1.0 - lam) * ce + lam * mse


class ExportGraph(nn.Module):
    """What is exported: the logits averaged over T and each LIF layer's spike rate, with every
    BatchNorm folded into the conv before it."""

    def __init__(self, model: SpikingClassifier):
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor, **named: torch.Tensor):
        """One input, whatever its name: a static image (`pixel_values`) or frames (`frames`)."""
        (x,) = (*args, *named.values())
        logits = self.model(x)
        return logits, self.model.spike_rates()


def fold_batchnorm(model: SpikingClassifier) -> SpikingClassifier:
    """The same network with each of its `conv_bn_pairs()` fused into one conv and the BN
    replaced by Identity (eval mode), in place. Pairs folded already are skipped."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for conv_name, bn_name in model.conv_bn_pairs():
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            _replace_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
            _replace_submodule(model, bn_name, nn.Identity())
    return model


def _replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)
