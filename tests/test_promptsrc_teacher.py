"""PromptKD's published PromptSRC teachers: Dassl checkpoints converted at load time.

The checkpoints are written here as PromptKD's code writes them (trainers/promptsrc.py registers the
whole `CustomCLIP` as "VLPromptLearner"; Dassl's `save_model` stores {state_dict, epoch, optimizer,
scheduler, val_result} as `<dir>/VLPromptLearner/model.pth.tar-<epoch>` and copies the best to
`model-best.pth.tar`), for the tiny teacher CLIP of test_clip_prompt_kd: OpenAI key names, the
frozen weights copied from the Hugging Face model, float16 where CLIP's `convert_weights` puts it.
"""

import argparse
import math
import pickle
import re
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from test_clip_prompt_kd import CLASSES, make_clip, make_tokenizer, write_images

from base_to_new_classification import datasets, train
from base_to_new_classification.clip_prompts import load_frozen_clip, load_tokenizer
from base_to_new_classification.promptsrc_checkpoint import TeacherCheckpointError, _deep_prompts, find_checkpoint

N_CTX, DEPTH = 2, 2  # the tiny CLIPs have 2 layers; PromptKD's teachers use 4 tokens in 9 layers


def openai_layout(clip) -> OrderedDict:
    """The frozen weights of PromptSRC's `CustomCLIP.state_dict()` for this CLIP (OpenAI names)."""
    half = torch.float16  # convert_weights: conv, linear, attention projections, proj, text_projection
    out = OrderedDict()

    def blocks(prefix, layers):
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            p = f"{prefix}.transformer.resblocks.{i}."
            out[p + "attn.in_proj_weight"] = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).to(half)
            out[p + "attn.in_proj_bias"] = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).to(half)
            out[p + "attn.out_proj.weight"], out[p + "attn.out_proj.bias"] = attn.out_proj.weight.to(half), attn.out_proj.bias.to(half)
            out[p + "ln_1.weight"], out[p + "ln_1.bias"] = layer.layer_norm1.weight, layer.layer_norm1.bias
            out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = layer.mlp.fc1.weight.to(half), layer.mlp.fc1.bias.to(half)
            out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = layer.mlp.fc2.weight.to(half), layer.mlp.fc2.bias.to(half)
            out[p + "ln_2.weight"], out[p + "ln_2.bias"] = layer.layer_norm2.weight, layer.layer_norm2.bias

    vision, text = clip.vision_model, clip.text_model
    out["image_encoder.class_embedding"] = vision.embeddings.class_embedding
    out["image_encoder.positional_embedding"] = vision.embeddings.position_embedding.weight
    out["image_encoder.proj"] = clip.visual_projection.weight.t().to(half)
    out["image_encoder.conv1.weight"] = vision.embeddings.patch_embedding.weight.to(half)
    out["image_encoder.ln_pre.weight"], out["image_encoder.ln_pre.bias"] = vision.pre_layrnorm.weight, vision.pre_layrnorm.bias
    blocks("image_encoder", vision.encoder.layers)
    out["image_encoder.ln_post.weight"], out["image_encoder.ln_post.bias"] = vision.post_layernorm.weight, vision.post_layernorm.bias
    blocks("text_encoder", text.encoder.layers)
    out["text_encoder.positional_embedding"] = text.embeddings.position_embedding.weight
    out["text_encoder.ln_final.weight"], out["text_encoder.ln_final.bias"] = text.final_layer_norm.weight, text.final_layer_norm.bias
    out["text_encoder.text_projection"] = clip.text_projection.weight.t().to(half)
    out["logit_scale"] = clip.logit_scale
    return OrderedDict((k, v.detach().clone()) for k, v in out.items())


