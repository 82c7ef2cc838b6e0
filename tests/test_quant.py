"""labs_lib.quant: byte formulas, RTN round trips, packing, checkpoint writers, quality metrics."""

import json
import math

import pytest
import torch

from labs_lib import models, tiers
from labs_lib.quant import formats, quality, rtn

SMOL = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}


# ------------------------------------------------------------------------------ formulas

def test_smollm2_bytes_by_hand():
    # linear params per layer: q 576x576 + k,v 576x192 + o 576x576 + gate,up,down 576x1536 = 3,538,944
    lin = 30 * 3_538_944
    other = 49152 * 576 + 30 * 2 * 576 + 576  # tied embedding, 2 norms per layer, final norm
    assert formats.weight_bytes(SMOL, "bf16")["total"] == 2 * (lin + other)
    b = formats.weight_bytes(SMOL, "int8")
    outputs = 30 * (576 + 192 + 192 + 576 + 1536 + 1536 + 576)  # q, k, v, o, gate, up, down
    assert b["weights"] == lin and b["scales"] == 4 * outputs and b["other"] == 2 * other
    g = 64
    b = formats.weight_bytes(SMOL, "awq", group_size=g)
    assert b["weights"] == lin / 2
    assert b["scales"] == 2 * lin / g  # one fp16 scale per 64 weights
    assert b["zeros"] == 0.5 * lin / g  # one 4-bit zero per 64 weights
    assert formats.weight_bytes(SMOL, "gptq", group_size=g)["zeros"] == 0  # sym: none kept
    assert b["bits_per_quantized_weight"] == pytest.approx(4 + 16 / 64 + 4 / 64)


def test_untied_lm_head_stays_16_bit():
    cfg = dict(SMOL, tie_word_embeddings=False)
    d = formats.weight_bytes(cfg, "w4a16", group_size=64)["other"] - formats.weight_bytes(SMOL, "w4a16", group_size=64)["other"]
    assert d == 2 * 49152 * 576


def test_fp8_per_tensor_vs_per_channel():
    t, c = formats.SCHEMES["fp8"].linear_bytes(64, 32), formats.SCHEMES["fp8_per_channel"].linear_bytes(64, 32)
    assert (t["weights"], t["scales"]) == (2048, 4) and (c["weights"], c["scales"]) == (2048, 128)


def test_group_size_must_divide_widths():
    with pytest.raises(ValueError, match=r"\[576, 1536\].*\[32, 64, 192\]"):
        formats.weight_bytes(SMOL, "awq", group_size=128)
    assert formats.default_group_size(SMOL) == 64
    assert formats.default_group_size(models.load_config("Llama-3.1-8B")) == 128


def test_settings_per_tier():
    cpu = [s.name for s in formats.settings_for(tiers.CPU)]
    assert cpu == ["bf16", "awq", "gptq", "int8_w8a8", "w4a16", "fp8_per_channel"]
    h100 = tiers.for_gpu("H100", 85e9, (9, 0))
    assert "fp8" in [s.name for s in formats.settings_for(h100)]
    assert all(s.quantization != "fp8" for s in formats.settings_for(tiers.CPU))  # no per-tensor fp8 on CPU
    kv = formats.kv_variants(h100, formats.AWQ)
    assert [(s.kv_cache_dtype, s.base, s.scheme) for s in kv] == [("fp8", "awq", "awq")]
    assert formats.Setting.from_dict(kv[0].to_dict()) == kv[0]


def test_gptq_shape_config_names_its_layers(tmp_path, monkeypatch):
    monkeypatch.setenv("LABS_CACHE", str(tmp_path))
    spec = models.resolve("Llama-3.2-1B")
    d = formats.shape_dir(spec, formats.GPTQ, 128)
    q = json.loads((d / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "gptq" and q["desc_act"] is False and q["sym"] is True
    assert q["modules_in_block_to_quantize"] == [list(formats.BLOCK_LINEARS)]  # the vLLM 0.26 trap
    local = models.resolve(str(d))
    assert local.random_weights and local.config["quantization_config"] == q
    with pytest.raises(ValueError, match="needs no directory"):
        formats.shape_dir(spec, formats.FP8, 128)


def test_ct_configs():
    i8 = formats.ct_config("int8")
    grp = i8["config_groups"]["group_0"]
    assert i8["format"] == "int-quantized" and grp["weights"]["strategy"] == "channel"
    assert grp["input_activations"]["dynamic"] is True and grp["input_activations"]["strategy"] == "token"
    w4 = formats.ct_config("w4a16", 64)["config_groups"]["group_0"]
    assert w4["weights"]["group_size"] == 64 and w4["input_activations"] is None


# ------------------------------------------------------------------------------- RTN

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_round_trip_within_half_a_step(bits, group, symmetric):
    g = torch.Generator().manual_seed(bits + (group or 0))
    w = torch.randn(48, 128, generator=g) * torch.linspace(0.01, 3, 48).unsqueeze(1)
    w[0, :5] = 7.0  # an outlier group
    q = rtn.quantize(w, bits, group, symmetric=symmetric)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    assert q.q.min() >= lo and q.q.max() <= hi
    err = (w - rtn.dequantize(q)).abs().reshape(48, -1, q.group_size)
    slack = 1e-6 * w.abs().reshape(48, -1, q.group_size)  # float rounding of w / scale at the edge
    assert (err <= q.scale.unsqueeze(-1) / 2 + slack).all()


def test_rtn_stored_scale_dtype_keeps_the_bound():
    w = torch.randn(16, 64)
    q = rtn.quantize(w, 4, 32, symmetric=False, scale_dtype=torch.float16)
    assert q.scale.dtype == torch.float16
    err = (w - rtn.dequantize(q)).abs().reshape(16, 2, 32)
    assert (err <= q.scale.float().unsqueeze(-1) / 2 * (1 + 1e-5)).all()


def test_pack_round_trips_and_order():
    v = torch.randint(0, 16, (24, 40))
    for dim in (0, 1):
        assert torch.equal(rtn.unpack_int4(rtn.pack_int4(v if dim else v[:, :24].T.contiguous().T, dim), dim),
                           v if dim else v[:, :24])
    p = rtn.pack_int4(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]]), 1, rtn.AWQ_ORDER)
    assert p.dtype == torch.int32
    nibbles = [(p[0, 0].item() >> (4 * i)) & 0xF for i in range(8)]
    assert nibbles == [1, 3, 5, 7, 2, 4, 6, 15]  # nibble i holds element AWQ_ORDER[i]
    with pytest.raises(ValueError, match="multiple of 8"):
        rtn.pack_int4(torch.zeros(2, 6, dtype=torch.int64), 1)


