"""tools.init_student: a layer-dropped student of each family the launchers name (GPT-2, OPT,
Llama, Qwen2), checked against the teacher's own modules."""

import json

import pytest
import torch

from distillation_llm.toy import KINDS, make_causal_lm
from tools.init_student import InitError, evenly_spaced, init_student, main


def _layers(model):
    """The decoder-layer list, found by family (independently of init_student's own search)."""
    kind = model.config.model_type
    if kind == "gpt2":
        return model.transformer.h
    if kind == "opt":
        return model.model.decoder.layers
    return model.model.layers


@pytest.fixture(scope="module", params=KINDS)
def teacher(request, tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp(f"teacher-{request.param}")
    make_causal_lm(request.param, out, tiny_tokenizer, hidden_size=32, num_layers=6, num_heads=4, dropout=0.1, seed=7)
    return request.param, out


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced(6, 2) == [0, 5]
    assert evenly_spaced(6, 6) == [0, 1, 2, 3, 4, 5]
    assert evenly_spaced(6, 1) == [0]
    with pytest.raises(InitError, match="between 1 and"):
        evenly_spaced(6, 7)


def test_kept_layers_embeddings_norm_and_head_are_the_teachers(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    kind, teacher_dir = teacher
    record = init_student(teacher_dir, tmp_path / "student", layer_ids="0,2,5")
    assert record["layer_ids"] == [0, 2, 5]
    big = AutoModelForCausalLM.from_pretrained(teacher_dir)
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert small.config.num_hidden_layers == 3 and small.config.model_type == kind
    for new, old in enumerate([0, 2, 5]):
        ours, theirs = _layers(small)[new].state_dict(), _layers(big)[old].state_dict()
        assert ours.keys() == theirs.keys()
        for name in theirs:
            assert torch.equal(ours[name], theirs[name]), (kind, new, name)
    assert torch.equal(small.get_input_embeddings().weight, big.get_input_embeddings().weight)
    assert torch.equal(small.get_output_embeddings().weight, big.get_output_embeddings().weight)
    assert (small.get_output_embeddings().weight.data_ptr() == small.get_input_embeddings().weight.data_ptr()) == bool(big.config.tie_word_embeddings)
    small_params = dict(small.named_parameters())
    for name, parameter in big.named_parameters():  # final norms, positions, projections: everything outside the layer list
        if _layer_index(name) is None:
            assert torch.equal(small_params[name], parameter), name
    saved = json.loads((tmp_path / "student" / "init_student.json").read_text())
    assert saved["teacher"]["layers"] == 6 and saved["parameters"]["student"] < saved["parameters"]["teacher"]
    assert (tmp_path / "student" / "tokenizer_config.json").is_file()


def _layer_index(name: str):
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def test_all_layers_give_the_teachers_outputs_and_a_subset_skips_the_dropped_ones(teacher, tmp_path):
    """Keeping every layer reproduces the teacher's logits; keeping [0, 5] equals the teacher run
    with layers 1-4 replaced by the identity (a forward hook that returns each layer's input)."""
    from transformers import AutoModelForCausalLM

    kind, teacher_dir = teacher
    big = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    ids = torch.randint(3, 200, (2, 11), generator=torch.Generator().manual_seed(0))
    init_student(teacher_dir, tmp_path / "all", layers=6)
    init_student(teacher_dir, tmp_path / "ends", layers=2)
    with torch.no_grad():
        expected = big(ids).logits
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "all").eval()(ids).logits, expected)

        def identity(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        hooks = [_layers(big)[i].register_forward_hook(identity, with_kwargs=True) for i in (1, 2, 3, 4)]
        skipped = big(ids).logits
        for hook in hooks:
            hook.remove()
        ends = AutoModelForCausalLM.from_pretrained(tmp_path / "ends").eval()(ids).logits
    torch.testing.assert_close(ends, skipped, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ends, expected, atol=1e-3)


def test_generation_with_a_cache_works_after_dropping(teacher, tmp_path):
    """Each kept attention layer must know its new index, or the KV cache breaks (or mixes layers)."""
    from transformers import AutoModelForCausalLM

    kind, teacher_dir = teacher
    init_student(teacher_dir, tmp_path / "s", layer_ids="1,4")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    ids = torch.randint(3, 200, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_refusals_name_the_flag(tiny_gpt2_dir, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--layer-ids 0,9: the teacher has layers 0..1"):
        main(["--teacher", str(tiny_gpt2_dir), "--layer-ids", "0,9", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="increasing order"):
        main(["--teacher", str(tiny_gpt2_dir), "--layer-ids", "1,0", "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="no config.json"):
        main(["--teacher", str(tmp_path), "--layers", "1", "--out", str(tmp_path / "a")])
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("keep me")
    with pytest.raises(SystemExit, match="not empty"):
        main(["--teacher", str(tiny_gpt2_dir), "--layers", "1", "--out", str(occupied)])
    assert (occupied / "x").read_text() == "keep me"