def promptsrc_state_dict(clip, num_trained_classes: int, seed: int = 0) -> OrderedDict:
    """PromptSRC's state_dict: prompts (ctx float16, as built from the fp16 token embedding; VPT
    float32), the class-name buffers and the frozen CLIP, in registration order."""
    g = torch.Generator().manual_seed(seed)
    width_t, width_v = clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size
    length = clip.config.text_config.max_position_embeddings
    frozen = openai_layout(clip)
    state = OrderedDict()
    state["prompt_learner.ctx"] = torch.randn(N_CTX, width_t, generator=g).half()
    state["prompt_learner.token_prefix"] = torch.randn(num_trained_classes, 1, width_t, generator=g).half()
    state["prompt_learner.token_suffix"] = torch.randn(num_trained_classes, length - 1 - N_CTX, width_t, generator=g).half()
    for key in ("image_encoder.class_embedding", "image_encoder.conv1.weight"):  # the zero-shot copy of the image encoder
        state["prompt_learner.ZS_image_encoder." + key.split(".", 1)[1]] = frozen[key].clone()
    state["image_encoder.VPT"] = torch.randn(N_CTX, width_v, generator=g)
    for key, value in frozen.items():
        state[key] = value
        for encoder, width in (("image_encoder", width_v), ("text_encoder", width_t)):
            for i in range(1, DEPTH):
                if key == f"{encoder}.transformer.resblocks.{i}.ln_2.bias":
                    state[f"{encoder}.transformer.resblocks.{i}.VPT_shallow"] = torch.randn(N_CTX, width, generator=g)
    return state


def save_dassl(state_dict: OrderedDict, directory: Path, epoch: int = 2, best: bool = True) -> Path:
    """Dassl's `save_model` + `save_checkpoint`, with PromptSRC's SGD and constant-warm-up cosine."""
    prompts = [torch.nn.Parameter(v.float()) for k, v in state_dict.items() if k == "prompt_learner.ctx" or "VPT" in k]
    optimizer = torch.optim.SGD(prompts, lr=0.005, momentum=0.9, weight_decay=5e-4)
    for p in prompts:
        p.grad = torch.ones_like(p)
    optimizer.step()
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epoch)
    # dassl.optim.lr_scheduler.ConstantWarmupScheduler.state_dict(): its __dict__ without the optimizer.
    scheduler = {"successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.005], "last_epoch": epoch,
                 "verbose": False, "_step_count": epoch + 1, "_get_lr_called_within_step": False, "_last_lr": [0.005]}
    model_dir = directory / "VLPromptLearner"
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / f"model.pth.tar-{epoch}"
    torch.save({"state_dict": state_dict, "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler,
                "val_result": 91.5}, path)
    (model_dir / "checkpoint").write_text(path.name + "\n")
    if best:
        shutil.copy(path, model_dir / "model-best.pth.tar")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("promptsrc")
    tokenizer = make_tokenizer()
    teacher_dir = make_clip(base / "teacher", 32, 24, tokenizer, seed=1)
    student_dir = make_clip(base / "student", 16, 16, tokenizer, seed=2)
    root = base / "data"
    write_images(root, datasets.DATASETS["oxford_pets"], CLASSES, {"train": 4, "val": 1, "test": 2}, seed=0)
    clip = load_frozen_clip(teacher_dir, "--teacher-model-path")
    data = datasets.load_dataset("oxford_pets", root)
    state = promptsrc_state_dict(clip, num_trained_classes=data.num_base)  # base-to-new: trained on the base classes
    ckpt_dir = base / "teacher_model" / "OxfordPets"
    save_dassl(state, ckpt_dir)
    return argparse.Namespace(base=base, teacher=teacher_dir, student=student_dir, root=root, clip=clip, data=data, state=state,
                              ckpt_dir=ckpt_dir, tokenizer=load_tokenizer(teacher_dir, "--teacher-model-path"))


def load(setup, path):
    return train.load_teacher(path, setup.clip, setup.tokenizer, setup.data, log=lambda message: None)


