"""The ground floor has one owner per concept, and every caller uses it.

- padding: one policy, :func:`manyminds.rows.pad_id_of` (the pad id, else eos, else a one-line
  ``ValueError``), in mixture decoding, calibration, critical alpha and the Renyi trainers;
- prompts: mixture / member decoding tokenise as TRL 1.16 does (:func:`manyminds.rows.tokenize_prompts`:
  conversations through the chat template), left-padded, so a batch answers as each prompt alone;
- atomic writes: :mod:`manyminds.files` (the run id and checkpoint marker of the trainers);
- progress bars: :func:`manyminds.progress.progress_bar` (stderr, stopped on errors).
"""

import datasets
import pytest
import torch

from manyminds.ensemble import EnsembleLoRA, generate_texts
from manyminds.files import atomic_folder, atomic_write_text
from manyminds.progress import progress_bar
from manyminds.rows import user_message

# a chat template of plain printable characters, which the character tokenizer encodes one by one
CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
NO_PAD = "the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token"


def _ensemble(model):
    return EnsembleLoRA(model, num_members=2, r=4, init="diverse", init_std=0.5, seed=2)


@torch.no_grad()
def _member_alone(ens, tokenizer, ids: list[int], member: int, new: int) -> str:
    """Member ``member``'s greedy text for one unpadded prompt ``ids`` (the reference)."""
    x = torch.tensor([ids])
    with ens.members([member]):
        out = ens.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)


def test_member_texts_of_conversations_follow_the_chat_template(char_qwen2, char_tokenizer):
    tok = char_tokenizer
    tok.chat_template = CHAT
    conversations = [user_message("1+2"), user_message("12+34")]      # two lengths: left padding
    rendered = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                for c in conversations]
    assert rendered[0] == "<user>1+2\n<assistant>"
    ids = [tok(text=r, add_special_tokens=False)["input_ids"] for r in rendered]
    assert ids[0] != tok(text="1+2")["input_ids"]   # the template changes what the members see
    ens = _ensemble(char_qwen2)
    got = generate_texts(ens, tok, conversations, mode="members", max_new_tokens=5)
    want = [[_member_alone(ens, tok, i, k, 5) for i in ids] for k in range(2)]
    assert got == want


def test_missing_pad_token_pads_with_eos(char_qwen2, char_tokenizer):
    tok = char_tokenizer
    prompts = ["Q: 1+2\nA:", "Q: 12+345\nA:"]
    ens = _ensemble(char_qwen2)
    with_pad = generate_texts(ens, tok, prompts, mode="members", max_new_tokens=4)
    assert tok.pad_token_id != tok.eos_token_id
    tok.pad_token = None
    without_pad = generate_texts(ens, tok, prompts, mode="members", max_new_tokens=4)
    assert without_pad == with_pad      # padding is masked: which id pads does not matter


def _without_pad_or_eos(tok):
    tok.pad_token = None
    tok.eos_token = None
    assert tok.pad_token_id is None and tok.eos_token_id is None
    return tok


def test_one_pad_policy_refuses_a_tokenizer_without_pad_and_eos(char_qwen2, char_tokenizer, tmp_path):
    from manyminds.population.calibrate import CalibrationConfig, build_calibration_data
    from manyminds.training.critical import critical_alpha
    from manyminds.training.sft import RenyiSFTConfig, RenyiSFTTrainer

    from manyminds.zoo.charlm import VOCAB_SIZE
    from manyminds.zoo.models import random_model

    tok = _without_pad_or_eos(char_tokenizer)
    data = datasets.Dataset.from_list([{"prompt": "1+2=", "completion": "3"}] * 2)
    with pytest.raises(ValueError, match=NO_PAD):
        build_calibration_data(char_qwen2, tok, CalibrationConfig(num_texts=1, text_tokens=2))
    one = EnsembleLoRA(char_qwen2, num_members=1, r=2, seed=0)
    with pytest.raises(ValueError, match=NO_PAD):
        generate_texts(one, tok, ["1+2="], max_new_tokens=2)
    with pytest.raises(ValueError, match=NO_PAD):
        critical_alpha(one, tok, data)
    args = RenyiSFTConfig(output_dir=str(tmp_path), num_members=2, r=2, max_steps=1)
    with pytest.raises(ValueError, match=NO_PAD):
        RenyiSFTTrainer(random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0), args, train_dataset=data,
                        processing_class=tok)


# ------------------------------------------------------------------------------------ files
def test_run_id_is_written_whole_or_not_at_all(tmp_path):
    from manyminds.training.common import read_run_id, write_run_id

    write_run_id(tmp_path, "first")
    with pytest.raises(TypeError):
        write_run_id(tmp_path, "second", extra=object())   # fails while serialising
    assert read_run_id(tmp_path) == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_id.json"]   # no temporary left


def test_atomic_write_and_folder_leave_the_old_version_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_folder(tmp_path / "folder") as tmp:
        (tmp / "whole").write_text("y")
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["whole"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "folder"]


# ------------------------------------------------------------------------------------ progress
def test_progress_bar_draws_on_stderr_and_stops_on_errors(capsys):
    with progress_bar("loss {task.fields[loss]:.3f}", remaining=True) as bar:
        task = bar.add_task("building", total=4, loss=float("nan"))
        bar.update(task, completed=2, loss=1.25)
    out = capsys.readouterr()
    assert out.out == ""
    assert "building" in out.err and "2/4" in out.err and "loss 1.250" in out.err
    with pytest.raises(RuntimeError), progress_bar() as bar:
        bar.add_task("x", total=1)
        raise RuntimeError("boom")
    assert not bar.live.is_started
    with progress_bar(enabled=False) as quiet:
        quiet.update(quiet.add_task("silent", total=2), completed=1)
    assert capsys.readouterr().err.count("silent") == 0
