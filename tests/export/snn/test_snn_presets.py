"""The TET reference's VGGSNN and ResNet19 as `snn` presets, loading the reference's checkpoints.

No trained reference checkpoint ships offline, so every test uses random weights (with random
BatchNorm statistics, so that the neurons spike) saved in the reference's state-dict layout.
The layout was read from Gus-Lab/temporal_efficient_training, models/{VGG_models,resnet_models,
layers}.py; `reference_resnet19_layout` below writes down the aliases its ResNet registers.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from tritonforge.errors import TritonForgeError
from tritonforge.export.snn.model import fold_batchnorm
from tritonforge.export.snn.presets import PRESETS, VGGSNN, ResNet19, load_reference_checkpoint

T = 2


def with_random_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN (statistics and affine) so that folding has something to fold and the
    neurons fire; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) * 2 + 1)
            module.bias.data.copy_(torch.rand(channels, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def vggsnn() -> VGGSNN:
    torch.manual_seed(0)
    return with_random_batchnorm(VGGSNN(T))


@pytest.fixture(scope="module")
def resnet19() -> ResNet19:
    torch.manual_seed(0)
    return with_random_batchnorm(ResNet19(T))


def frames(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, T, 2, 48, 48, generator=torch.Generator().manual_seed(1))


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_resnet19_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our canonical ResNet19 state dict as the reference's nn.DataParallel(resnet19()) saves it:
    every tensor under the extra names the reference registers, then the "module." prefix.

        tdBatchNorm        X.bn.*            also X.seqbn.module.*
        tdLayer(conv, bn)  [P.]convN.weight  also [P.]convN_s.layer.module.weight
                           [P.]bnN.bn.*      also [P.]convN_s.bn.bn.*, [P.]convN_s.bn.seqbn.module.*
        tdLayer(fc)        fcN.*             also fcN_s.layer.module.*
    """
    layout = dict(state)
    for key, value in state.items():
        if match := re.fullmatch(r"(.*)\.bn\.(\w+)", key):
            owner, leaf = match.groups()
            layout[f"{owner}.seqbn.module.{leaf}"] = value
            if bn := re.fullmatch(r"(.*?)bn(\d)", owner):
                parent, n = bn.groups()
                layout[f"{parent}conv{n}_s.bn.bn.{leaf}"] = value
                layout[f"{parent}conv{n}_s.bn.seqbn.module.{leaf}"] = value
        elif match := re.fullmatch(r"(.*?)conv(\d)\.weight", key):
            parent, n = match.groups()
            layout[f"{parent}conv{n}_s.layer.module.weight"] = value
        elif match := re.fullmatch(r"fc(\d)\.(\w+)", key):
            n, leaf = match.groups()
            layout[f"fc{n}_s.layer.module.{leaf}"] = value
    return {f"module.{key}": value.clone() for key, value in layout.items()}


def test_vggsnn_state_dict_keys_are_the_reference_layers():
    conv_layers = (0, 1, 3, 4, 6, 7, 9, 10)  # features 2, 5, 8, 11 are the shared pooling
    bn_entries = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {f"features.{i}.fwd.module.0.{p}" for i in conv_layers for p in ("weight", "bias")}
    expected |= {f"features.{i}.fwd.module.1.{p}" for i in conv_layers for p in bn_entries}
    expected |= {"classifier.module.weight", "classifier.module.bias"}
    assert set(VGGSNN(T).state_dict()) == expected


def test_resnet19_state_dict_keys_are_the_reference_canonical_names(resnet19):
    keys = resnet19.state_dict()
    assert len(keys) == 124
    assert keys["conv1.weight"].shape == (64, 3, 3, 3)
    assert keys["bn1.bn.running_var"].shape == (64,)
    assert keys["layer1.0.downsample.layer.module.weight"].shape == (128, 64, 1, 1)
    assert keys["layer2.0.downsample.bn.bn.weight"].shape == (256,)
    assert keys["layer3.1.conv2.weight"].shape == (512, 512, 3, 3)
    assert keys["layer3.1.bn2.bn.num_batches_tracked"].shape == ()
    assert keys["fc1.weight"].shape == (256, 512) and keys["fc2.weight"].shape == (10, 256)
    assert not any("_s." in key or "seqbn" in key for key in keys)


def test_a_vggsnn_checkpoint_saved_from_data_parallel_loads_strictly_and_computes_the_same(
        vggsnn, tmp_path):
    path = tmp_path / "vggsnn.pth"
    torch.save({f"module.{key}": value for key, value in vggsnn.state_dict().items()}, path)
    loaded = load_reference_checkpoint("vggsnn", path, timesteps=T)
    with torch.no_grad():
        assert torch.equal(loaded(frames()), vggsnn(frames()))


def test_a_resnet19_checkpoint_with_the_reference_aliases_loads_strictly_and_computes_the_same(
        resnet19, tmp_path):
    layout = reference_resnet19_layout(resnet19.state_dict())
    assert len(layout) == 415  # as many keys as the reference's resnet19().state_dict() has
    for alias in ("module.bn1.seqbn.module.running_mean", "module.conv1_s.layer.module.weight",
                  "module.conv1_s.bn.bn.weight", "module.conv1_s.bn.seqbn.module.bias",
                  "module.layer2.0.conv1_s.layer.module.weight", "module.layer2.0.bn2.seqbn.module.weight",
                  "module.layer2.0.downsample.bn.seqbn.module.running_var",
                  "module.fc1_s.layer.module.weight", "module.fc2_s.layer.module.bias"):
        assert alias in layout
    path = tmp_path / "resnet19.pth"
    torch.save({"state_dict": layout}, path)
    loaded = load_reference_checkpoint("resnet19", path, timesteps=T)
    with torch.no_grad():
        assert torch.equal(loaded(images()), resnet19(images()))