def test_published_teacher_layout_converts_to_our_prompts(setup):
    path = setup.ckpt_dir / "VLPromptLearner" / "model-best.pth.tar"
    with pytest.raises(pickle.UnpicklingError):  # Dassl's scheduler pickles torch.optim objects
        torch.load(path, weights_only=True)
    teacher = load(setup, setup.ckpt_dir)
    s = setup.state
    assert teacher.prompt_config == {"n_ctx_text": N_CTX, "n_ctx_vision": N_CTX, "depth_text": DEPTH, "depth_vision": DEPTH, "ctx_init": "a photo of a"}
    assert teacher.text_ctx.dtype == torch.float32 and torch.equal(teacher.text_ctx, s["prompt_learner.ctx"].float())
    assert torch.equal(teacher.text_deep[0], s["text_encoder.transformer.resblocks.1.VPT_shallow"])
    assert torch.equal(teacher.vision_prompts[0], s["image_encoder.VPT"])
    assert torch.equal(teacher.vision_prompts[1], s["image_encoder.transformer.resblocks.1.VPT_shallow"])
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        logits = teacher(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


def test_teacher_file_or_directory(setup, tmp_path):
    model_dir = setup.ckpt_dir / "VLPromptLearner"
    best = model_dir / "model-best.pth.tar"
    assert find_checkpoint(setup.ckpt_dir) == find_checkpoint(model_dir) == find_checkpoint(best) == best
    # Without model-best (PromptKD's cross-dataset teacher: VLPromptLearner_large/model.pth.tar-20), the last epoch.
    cross = tmp_path / "ImageNet-xd" / "VLPromptLearner_large"
    cross.mkdir(parents=True)
    for epoch in (5, 20):
        shutil.copy(model_dir / "model.pth.tar-2", cross / f"model.pth.tar-{epoch}")
    assert find_checkpoint(tmp_path / "ImageNet-xd") == cross / "model.pth.tar-20"
    with pytest.raises(FileNotFoundError, match="no model-best.pth.tar or model.pth.tar-<epoch>"):
        find_checkpoint(tmp_path)


def test_distill_from_published_teacher(setup, tmp_path):
    results = train.main([
        "--dataset", "oxford_pets", "--root", str(setup.root), "--teacher-model-path", str(setup.teacher),
        "--student-model-path", str(setup.student), "--teacher-ckpt", str(setup.ckpt_dir), "--save", str(tmp_path),
        "--prompt-depth-vision", "2", "--n-ctx-vision", "2", "--batch-size", "4", "--warmup-epochs", "0", "--epochs", "1",
        "--distill", "kd", "--kd-ratio", "10", "--log-interval", "1",
    ])
    log = (tmp_path / "log.txt").read_text()
    assert "teacher: PromptSRC checkpoint" in log and "model-best.pth.tar (epoch 2)" in log
    assert math.isfinite(results["hm"]) and 0 <= results["hm"] <= 100


def _mutated(setup, change):
    state = OrderedDict((k, v.clone()) for k, v in setup.state.items())
    change(state)
    return state


def _other_patch(state):
    state["image_encoder.conv1.weight"] = torch.zeros(32, 3, 16, 16, dtype=torch.float16)


def _extra_layer(state):
    state["image_encoder.transformer.resblocks.2.ln_1.weight"] = torch.ones(32)


def _prompts_only_three_layers(state):
    """Only the prompts (no frozen weights to count layers by), for a 3-layer vision encoder."""
    for key in [k for k in state if "VPT" not in k and not k.startswith("prompt_learner.")]:
        del state[key]
    state["image_encoder.transformer.resblocks.2.VPT_shallow"] = torch.zeros(N_CTX, 32)


MISMATCHES = {
    "text prompt width": (lambda s: s.__setitem__("text_encoder.transformer.resblocks.1.VPT_shallow", torch.zeros(N_CTX, 16)),
                          "'text_encoder.transformer.resblocks.1.VPT_shallow' has shape [2, 16], expected [2, 32]"),
    "missing vision prompt": (lambda s: s.pop("image_encoder.VPT"), "missing key 'image_encoder.VPT'"),
    "deep prompt beyond the encoder": (_prompts_only_three_layers, "'image_encoder.transformer.resblocks.2.VPT_shallow' is beyond the 2 layers"),
    "backbone patch size": (_other_patch, "'image_encoder.conv1.weight' has shape [32, 3, 16, 16], expected [32, 3, 8, 8]"),
    "backbone depth": (_extra_layer, "image_encoder has 3 layers, --teacher-model-path has 2"),
    "backbone weights": (lambda s: s["image_encoder.class_embedding"].add_(0.5),
                         "'image_encoder.class_embedding' differs from --teacher-model-path's weights"),
    "classes": (lambda s: s.__setitem__("prompt_learner.token_prefix", torch.zeros(3, 1, 32)),
                "built for 3 classes, but --dataset has 4 (2 base)"),
    "student checkpoint": (lambda s: s.pop("prompt_learner.ctx"), "neither a teacher prompt checkpoint written by train_teacher nor a PromptSRC"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MISMATCHES))
def test_mismatched_teacher_names_file_and_key(setup, tmp_path, name):
    change, message = MISMATCHES[name]
    path = save_dassl(_mutated(setup, change), tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        load(setup, tmp_path)
    assert str(path.parent / "model-best.pth.tar") in str(error.value)


def test_unexpected_pickled_object_is_refused(setup, tmp_path):
    path = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": setup.state, "epoch": 1, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(TeacherCheckpointError, match=re.escape(f"{path}: refusing to unpickle argparse.Namespace")):
        load(setup, path)
    # The same weights without the pickled object load as they are.
    torch.save({"state_dict": setup.state, "epoch": 1}, path)
    assert torch.equal(load(setup, path).vision_prompts[0], setup.state["image_encoder.VPT"])


def test_deep_prompts_must_be_contiguous(tmp_path):
    template = "text_encoder.transformer.resblocks.{}.VPT_shallow"
    state = {template.format(1): torch.zeros(2, 8), template.format(3): torch.zeros(2, 8)}
    with pytest.raises(TeacherCheckpointError, match=re.escape(f"{tmp_path}: missing key '{template.format(2)}' (expected shape [2, 8])")):
        _deep_prompts(state, template, 2, 8, 4, tmp_path)


def _ivlp_blocks(state, prefix, x, deep_key, n_ctx, heads, text, mask=None):
    """PromptSRC's `Transformer` of `ResidualAttentionBlock_IVLP`s on x [L, N, D] (clip/model.py)."""
    layer = 0
    while f"{prefix}.transformer.resblocks.{layer}.ln_1.weight" in state:
        p = f"{prefix}.transformer.resblocks.{layer}."
        w = {k[len(p):]: v.float() for k, v in state.items() if k.startswith(p)}
        if layer > 0 and deep_key.format(layer) in state:
            ctx = state[deep_key.format(layer)].float().expand(x.shape[1], -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], ctx, x[1 + n_ctx:]]) if text else torch.cat([x[:-n_ctx], ctx])
        width = x.shape[-1]
        h = torch.nn.functional.layer_norm(x, (width,), w["ln_1.weight"], w["ln_1.bias"], 1e-5)
        h, _ = torch.nn.functional.multi_head_attention_forward(
            h, h, h, width, heads, w["attn.in_proj_weight"], w["attn.in_proj_bias"], None, None, False, 0.0,
            w["attn.out_proj.weight"], w["attn.out_proj.bias"], need_weights=False, attn_mask=mask)
        x = x + h
        h = torch.nn.functional.layer_norm(x, (width,), w["ln_2.weight"], w["ln_2.bias"], 1e-5)
        h = torch.nn.functional.linear(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"])
        x = x + torch.nn.functional.linear(h * torch.sigmoid(1.702 * h), w["mlp.c_proj.weight"], w["mlp.c_proj.bias"])
        layer += 1
    return x


def test_converted_teacher_computes_promptsrc_features(setup):
    """PromptSRC's forward (clip/model.py VisionTransformer, TextEncoder with prompt_learner's
    [prefix, ctx, suffix]), written from their code on the OpenAI-layout file, against our
    converted teacher: the prompts sit at the same positions in every layer."""
    clip = setup.clip
    state = OrderedDict((k, v.float()) for k, v in promptsrc_state_dict(clip, 2, seed=5).items())
    for key, value in openai_layout(clip).items():  # PREC fp32: compare without float16 rounding
        state[key] = value.float()
    vision = clip.vision_model
    state["image_encoder.conv1.weight"] = vision.embeddings.patch_embedding.weight.detach().clone()
    for encoder, layers in (("image_encoder", vision.encoder.layers), ("text_encoder", clip.text_model.encoder.layers)):
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            state[f"{encoder}.transformer.resblocks.{i}.attn.in_proj_weight"] = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
            state[f"{encoder}.transformer.resblocks.{i}.attn.in_proj_bias"] = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach()
            for ours, theirs in (("out_proj", "attn.out_proj"), ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj")):
                module = attn.out_proj if ours == "out_proj" else getattr(layer.mlp, ours)
                state[f"{encoder}.transformer.resblocks.{i}.{theirs}.weight"] = module.weight.detach().clone()
                state[f"{encoder}.transformer.resblocks.{i}.{theirs}.bias"] = module.bias.detach().clone()
    state["image_encoder.proj"] = clip.visual_projection.weight.detach().t().clone()
    state["text_encoder.text_projection"] = clip.text_projection.weight.detach().t().clone()
    path = Path(setup.base) / "fp32" / "model.pth.tar-1"
    path.parent.mkdir(exist_ok=True)
    torch.save({"state_dict": state, "epoch": 1}, path)
    teacher = load(setup, path)
    heads = clip.config.vision_config.num_attention_heads

    # Image: [CLS, patches] + positions, VPT appended, ln_pre, blocks, ln_post(CLS) @ proj.
    pixels = torch.randn(3, 3, 32, 32)
    x = torch.nn.functional.conv2d(pixels, state["image_encoder.conv1.weight"], stride=8).flatten(2).permute(0, 2, 1)
    x = torch.cat([state["image_encoder.class_embedding"].expand(3, 1, -1), x], dim=1) + state["image_encoder.positional_embedding"]
    x = torch.cat([x, state["image_encoder.VPT"].expand(3, -1, -1)], dim=1)
    x = torch.nn.functional.layer_norm(x, (32,), state["image_encoder.ln_pre.weight"], state["image_encoder.ln_pre.bias"], 1e-5)
    x = _ivlp_blocks(state, "image_encoder", x.permute(1, 0, 2), VISION_DEEP_KEY, N_CTX, heads, text=False).permute(1, 0, 2)
    x = torch.nn.functional.layer_norm(x[:, 0], (32,), state["image_encoder.ln_post.weight"], state["image_encoder.ln_post.bias"], 1e-5)
    theirs = x @ state["image_encoder.proj"]
    with torch.no_grad():
        torch.testing.assert_close(teacher.image_features(pixels), theirs / theirs.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)

    # Text: "X X <name>." embedded; [prefix, ctx, suffix] + positions, causal blocks, ln_final at EOT @ projection.
    ids = setup.tokenizer(["a " * N_CTX + name.replace("_", " ") + "." for name in CLASSES], padding="max_length", max_length=24,
                          return_tensors="pt").input_ids
    embedded = clip.text_model.embeddings.token_embedding(ids).detach()
    x = torch.cat([embedded[:, :1], state["prompt_learner.ctx"].expand(len(CLASSES), -1, -1), embedded[:, 1 + N_CTX:]], dim=1)
    x = x + state["text_encoder.positional_embedding"]
    mask = torch.full((24, 24), float("-inf")).triu(1)
    x = _ivlp_blocks(state, "text_encoder", x.permute(1, 0, 2), TEXT_DEEP_KEY, N_CTX, heads, text=True, mask=mask).permute(1, 0, 2)
    x = torch.nn.functional.layer_norm(x, (32,), state["text_encoder.ln_final.weight"], state["text_encoder.ln_final.bias"], 1e-5)
    eot = (ids == setup.tokenizer.eos_token_id).int().argmax(dim=-1)
    theirs = x[torch.arange(len(CLASSES)), eot] @ state["text_encoder.text_projection"]
    with torch.no_grad():
        torch.testing.assert_close(teacher.text_features(), theirs / theirs.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-5)


VISION_DEEP_KEY = "image_encoder.transformer.resblocks.{}.VPT_shallow"
TEXT_DEEP_KEY = "text_encoder.transformer.resblocks.{}.VPT_shallow"
