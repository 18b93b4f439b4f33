"""Post-training quantization of BERT in PyTorch: placement, calibration, clipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritonforge.data import CALIBRATION, read_lines, sentences
from tritonforge.errors import TritonForgeError
from tritonforge.export.bert import tokenize
from tritonforge.export.bert.model import load_bert
from tritonforge.export.bert.outlier_suppression import slotted_copy
from tritonforge.quant.calibrate import QuantRecipe, calibrate, token_wise_clip
from tritonforge.quant.quantizers import ActQuantizer, SampleMask, signed_range


@pytest.fixture(scope="module")
def tiny(tiny_bert):
    model = load_bert(tiny_bert)
    return model, tokenize(model.tokenizer, read_lines(CALIBRATION)[:32], 64)


def test_every_paper_site_gets_a_quantizer_and_weights_sit_on_the_grid(tiny):
    model, calib = tiny
    result = calibrate(slotted_copy(model), QuantRecipe(method="minmax", wbits=6, abits=6), calib, 16)
    layers = len(result.model.layers)
    # embedding LN + per layer (Q, K, V, probs, context, LN_a, GELU, LN_o) - the last LN_o
    assert len(result.quantizers) == 1 + 8 * layers - 1
    assert all(isinstance(q, ActQuantizer) and q.mode == "quantize" for q in result.quantizers.values())
    assert {"word", "position", "token_type", "layers.0.query", "layers.1.ffn_out"} <= set(result.weights)
    qmin, qmax = signed_range(6)
    for quantized in result.weights.values():
        assert quantized.values.min() >= qmin and quantized.values.max() <= qmax
    torch.testing.assert_close(result.model.layers[0].query.weight,
                               result.weights["layers.0.query"].dequantize())


def test_activation_ranges_use_at_most_k_bits(tiny):
    model, calib = tiny
    result = calibrate(slotted_copy(model), QuantRecipe(method="percentile", wbits=8, abits=4), calib, 16)
    for quantizer in result.quantizers.values():
        assert (quantizer.qmin, quantizer.qmax) == (0, 15)
        assert 0 <= float(quantizer.zero_point.detach()) <= 15


def test_token_wise_clipping_picks_the_alpha_with_the_lowest_error():
    mask = SampleMask()
    quantizer = ActQuantizer(6, mask, name="layers.0.gelu")
    quantizer.mode = "observe"
    x = torch.randn(4, 500, 64, generator=torch.Generator().manual_seed(0))
    x[0, 0, 5] = 12.0  # one outlier token: clipping it buys resolution for all the others
    quantizer(x)
    alpha = token_wise_clip(quantizer, grid=11)
    assert any(abs(alpha - a) < 1e-9 for a in np.linspace(1.0, 0.5, 11)) and alpha < 1.0
    chosen = quantizer.quantization_error(*quantizer.range())
    assert chosen < quantizer.quantization_error(*quantizer.token_wise_range(1.0))
    assert chosen <= min(quantizer.quantization_error(*quantizer.token_wise_range(a))
                         for a in np.linspace(1.0, 0.5, 11)) + 1e-9


def test_os_calibration_records_one_alpha_per_quantizer(tiny):
    model, calib = tiny
    recipe = QuantRecipe(method="os", wbits=8, abits=6, alpha_grid=4)
    result = calibrate(slotted_copy(model), recipe, calib, 16)
    assert set(result.alphas) == set(result.quantizers)


def test_quantized_model_stays_close_to_fp_at_8_bits(tiny):
    model, calib = tiny
    result = calibrate(slotted_copy(model), QuantRecipe(method="minmax"), calib, 16)
    feed = {k: torch.from_numpy(v) for k, v in tokenize(model.tokenizer, sentences(16), 64).items()}
    with torch.no_grad():
        fp = model.bert(**feed).last_hidden_state
        q = result.model(**feed).last_hidden_state
    cosine = torch.nn.functional.cosine_similarity(fp.flatten(1), q.flatten(1)).min()
    assert cosine > 0.99


def test_nan_in_calibration_stops_and_names_the_layer(tiny):
    model, calib = tiny
    broken = load_bert(model.model_dir)
    with torch.no_grad():
        broken.bert.encoder.layer[1].intermediate.dense.bias[0] = float("nan")
    with pytest.raises(TritonForgeError, match=r"layers\.1\.gelu"):
        calibrate(slotted_copy(broken), QuantRecipe(method="minmax"), calib, 16)


def test_unknown_method_is_refused():
    with pytest.raises(TritonForgeError, match="--method 'awq' is unknown"):
        QuantRecipe(method="awq")


@pytest.mark.parametrize("bits", [1, 9, 0, 16])
def test_bits_outside_2_to_8_are_refused_by_the_recipe(bits):
    with pytest.raises(TritonForgeError, match=f"^--bits {bits} is outside 2..8: .*choose 8, 6 or 4"):
        QuantRecipe(wbits=bits, abits=bits)


def test_one_bad_width_is_named_by_its_own_option():
    with pytest.raises(TritonForgeError, match="^--abits 12 is outside 2..8"):
        QuantRecipe(wbits=8, abits=12)
    with pytest.raises(TritonForgeError, match="^--wbits 1 is outside 2..8"):
        QuantRecipe(wbits=1, abits=8)


def test_lsq_plus_reports_every_optimisation_step(tiny):
    model, calib = tiny  # 32 texts in batches of 16: 2 steps per epoch
    opened, ticks = [], []

    def stage(description, total=0):
        opened.append((description, total))
        return lambda: ticks.append(description)

    calibrate(slotted_copy(model), QuantRecipe(method="minmax", lsq_epochs=3), calib, 16, stage)
    assert ("LSQ+ (fine)", 6) in opened
    assert ticks == ["LSQ+ (fine)"] * 6


def test_stages_that_take_only_a_description_are_told_each_step(tiny):
    model, calib = tiny
    told = []
    calibrate(slotted_copy(model), QuantRecipe(method="minmax", lsq_epochs=1), calib, 16, told.append)
    assert told[0] == "FP reference outputs, observing activations" and "LSQ+ (fine)" in told


def test_lsq_plus_lowers_the_output_error_of_its_starting_point(tiny):
    model, calib = tiny
    start = calibrate(slotted_copy(model), QuantRecipe(method="minmax", wbits=8, abits=4), calib, 16)
    tuned = calibrate(slotted_copy(model), QuantRecipe(method="minmax", wbits=8, abits=4, lsq_epochs=8,
                                                  lsq_lr=1e-2), calib, 16)
    assert tuned.calibration_error < 0.9 * start.calibration_error
    moved = [name for name, q in tuned.quantizers.items()
             if float(q.scale.detach()) != float(start.quantizers[name].scale.detach())]
    assert len(moved) == len(tuned.quantizers)