def test_a_checkpoint_of_the_other_architecture_is_refused_naming_the_mismatching_keys(
        resnet19, tmp_path):
    path = tmp_path / "resnet19.pth"
    torch.save(reference_resnet19_layout(resnet19.state_dict()), path)
    with pytest.raises(TritonForgeError) as error:
        load_reference_checkpoint("vggsnn", path, timesteps=T)
    message = str(error.value)
    assert "does not fit vggsnn" in message
    assert "58 missing: features.0.fwd.module.0.weight" in message
    assert "415 unexpected: conv1.weight" in message
    assert "load it as resnet19" in message


def test_a_tensor_of_another_shape_is_refused_naming_key_and_both_shapes(vggsnn, tmp_path):
    state = dict(vggsnn.state_dict())
    state["classifier.module.weight"] = torch.zeros(100, 512 * 3 * 3)  # a CIFAR-100 head
    path = tmp_path / "vggsnn.pth"
    torch.save(state, path)
    expected = r"classifier\.module\.weight \(100, 4608\) \(expected \(10, 4608\)\)"
    with pytest.raises(TritonForgeError, match=expected):
        load_reference_checkpoint("vggsnn", path, timesteps=T)


def test_an_alias_that_differs_from_its_tensor_is_refused_naming_both_keys(resnet19, tmp_path):
    layout = reference_resnet19_layout(resnet19.state_dict())
    layout["module.layer1.0.conv2_s.layer.module.weight"] += 1.0
    path = tmp_path / "resnet19.pth"
    torch.save(layout, path)
    with pytest.raises(TritonForgeError, match=r"layer1\.0\.conv2_s\.layer\.module\.weight should be an "
                                               r"alias of layer1\.0\.conv2\.weight .* differ"):
        load_reference_checkpoint("resnet19", path, timesteps=T)


def test_a_missing_file_pickled_code_and_a_non_checkpoint_are_refused(tmp_path):
    with pytest.raises(TritonForgeError, match="no such checkpoint file"):
        load_reference_checkpoint("vggsnn", tmp_path / "absent.pth", timesteps=T)
    path = tmp_path / "pickled.pth"
    torch.save(nn.Linear(2, 2), path)  # a whole module: code, not only tensors
    with pytest.raises(TritonForgeError, match=r"loaded safely.*torch\.nn\.modules\.linear\.Linear"):
        load_reference_checkpoint("vggsnn", path, timesteps=T)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TritonForgeError, match="is not a PyTorch checkpoint"):
        load_reference_checkpoint("vggsnn", path, timesteps=T)


@pytest.mark.parametrize("arch", ["vggsnn", "resnet19"])
def test_folding_batchnorm_leaves_the_outputs_unchanged(arch, vggsnn, resnet19):
    # float64: a spike is a threshold, so float32 rounding of the fused conv can flip one
    # and the flip propagates; in float64 only a wrong fold changes the output.
    model = copy.deepcopy(vggsnn if arch == "vggsnn" else resnet19).double()
    x = (frames(1) if arch == "vggsnn" else images(1)).double()
    with torch.no_grad():
        before = model.per_step_logits(x)
        assert model.spike_rates().min() > 0  # every layer fires: the comparison is not vacuous
        folded = fold_batchnorm(model)
        after = folded.per_step_logits(x)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert torch.allclose(after, before, rtol=0, atol=1e-4)


def test_resnet19_gives_a_static_image_the_logits_of_the_image_repeated_as_frames(resnet19):
    image = images()
    with torch.no_grad():
        static = resnet19.per_step_logits(image)
        repeated = resnet19.per_step_logits(image.unsqueeze(1).repeat(1, T, 1, 1, 1))
    assert static.shape == (2, T, 10)
    assert torch.allclose(static, repeated, rtol=0, atol=1e-5)


def test_output_and_spike_rate_shapes(vggsnn, resnet19):
    with torch.no_grad():
        assert vggsnn(frames()).shape == (2, 10)
        assert vggsnn.spike_rates().shape == (2, 8)  # one LIF per conv layer
        assert resnet19(images()).shape == (2, 10)
        assert resnet19.spike_rates().shape == (2, 18)  # stem, 2 per block x 8, fc1


def test_presets_describe_the_reference_inputs():
    assert (PRESETS["vggsnn"].input_kind, PRESETS["vggsnn"].input_shape) == ("frames", (2, 48, 48))
    assert PRESETS["vggsnn"].timesteps == 10 and PRESETS["vggsnn"].mean is None
    resnet = PRESETS["resnet19"]
    assert (resnet.network, resnet.input_kind, resnet.input_shape) == (ResNet19, "image", (3, 32, 32))
    assert resnet.mean == (0.4914, 0.4822, 0.4465) and resnet.std == (0.2023, 0.1994, 0.2010)
