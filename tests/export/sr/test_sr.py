"""The `sr` family: ESPCN, SRCNN, FSRCNN and EDSR exported as uint8-in, uint8-out graphs with
dynamic height and width, judged in grey levels and in PSNR against real HR photographs."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from PIL import Image as PILImage
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from tritonforge.cli import app
from tritonforge.errors import TritonForgeError
from tritonforge.export.sr import FP16_MAX_ABS_DIFF, FP16_PSNR_DIFF, INT8_PSNR_DROP, SRFamily, SROptions
from tritonforge.export.sr.data import crop_to_scale, downscale, lr_hr_pairs, photograph_pixels, psnr
from tritonforge.export.sr.model import build_network, load_checkpoint, save_checkpoint, to_pixels
from tritonforge.export.sr.static_int8 import gptq_round
from tritonforge.modalities import ImagePixels, manifest_io
from tritonforge.pipeline.export import export_model
from tritonforge.quant.quantizers import quantize_weight
from tritonforge.serving.client import ModelInfo, TensorInfo, save_query_outputs
from tritonforge.spec import IMAGE

ARCHS = {"espcn": {}, "srcnn": {}, "fsrcnn": {}, "edsr": {"blocks": 1}}


def bilinear_espcn(scale: int = 2, tune_steps: int = 15, seed: int = 0) -> torch.nn.Module:
    """A real ESPCN super-resolver made fast: seeded random weights, except that channels 0-2 of
    the first three convs copy the pixels (ReLU passes them: pixels are >= 0) and the last conv
    holds, per sub-pixel, its bilinear weights (half-pixel centres, like PyTorch's); then a few
    Adam steps (L1) on photograph patches mix the random channels in. About 26.5 dB at x2 on
    the test crops (bicubic: 27.4 dB), with activations on the real 0-255 range, so the
    quantization cost means what it would for a trained model."""
    torch.manual_seed(seed)
    network = build_network("espcn", scale)
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[:3]:
            conv.weight[:3], conv.bias[:3] = 0.0, 0.0
            for channel in range(3):
                conv.weight[channel, channel, 1, 1] = 1.0
        last = convs[3]
        last.weight.zero_()
        last.bias.zero_()
        taps = []
        for sub in range(scale):  # the source position of sub-pixel `sub`, relative to its pixel
            offset = (sub + 0.5) / scale - 0.5
            weights = np.zeros(3)
            weights[1] = 1 - abs(offset)
            weights[1 + int(np.sign(offset))] += abs(offset)
            taps.append(weights)
        for i in range(scale):
            for j in range(scale):
                for channel in range(3):
                    last.weight[channel * scale * scale + i * scale + j, channel] = torch.from_numpy(
                        np.outer(taps[i], taps[j])).float()
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.Adam(network.parameters(), 1e-4)
    photos = photograph_pixels()
    for _ in range(tune_steps):
        crops = []
        for _ in range(8):
            photo = photos[rng.integers(len(photos))]
            top, left = rng.integers(photo.shape[0] - 32), rng.integers(photo.shape[1] - 32)
            crops.append(photo[top:top + 32, left:left + 32].transpose(2, 0, 1))
        hr = np.stack(crops)
        lr = torch.from_numpy(downscale(hr, scale)).float()
        loss = (network(lr) - torch.from_numpy(hr).float()).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return network.eval()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("sr_ckpt") / "espcn_x2.pt"
    return save_checkpoint(bilinear_espcn(), path, "espcn", 2)


@pytest.fixture(scope="module")
def espcn_export(tmp_path_factory):
    repo = tmp_path_factory.mktemp("sr_repo")
    return export_model("sr", SROptions(), repo), repo


# -- export and parity -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["srcnn", "fsrcnn", "edsr"])
def test_each_arch_exports_at_x2_with_fp32_parity_on_photographs(tmp_path, arch):
    result = export_model("sr", SROptions(arch=arch, **ARCHS[arch]), tmp_path)
    checks = {c["metric"]: c for c in result.manifest["parity"]["details"]["checks"]}
    assert checks["max_abs_diff"]["value"] <= 1.0 and checks["max_abs_diff"]["passed"]
    assert checks["psnr_diff_db"]["value"] <= 0.01
    assert result.manifest["precision"] == "fp32"


def test_espcn_export_is_uint8_in_and_out_with_dynamic_triton_dims(espcn_export):
    result, repo = espcn_export
    graph = onnx.load(str(result.folder / "model.onnx")).graph
    uint8 = onnx.TensorProto.UINT8
    assert [(t.name, t.type.tensor_type.elem_type) for t in graph.input] == [("lr", uint8)]
    assert [(t.name, t.type.tensor_type.elem_type) for t in graph.output] == [("sr", uint8)]
    config = text_format.Parse((repo / result.name / "config.pbtxt").read_text(), mc.ModelConfig())
    for tensor in (*config.input, *config.output):
        assert (list(tensor.dims), tensor.data_type) == ([3, -1, -1], mc.TYPE_UINT8)
    assert config.max_batch_size > 0  # batch dynamic too
    io_ = manifest_io(result.manifest)
    assert io_.output("sr").kind == IMAGE and isinstance(io_.preprocessing, ImagePixels)
    assert any("weights: random (seed 0), untrained" in line for line in SRFamily().summary(result.manifest))
    assert result.manifest["source"]["parameters"] == 60_652  # EMT's ESPCN x2: about 60k


def test_one_onnx_takes_two_input_sizes(espcn_export):
    result, _repo = espcn_export
    session = ort.InferenceSession(str(result.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_network("espcn", 2).eval()
    photo = photograph_pixels()[0].transpose(2, 0, 1)
    for height, width in ((17, 23), (40, 64)):
        lr = np.ascontiguousarray(photo[None, :, :height, :width])
        (sr,) = session.run(None, {"lr": lr})
        with torch.inference_mode():
            expected = to_pixels(model(torch.from_numpy(lr).float())).numpy()
        assert sr.shape == (1, 3, 2 * height, 2 * width) and sr.dtype == np.uint8
        assert np.abs(sr.astype(int) - expected.astype(int)).max() <= 1


def test_trained_espcn_fp16_and_int8_costs(tmp_path, trained):
    fp16 = export_model("sr", SROptions(checkpoint=str(trained), bits=16), tmp_path)
    fp16_checks = {c["metric"]: c["value"] for c in fp16.manifest["parity"]["details"]["checks"]}
    assert fp16_checks["max_abs_diff"] <= FP16_MAX_ABS_DIFF and fp16_checks["psnr_diff_db"] <= FP16_PSNR_DIFF
    int8 = export_model("sr", SROptions(checkpoint=str(trained), bits=8), tmp_path)
    quality = int8.manifest["quality"]
    assert quality["psnr_fp32_db"] > 26  # a real super-resolver, not random weights
    assert quality["psnr_drop_db"] <= INT8_PSNR_DROP
    assert int8.manifest["onnx"]["quantization"]["weights"] == "int8 per channel"
    graph = onnx.load(str(int8.folder / "model.onnx")).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) >= 4
    assert "checkpoint" in int8.manifest["source"]["weights"]


def test_gptq_weights_are_stored_as_chosen_and_cost_less_than_round_to_nearest(tmp_path, trained):
    results = {rounding: export_model("sr", SROptions(checkpoint=str(trained), bits=8, rounding=rounding),
                                      tmp_path / rounding) for rounding in ("gptq", "nearest")}
    drops = {rounding: r.manifest["quality"]["psnr_drop_db"] for rounding, r in results.items()}
    assert drops["gptq"] < drops["nearest"]  # measured 0.012 and 0.030 dB
    rounding = results["gptq"].manifest["onnx"]["quantization"]["rounding"]
    assert rounding.startswith("GPTQ for convolutions [1, 2]")
    network, _ = load_checkpoint(trained)
    rounded, scales = gptq_round(network, lr_hr_pairs(2, 32)[0], "ends")
    convs = [m for m in rounded.modules() if isinstance(m, torch.nn.Conv2d)]
    graph = onnx.load(str(results["gptq"].folder / "model.onnx")).graph
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    for position in (1, 2):  # ONNX Runtime kept the int8 values GPTQ chose, on GPTQ's grid
        prefix = f"network.body.{2 * position}.weight"
        np.testing.assert_array_equal(stored[f"{prefix}_scale"], scales[position])
        weights = stored[f"{prefix}_quantized"].astype(np.float32) * scales[position][:, None, None, None]
        np.testing.assert_array_equal(weights, convs[position].weight.detach().numpy())
        nearest = int8_grid_nearest(network, position)
        assert not np.array_equal(weights, nearest)  # GPTQ moved weights off round-to-nearest
    # ReLU is quantized with the conv before it: every uint8 activation starts at 0, none is
    # spread over a conv's negative outputs that the ReLU then drops
    zero_points = [onnx.numpy_helper.to_array(t) for t in graph.initializer
                   if t.name.endswith("_zero_point") and t.data_type == onnx.TensorProto.UINT8]
    assert zero_points and all(int(zp) == 0 for zp in zero_points)


def test_a_missed_int8_bar_suggests_what_the_recipe_does_not_use_yet():
    family = SRFamily()
    advice = family.parity_advice(SROptions(bits=8, keep_float="none", rounding="nearest"))
    assert "--keep-float ends" in advice and "--rounding gptq" in advice and "--bits 16" in advice
    assert family.parity_advice(SROptions(bits=8)) == "Try: export FP16 (--bits 16)"


def int8_grid_nearest(network: torch.nn.Module, position: int) -> np.ndarray:
    weight = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][position].weight.detach()
    rounded = quantize_weight(weight.reshape(len(weight), -1), 8, "minmax")  # max|w| / 127 per row
    return (rounded.values.float() * rounded.scale[:, None]).reshape(weight.shape).numpy()


# -- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_records_the_network_and_refuses_another(tmp_path):
    network = build_network("edsr", 3, blocks=2)
    path = save_checkpoint(network, tmp_path / "edsr.pt", "edsr", 3, blocks=2, chunk=1)
    loaded, meta = load_checkpoint(path)
    assert (meta["arch"], meta["scale"], meta["blocks"], meta["extra"]) == ("edsr", 3, 2, {"chunk": 1})
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    with pytest.raises(TritonForgeError, match="holds scale 3, not the requested 2: export with --scale 3"):
        load_checkpoint(path, "edsr", 2)
    with pytest.raises(TritonForgeError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"arch": "vdsr"}, "unknown --arch 'vdsr': choose one of espcn, srcnn, fsrcnn, edsr"),
    ({"scale": 5}, "unknown --scale 5: choose one of 2, 3, 4"),
    ({"arch": "espcn", "blocks": 1}, "--blocks 1 applies to edsr only"),
    ({"arch": "edsr", "blocks": 0}, "must be at least 1"),
    ({"bits": 4}, "--bits 4 is not offered"),
    ({"rounding": "adaround"}, "unknown --rounding 'adaround': choose one of gptq, nearest"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(TritonForgeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SROptions(**options)


def test_bad_options_are_refused_on_the_command_line(tmp_path):
    result = CliRunner().invoke(app, ["export", "sr", "--arch", "espcn", "--blocks", "2",
                                      "--repo", str(tmp_path)])
    assert result.exit_code != 0 and "--blocks 2 applies to edsr only" in result.output


def test_an_hr_size_the_scale_does_not_divide_is_cropped_and_said(tmp_path):
    hr = photograph_pixels()[0][:101, :70].transpose(2, 0, 1)
    with pytest.warns(UserWarning, match=r"x3 does not divide 70x101: cropped to 69x99 \(dropped 1 "
                                         r"column\(s\) on the right, 2 row\(s\) at the bottom\)"):
        cropped, removed = crop_to_scale(hr, 3)
    assert cropped.shape == (3, 99, 69) and removed == (2, 1)
    with pytest.raises(TritonForgeError, match="x3 does not divide 70x101: crop the HR image first"):
        downscale(hr, 3)
    with pytest.raises(TritonForgeError, match="differ in size"):
        psnr(np.zeros((3, 100, 70), np.uint8), np.zeros((3, 101, 70), np.uint8), 2)


def test_an_image_above_the_pixel_limit_is_refused(tmp_path):
    modality = ImagePixels(input="lr", max_pixels=64 * 64)
    buffer = io.BytesIO()
    PILImage.fromarray(photograph_pixels()[0][:65, :64]).save(buffer, "PNG")
    with pytest.raises(TritonForgeError, match=r"IMAGE\[0\] is 64x65 = 4,160 pixels, above this model's "
                                               r"limit of 4,096 \(max_pixels\): downscale it"):
        modality.encode([buffer.getvalue()], None, None)


def test_images_of_one_request_must_share_a_size():
    items = []
    for size in (16, 24):
        buffer = io.BytesIO()
        PILImage.fromarray(photograph_pixels()[0][:size, :size]).save(buffer, "PNG")
        items.append(buffer.getvalue())
    pixels = ImagePixels(input="lr").encode(items[:1], None, None)["lr"]
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 3, 16, 16)
    with pytest.raises(TritonForgeError, match=r"different sizes \(16x16, 24x24\): send one request"):
        ImagePixels(input="lr").encode(items, None, None)


# -- query --save ----------------------------------------------------------------------------


def _info(kind: str) -> ModelInfo:
    return ModelInfo("m", ("1",), "", (TensorInfo("lr", "UINT8", (-1, 3, -1, -1)),),
                     (TensorInfo("sr", "UINT8", (-1, 3, -1, -1)),), 8,
                     {"output_kinds": json.dumps({"sr": kind})})


def test_save_writes_image_outputs_and_refuses_a_model_without_one(tmp_path):
    pixels = photograph_pixels()[1][:20, :30].transpose(2, 0, 1)[None]
    (written,) = save_query_outputs(_info(IMAGE), {"sr": pixels}, tmp_path / "sr.png")
    assert written.path == tmp_path / "sr.png" and written.message == f"image written to {written.path}"
    assert np.array_equal(np.asarray(PILImage.open(written.path)).transpose(2, 0, 1), pixels[0])
    with pytest.raises(TritonForgeError, match="has no image output"):
        save_query_outputs(_info("tensor"), {"sr": pixels}, tmp_path / "x.png")


def test_lr_hr_pairs_are_bicubic_downscales_of_real_crops():
    lr, hr = lr_hr_pairs(3, 4)
    assert lr.shape == (4, 3, 48, 48) and hr.shape == (4, 3, 144, 144) and lr.dtype == np.uint8
    assert hr.std() > 20  # real content, not a flat image


def test_frame_size_fits_every_photograph_to_one_frame_and_refuses_too_many_pixels():
    modality = ImagePixels(input="lr")
    raw = modality.sample_raw()
    frames = [modality.encode([item], None, None, {"frame_width": 640, "frame_height": 360})["lr"]
              for item in raw]
    assert {f.shape for f in frames} == {(1, 3, 360, 640)} and all(f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == len(raw)  # each photograph's own content
    with pytest.raises(TritonForgeError, match="--frame-size 2000x1200 is above the model's limit of 2,073"):
        modality.encode(raw[:1], None, None, {"frame_width": 2000, "frame_height": 1200})
    with pytest.raises(TritonForgeError, match="--seq-len does not apply to a model that takes image_pixels"):
        modality.encode(raw[:1], None, None, {"seq_len": 16})