def test_ct_pack_matches_ours():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    q = torch.randint(-8, 8, (8, 32), dtype=torch.int8)
    assert torch.equal(pack_to_int32(q, 4), rtn.pack_int4((q.to(torch.int32) + 8), 1))


@pytest.mark.parametrize("fmt", rtn.FORMATS)
def test_format_tensors_shapes_dtypes_and_values(fmt):
    n, k, g = 96, 128, 64
    w = torch.randn(n, k, dtype=torch.bfloat16)
    t = rtn.format_tensors(fmt, w, g)
    if fmt == "awq":
        assert {k_: (tuple(v.shape), v.dtype) for k_, v in t.items()} == {
            "qweight": ((k, n // 8), torch.int32), "qzeros": ((k // g, n // 8), torch.int32),
            "scales": ((k // g, n), torch.float16)}
        deq = rtn.awq_dequantize(t["qweight"], t["qzeros"], t["scales"], g)
        ref = rtn.dequantize(rtn.quantize(w, 4, g, symmetric=False, scale_dtype=torch.float16))
    elif fmt == "gptq":
        assert {k_: (tuple(v.shape), v.dtype) for k_, v in t.items()} == {
            "qweight": ((k // 8, n), torch.int32), "qzeros": ((k // g, n // 8), torch.int32),
            "scales": ((k // g, n), torch.float16), "g_idx": ((k,), torch.int32)}
        assert (t["qzeros"] == 0x77777777).all()  # zero 8 stored as 7 (v1)
        assert torch.equal(t["g_idx"], torch.arange(k, dtype=torch.int32) // g)
        deq = rtn.gptq_dequantize(t["qweight"], t["scales"], g)
        ref = rtn.dequantize(rtn.quantize(w, 4, g, scale_dtype=torch.float16))
    elif fmt == "ct_int8":
        assert (t["weight"].shape, t["weight"].dtype, t["weight_scale"].shape) == ((n, k), torch.int8, (n, 1))
        deq = t["weight"].float() * t["weight_scale"]
        ref = rtn.dequantize(rtn.quantize(w, 8))
    else:
        assert (t["weight_packed"].shape, t["weight_packed"].dtype) == ((n, k // 8), torch.int32)
        assert (t["weight_scale"].shape, t["weight_scale"].dtype) == ((n, k // g), torch.bfloat16)
        assert t["weight_shape"].tolist() == [n, k]
        deq = rtn.ct_w4a16_dequantize(t["weight_packed"], t["weight_scale"], t["weight_shape"], g)
        ref = rtn.dequantize(rtn.quantize(w, 4, g, scale_dtype=torch.bfloat16))
    assert torch.allclose(deq, ref, atol=1e-6)
    assert (deq - w.float()).abs().max() < 0.6  # within half a step of a ~N(0,1) weight


def _tiny_checkpoint(d):
    from safetensors.torch import save_file

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100, "tie_word_embeddings": True}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "tokenizer.json").write_text("{}")
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (128, 64), "mlp.up_proj": (128, 64),
              "mlp.down_proj": (64, 128)}
    t = {f"model.layers.0.{n}.weight": torch.randn(*s, dtype=torch.bfloat16) for n, s in shapes.items()}
    t["model.embed_tokens.weight"] = torch.randn(100, 64, dtype=torch.bfloat16)
    t["model.norm.weight"] = torch.ones(64, dtype=torch.bfloat16)
    save_file(t, str(d / "model.safetensors"))
    return cfg


@pytest.mark.parametrize("fmt", rtn.FORMATS)
def test_write_checkpoint(tmp_path, fmt):
    from safetensors import safe_open

    src = tmp_path / "src"
    src.mkdir()
    cfg = _tiny_checkpoint(src)
    out = rtn.write_checkpoint(src, fmt, tmp_path / fmt, group_size=32)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == {"awq": "awq", "gptq": "gptq"}.get(fmt, "compressed-tensors")
    assert (out / "tokenizer.json").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert "model.embed_tokens.weight" in keys and "model.norm.weight" in keys
        w = "model.layers.0.self_attn.q_proj.weight"
        assert w not in keys or f.get_tensor(w).dtype == torch.int8  # no 16-bit linear weight left
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys
                     if "embed" not in k and "norm" not in k and not k.endswith(("g_idx", "weight_shape", "qzeros")))
    expected = formats.weight_bytes(cfg, {"awq": "awq", "gptq": "gptq", "ct_int8": "int8", "ct_w4a16": "w4a16"}[fmt],
                                    group_size=32)
    linear = expected["weights"] + expected["scales"] + (expected["zeros"] if fmt != "awq" else 0)
    assert stored == linear  # the file holds what the formula counts (zeros and g_idx aside)


def test_write_checkpoint_rejects_bad_group(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _tiny_checkpoint(src)
    with pytest.raises(ValueError, match="does not divide"):
        rtn.write_checkpoint(src, "awq", tmp_path / "o", group_size=48)


# ---------------------------------------------------------------------------- quality

L = math.log


def test_perplexity_and_top1_by_hand():
    base = [{3: L(0.5), 4: L(0.25)}, {3: L(0.1), 4: L(0.8)}]
    other = [{3: L(0.25), 4: L(0.5)}, {4: L(0.8), 3: L(0.1)}]
    r = quality.compare_positions(base, other, [3, 4])
    assert r["ppl_base"] == pytest.approx(math.exp((L(2) - L(0.8)) / 2))
    assert r["ppl"] == pytest.approx(math.exp((L(4) - L(0.8)) / 2))
    assert r["top1_agreement"] == 0.5


def test_kl_lower_bound_by_hand():
    p = {1: L(0.7), 2: L(0.2)}  # rest 0.1
    q = {1: L(0.5), 2: L(0.3)}  # rest 0.2
    want = 0.7 * L(0.7 / 0.5) + 0.2 * L(0.2 / 0.3) + 0.1 * L(0.1 / 0.2)
    assert quality.kl_lower_bound(p, q) == pytest.approx(want)
    # a token only one side returned goes to the rest bin on both sides
    q2 = {1: L(0.5), 9: L(0.3)}
    want2 = 0.7 * L(0.7 / 0.5) + 0.3 * L(0.3 / 0.5)
    assert quality.kl_lower_bound(p, q2) == pytest.approx(want2)
    assert quality.kl_lower_bound(p, p) == pytest.approx(0.0)


def test_bound_never_exceeds_exact_kl():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 300, generator=g) * 3
    other = base + torch.randn(50, 300, generator=g)
    targets = torch.randint(0, 300, (50,), generator=g).tolist()
    for k in (1, 5, 20, 300):
        r = quality.compare_logits(base, other, targets, k)
        assert 0 <= r["kl_lower_bound"] <= r["kl"] + 1e-6
    assert r["kl_lower_bound"] == pytest.approx(r["kl"], rel=1e-4)  # k = vocab: exact
    same = quality.compare_logits(base, base, targets, 5)
    assert same["kl"] == pytest.approx(0, abs=1e-6) and same["top1_agreement"] == 1.0
    assert same["ppl"] == pytest.approx(same["ppl_base"])


def test_missing_target_is_an_error():
    with pytest.raises(ValueError, match="missing"):
        quality.compare_positions([{1: 0.0}], [{1: 0.0}], [2])


def test_eval_windows_fixed_slice():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text[:5000]]}

    w = quality.eval_windows(Tok(), 3, 100)
    assert [len(x) for x in w] == [3 * [100]][0] and w[1][0] == ord(quality.eval_text()[100])
    with pytest.raises(ValueError, match="fewer than"):
        quality.eval_windows(Tok(), 100, 100)


def test_prepare_writes_a_checkpoint_in_a_child_process(tmp_path, monkeypatch):
    # the engine's process must not run the quantizer (torch's thread pool, then vLLM forks):
    # a spawned child writes it, this process only finds it
    from pathlib import Path

    from labs_lib.quant import bench

    monkeypatch.setenv("LABS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    _tiny_checkpoint(src)
    spec = models.resolve(str(src))
    monkeypatch.setattr(rtn, "write_checkpoint", lambda *a, **k: pytest.fail("quantized in the engine's process"))
    target = bench.prepare(spec, formats.AWQ, 32)
    assert Path(target.path).parent == tmp_path / "cache" / "quant"
    qc = json.loads((Path(target.path) / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "awq" and qc["group_size"] == 32
    assert bench.prepare(spec, formats.BF16, 32) is spec  # nothing to write for the base model
