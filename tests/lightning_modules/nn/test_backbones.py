import pickle

import pytest
import torch
import torch.nn as nn

from lightning_modules.nn.backbones import BackboneName, Classifier, build_backbone, load_state_dict


@pytest.mark.parametrize(
    "name,size,feat",
    [("preact_resnet18", 32, 512), ("small_cnn", 32, 128), ("wrn28_10", 32, 640), ("resnet50", 64, 2048)],
)
def test_backbones_return_logits_and_features(name, size, feat):
    net = build_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        logits, f = net(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 7) and f.shape == (2, feat)
    assert net.feature_dim == feat and net.num_classes == 7


def test_wrn34_depth_and_bad_names():
    assert len(build_backbone("wrn34_10").net.layer1) == 5
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match="normalization"):
        build_backbone("small_cnn", normalization="mnist")
    assert {b.value for b in BackboneName} >= {"preact_resnet18", "wrn28_10", "wrn34_10", "resnet50"}


def test_classifier_hook_reads_features_of_any_model_and_normalizes_inside():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    clf = Classifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(4, 3, 2, 2)
    logits, feats = clf(x)
    xn = (x - 0.5) / 0.25
    assert torch.allclose(logits, net(xn))
    assert torch.allclose(feats, torch.relu(net[1](xn.flatten(1))))
    import copy

    clf2 = copy.deepcopy(clf)  # the feature hook must follow the copy (EMA / averaging)
    assert torch.allclose(clf2(x)[1], feats)


class _Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_state_dict_is_weights_only(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_state_dict(good)["w"], torch.ones(2))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    with pytest.raises(RuntimeError, match="weights_only=True"):
        load_state_dict(evil)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_state_dict(tmp_path / "missing.pt")


def test_small_cnn_depth_and_any_wide_resnet():
    keys = [k for k in build_backbone("small_cnn", width=4).state_dict() if k.endswith("weight")]
    assert keys == [
        "net.body.0.weight",
        "net.body.1.weight",
        "net.body.4.weight",
        "net.body.5.weight",
        "net.body.8.weight",
        "net.body.9.weight",
        "net.linear.weight",
    ]  # depth 1: old checkpoints load
    deep = build_backbone("small_cnn", width=4, depth=3).net
    assert sum(isinstance(m, nn.Conv2d) for m in deep.modules()) == 9
    assert deep(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        build_backbone("small_cnn", depth=0)
    # a fourth stage (the CPU profile's network): 8 x width channels at 4x4, features of that width
    four = build_backbone("small_cnn", width=4, stages=4).net
    convs = [m for m in four.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32] and four.feature_dim == 32
    assert four.features(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    with pytest.raises(ValueError, match="stages must be in 1..5"):
        build_backbone("small_cnn", stages=6)
    wrn = build_backbone("wide_resnet", depth=10, widen=2, num_classes=100).net
    assert len(wrn.layer1) == 1 and wrn.linear.out_features == 100 and wrn.feature_dim == 128
