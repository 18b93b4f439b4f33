"""Fake quantizers and observers."""

from __future__ import annotations

import pytest
import torch

from tritonforge.errors import TritonForgeError
from tritonforge.export.bert.model import embedded_model_dir, load_bert
from tritonforge.quant.quantizers import (
    ActQuantizer,
    SampleMask,
    fake_quantize,
    gptq_weight,
    quantize_weight,
    signed_range,
)


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_weight_integers_stay_on_the_k_bit_grid(bits):
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(bits)) * 3
    quantized = quantize_weight(weight, bits)
    qmin, qmax = signed_range(bits)
    assert quantized.values.dtype == torch.int8
    assert quantized.values.min() >= qmin and quantized.values.max() <= qmax
    assert quantized.values.abs().amax(dim=1).eq(qmax).all()  # minmax uses the whole grid
    error = (quantized.dequantize() - weight).abs()
    assert (error <= quantized.scale[:, None] / 2 + 1e-6).all()


def test_mse_weight_clipping_beats_minmax_at_4_bits_on_real_weights():
    weight = load_bert(embedded_model_dir()).bert.encoder.layer[0].intermediate.dense.weight
    minmax = quantize_weight(weight, 4, "minmax")
    mse = quantize_weight(weight, 4, "mse")
    assert ((mse.dequantize() - weight) ** 2).sum() < 0.8 * ((minmax.dequantize() - weight) ** 2).sum()


def test_fake_quantize_lands_on_the_grid_and_passes_gradients_to_scale():
    x = torch.linspace(-1, 3, 101)
    scale = torch.tensor(0.05, requires_grad=True)
    zero = torch.tensor(20.0, requires_grad=True)
    y = fake_quantize(x, scale, zero, 0, 63)
    steps = y.detach() / 0.05 + 20
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert y.min().item() == pytest.approx(-1.0) and y.max().item() == pytest.approx(43 * 0.05)
    y.sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0


def test_observer_ignores_padding_tokens():
    mask = SampleMask()
    quantizer = ActQuantizer(8, mask, name="ln")
    quantizer.mode = "observe"
    x = torch.randn(2, 5, 8)
    x[0, 3:] = 1000.0  # padding of the first sentence
    mask.mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    quantizer(x)
    low, high = quantizer.minmax_range()
    assert high < 100 and len(torch.cat(quantizer.token_max)) == 8


def test_token_wise_clipping_clips_only_rare_tokens():
    mask = SampleMask()
    quantizer = ActQuantizer(6, mask)
    quantizer.mode = "observe"
    x = torch.rand(1, 1000, 16)
    x[0, :5, 0] = 50.0  # five outlier tokens
    quantizer(x)
    assert quantizer.token_wise_range(1.0) == pytest.approx(quantizer.minmax_range())
    low, high = quantizer.token_wise_range(0.99)
    assert high < 1.0 and low >= 0.0


def test_range_includes_zero_and_round_trips():
    quantizer = ActQuantizer(8, SampleMask())
    quantizer.set_range(-0.5, 2.0)
    low, high = quantizer.range()
    assert low == pytest.approx(-0.5, abs=0.01) and high == pytest.approx(2.0, abs=0.01)
    quantizer.set_range(0.3, 2.0)  # widened down to 0
    assert quantizer.range()[0] == 0.0


def test_nan_during_calibration_names_the_activation():
    quantizer = ActQuantizer(8, SampleMask(), name="layers.2.gelu")
    quantizer.mode = "observe"
    with pytest.raises(TritonForgeError, match="layers.2.gelu"):
        quantizer(torch.tensor([[[float("nan")]]]))


def test_gptq_lowers_the_output_error_of_4_bit_weights_on_real_inputs():
    model = load_bert(embedded_model_dir())
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    # Inputs with MiniLM-like structure: a few large channels, correlated with the others.
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(1024, 384, generator=generator) @ torch.randn(384, 384, generator=generator) / 20
    inputs[:, 99] *= 5
    mse = quantize_weight(weight, 4, "mse")
    gptq = gptq_weight(weight, inputs, 4)
    qmin, qmax = signed_range(4)
    assert gptq.values.min() >= qmin and gptq.values.max() <= qmax
    reference = inputs @ weight.detach().T

    def output_error(quantized):
        return ((inputs @ quantized.dequantize().T - reference) ** 2).mean()

    assert output_error(gptq) < 0.7 * output_error(mse)
