"""Block-wise reconstruction (BRECQ + QDrop) and the pooled LSQ+ objective, on a tiny BERT."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tritonforge.data import CALIBRATION, read_lines
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import tokenize
from tritonforge.export.bert.model import load_bert
from tritonforge.export.bert.outlier_suppression import slotted_copy
from tritonforge.quant import reconstruct
from tritonforge.quant.calibrate import QuantRecipe, calibrate, output_loss, pooled, tensor_batches
from tritonforge.quant.quantizers import ActQuantizer, SampleMask, signed_range
from tritonforge.quant.reconstruct import SoftRound, block_io

RECIPE = QuantRecipe(method="os+", wbits=4, abits=6, weight_observer="mse")
# No equivalent rewrite: each block's output stays comparable with the FP model's.
PLAIN = QuantRecipe(method="minmax", wbits=4, abits=6, weight_observer="mse")


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    model = load_bert(tiny_bert)
    return model, tokenize(model.tokenizer, read_lines(CALIBRATION)[:32], 64)


@pytest.fixture(scope="module")
def calibrated(tiny):
    """The tiny model at W4A6, without and with reconstruction of the weight rounding alone
    (straight-through, ranges kept: on this random model learned ranges do not pay), and its FP
    copy."""
    model, calib = tiny
    torch.manual_seed(0)
    plain = calibrate(slotted_copy(model), PLAIN, calib, 16)
    patch = pytest.MonkeyPatch()
    patch.setattr(reconstruct, "SCALE_LR", 0.0)
    patch.setattr(reconstruct, "STRAIGHT_THROUGH", True)
    try:
        rebuilt = calibrate(slotted_copy(model), dataclasses.replace(PLAIN, reconstruct=True,
                                                                     reconstruct_iters=80), calib, 16)
    finally:
        patch.undo()
    return plain, rebuilt, slotted_copy(model)


def block_errors(result, fp, calib) -> list[float]:
    """Each layer's squared output error against FP over the real tokens."""
    result.model.set_exact(False)
    inputs, quantized = block_io(result.model, calib, 16)
    _, reference = block_io(fp, calib, 16)
    result.model.set_exact(True)
    errors = []
    for index in range(len(fp.layers)):
        errors.append(sum(float(((q[index] - r[index])[real] ** 2).sum())
                          for (_, _, real), q, r in zip(inputs, quantized, reference, strict=True)))
    return errors


def test_reconstruction_lowers_the_block_and_output_errors(calibrated, tiny):
    plain, rebuilt, fp = calibrated
    _, calib = tiny
    # each block's error against FP (over the quantized model's own inputs) ends lower
    assert block_errors(rebuilt, fp, calib)[-1] < block_errors(plain, fp, calib)[-1]
    assert rebuilt.calibration_error < plain.calibration_error


def test_reconstruction_keeps_weights_on_the_grid_with_the_observer_scales(calibrated):
    plain, rebuilt, _ = calibrated
    qmin, qmax = signed_range(4)
    changed = 0
    for name, weight in rebuilt.weights.items():
        assert weight.values.dtype == torch.int8 and weight.bits == 4
        assert int(weight.values.min()) >= qmin and int(weight.values.max()) <= qmax
        torch.testing.assert_close(weight.scale, plain.weights[name].scale)
        torch.testing.assert_close(dict(rebuilt.model.weight_tables())[name].detach(), weight.dequantize())
        changed += int((weight.values != plain.weights[name].values).sum())
    # the rounding moved some weights to the other grid point, never further
    assert changed > 0
    for name in rebuilt.model.linears():
        assert int((rebuilt.weights[name].values.int() - plain.weights[name].values.int()).abs().max()) <= 1


def test_reconstructed_model_leaves_no_drop_or_parametrization_behind(calibrated):
    _, rebuilt, _ = calibrated
    assert all(q.drop == 0.0 and q.mode == "quantize" for q in rebuilt.quantizers.values())
    for linear in rebuilt.model.linears().values():
        assert type(linear) is torch.nn.Linear and isinstance(linear.weight, torch.nn.Parameter)
        assert not linear.weight.requires_grad


def test_soft_rounding_starts_at_the_fp_weight_and_hardens_to_neighbouring_grid_points():
    weight = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    scale = weight.abs().amax(1) / 7
    rounding = SoftRound(weight, scale, 4)
    rounding.straight_through = True
    hard = rounding.hard()
    # straight-through (the default): the block computes with the hard weights it will keep
    torch.testing.assert_close(rounding(weight), hard * scale[:, None])
    rounding.straight_through = False
    torch.testing.assert_close(rounding(weight), weight, atol=1e-3, rtol=0)
    assert ((hard - torch.floor(weight / scale[:, None])).abs() <= 1).all()
    assert hard.min() >= -8 and hard.max() <= 7


def test_qdrop_keeps_about_its_share_of_elements_fp():
    quantizer = ActQuantizer(4, SampleMask())
    quantizer.set_range(-1.0, 1.0)
    quantizer.mode = "quantize"
    x = torch.rand(200, 200, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float((quantizer(x) == x).float().mean()) < 0.1
    quantizer.drop = 0.5
    kept = float((quantizer(x) == x).float().mean())
    assert 0.45 < kept < 0.6


def test_pooled_objective_is_one_minus_the_cosine_of_the_masked_means():
    output = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    reference = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    real = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(pooled(output, real)[2], output[2, 0])
    torch.testing.assert_close(pooled(output, real)[0], output[0, :3].mean(0))
    cosines = torch.nn.functional.cosine_similarity(pooled(output, real), pooled(reference, real))
    count = int(real.sum())
    torch.testing.assert_close(output_loss(output, reference, real, count, 3, "pooled"), (1 - cosines).mean())
    assert float(output_loss(reference, reference, real, count, 3, "both")) == pytest.approx(0, abs=1e-6)


def test_pooled_lsq_plus_improves_the_pooled_output(tiny):
    model, calib = tiny
    fp = slotted_copy(model)
    coarse = calibrate(slotted_copy(model), RECIPE, calib, 16)
    fine = calibrate(slotted_copy(model), dataclasses.replace(RECIPE, lsq_epochs=2, objective="pooled"),
                     calib, 16)

    def cosine(result) -> float:
        values = []
        with torch.no_grad():
            for batch in tensor_batches(calib, 16):
                real = batch["attention_mask"].bool()
                values.append(torch.nn.functional.cosine_similarity(
                    pooled(result.model.output(batch), real), pooled(fp.output(batch), real)))
        return float(torch.cat(values).mean())

    assert cosine(fine) > cosine(coarse)


def test_recipe_refuses_unknown_objectives_and_bad_drop():
    with pytest.raises(TritonForgeError, match="objective"):
        QuantRecipe(objective="logits")
    with pytest.raises(TritonForgeError, match="qdrop"):
        QuantRecipe(reconstruct=True, qdrop=1.5)
