"""arm target, ncnn format, on real pretrained models: EfficientNet-Lite1 (ImageNet weights,
240×240) at FP32, FP16 and INT8 in the ncnn runtime (int8 inference on)."""

from __future__ import annotations

import pytest
import zoo

pytest.importorskip("ncnn")

from autoglm_compress import compress  # noqa: E402


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    zoo.needs(*zoo.EFFNET_WHEELS)
    return zoo.efficientnet_lite1(tmp_path_factory.mktemp("ncnn_effnet"), n_calib=16, n_eval=8)


@pytest.mark.parametrize(("precision", "min_cos"),
                         # make test runs INT8 here; FP32/FP16 ncnn on a real model there is BERT's
                         [pytest.param("fp32", 0.99999, marks=pytest.mark.slow),
                          pytest.param("fp16", 0.9999, marks=pytest.mark.slow),
                          ("int8", 0.99)])
def test_efficientnet_lite1_in_ncnn(effnet, tmp_path, precision, min_cos):
    kw = {"int8": True, "calib": effnet.calib, "calib_samples": 16} if precision == "int8" else {
        "fp16": precision == "fp16"}
    art = compress(effnet.model, targets="arm", arm_format="ncnn", eval_data=effnet.eval,
                   samples=8, out_dir=tmp_path, latency_repeats=3, **kw).artifact("arm", "ncnn")
    assert art.fidelity["cosine_pooled"] >= min_cos
    types = art.extra["ncnn_layers"]["types"]
    assert types["Convolution"] == 43 and types["ConvolutionDepthWise"] == 21
    size_mb = art.size_bytes / 1e6
    assert {"fp32": 21 < size_mb < 22.5, "fp16": 10.5 < size_mb < 11.5,
            "int8": 5 < size_mb < 6.5}[precision], size_mb
    if precision == "int8":  # every conv / FC int8 in ncnn's format
        q = art.extra["ncnn_int8"]
        assert (q["int8"], q["float"]) == (65, 0)
        # conv → conv chains hand int8 over directly (ncnn2int8's requantize fusion): the 44
        # conv/depthwise pairs not split by a residual Add or the pooling head
        assert q["requantized"] == 44
        # every depthwise and projection conv reads a ReLU6 output re-centred onto all 255 codes
        # (recentre.py): 21 + 21 (these 8 crops: pooled cosine 0.9965 without it, 0.9970 with)
        assert q["recentred"] == 42
        assert art.fidelity["cosine_pooled"] >= 0.993


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    zoo.needs("transformers")
    return zoo.bert_encoder(tmp_path_factory.mktemp("ncnn_bert"), n_calib=16, n_eval=8)


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.9999), ("int8", 0.999)])
def test_bert_encoder_in_ncnn(bert, tmp_path, precision, min_cos):
    """Hugging Face BERT (token ids + padding mask, batch 1): word embeddings as ncnn Embed (int32
    ids), HF's mask logic (Cast to bool, identity Gather, And, Where with -inf, the IsNaN guard) in
    float arithmetic, attention (scales, additive mask, softmax, NaN guard) as ncnn's SDPA, the
    pooler's token-0 Gather as Crop; eval masks pad 8–32 tokens."""
    kw = {"int8": True, "calib": bert.calib, "calib_samples": 16} if precision == "int8" else {
        "fp16": precision == "fp16"}
    art = compress(bert.model, targets="arm", arm_format="ncnn", eval_data=bert.eval, samples=8,
                   input_shapes=("input_ids=1x32:int64", "attention_mask=1x32:int64"),
                   out_dir=tmp_path, latency_repeats=3, **kw).artifact("arm", "ncnn")
    types = art.extra["ncnn_layers"]["types"]
    assert types["Embed"] == 1 and types["InnerProduct"] == 13 and types["LayerNorm"] == 5
    assert types["Crop"] == 1 and types["SDPA"] == 2 and "Gather" not in types
    assert "Softmax" not in types and "MatMul" not in types  # mask + NaN guard inside SDPA
    assert art.fidelity["cosine_pooled"] >= min_cos
    assert {"fp32", "fp16"} <= set(art.latency["ncnn"])
    if precision == "int8":  # the 13 linears and the embedding table
        assert (art.extra["ncnn_int8"]["int8"], art.extra["ncnn_int8"]["float"]) == (14, 0)


@pytest.fixture(scope="module")
def ppocr_rec(tmp_path_factory):
    zoo.needs("rapidocr")
    return zoo.ppocr(tmp_path_factory.mktemp("ncnn_ppocr"), "rec", n_calib=4, n_eval=2)


def test_ppocr_recognizer_svtr_in_ncnn(ppocr_rec, tmp_path):
    """PP-OCR's recognizer (paddle2onnx opset 11, SVTR blocks): packed Q·K·V unpacked from its
    5-D [3, 1, H, N, D] transpose into 4-D slices, attention fused into SDPA, the five op-by-op
    LayerNorms written as ncnn LayerNorm layers (their (x − μ)² had made ncnn's SIMD pow NaN)."""
    art = compress(ppocr_rec.model, targets="arm", arm_format="ncnn", eval_data=ppocr_rec.eval,
                   samples=2, static_shapes=True, out_dir=tmp_path,
                   latency_repeats=2).artifact("arm", "ncnn")
    types = art.extra["ncnn_layers"]["types"]
    assert types["SDPA"] == 2 and types["LayerNorm"] == 5 and "UnaryOp" not in types
    assert any("Q·K·V" in n for n in art.notes)
    assert art.fidelity["cosine_pooled"] >= 0.99999 and not art.fidelity.get("flags")
