"""The CIFAR zoo against the published teachers' state-dict layout (keys, shapes, parameter
counts, output shape), and a zoo-format teacher round trip with weights_only + strict."""

import json
from pathlib import Path

import pytest
import torch

from standard_classification.models import build_model, model_dict

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar"
ZOO_SPEC = SHARED_CIFAR / "teacher_zoo_state_dicts.json"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine the threads'
    spin-waiting makes each step several times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo_spec() -> dict:
    if not ZOO_SPEC.is_file():
        pytest.skip(f"{ZOO_SPEC} is not available")
    return json.loads(ZOO_SPEC.read_text())


def test_zoo_names_match_the_spec(zoo_spec):
    assert sorted(model_dict) == sorted(zoo_spec)


@pytest.mark.parametrize("name", sorted(model_dict))
def test_state_dict_params_and_output_match_the_spec(zoo_spec, name):
    spec = zoo_spec[name]
    model = build_model(name, num_classes=100).eval()
    shapes = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert list(shapes) == list(spec["state_dict"])
    assert shapes == spec["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == spec["params"]
    with torch.no_grad():
        features, logits = model(torch.randn(2, 3, 32, 32), is_feat=True)
    assert list(logits.shape) == spec["output_shape"]
    assert features[-1].shape[0] == 2 and features[-1].ndim == 2


def test_num_classes_and_unknown_name():
    model = build_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        torch.testing.assert_close(model(x, is_feat=True)[1], model(x))
    with pytest.raises(ValueError, match="valid names: resnet8"):
        build_model("resnet9")


def test_zoo_format_teacher_loads_with_weights_only_and_strict(tmp_path):
    teacher = build_model("resnet14").eval()
    for module in teacher.modules():  # non-default BN statistics must survive the round trip
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    path = tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": teacher.state_dict(), "epoch": 240, "accuracy": 69.1}, path)
    loaded = build_model("resnet14")
    loaded.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    loaded.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), teacher(x))
