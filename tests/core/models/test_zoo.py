"""core.models.zoo with random weights (nothing downloaded): the registry, input specs, builders and the Classifier."""
import numpy as np
import pytest
import torch
from torch import nn

from core.data.datasets import to_float
from core.models import zoo


def test_registry():
    assert zoo.available() == sorted(zoo.available()) and "fmnist-cnn" in zoo.available()
    assert zoo.layers("fmnist-cnn") == ["conv1", "conv2", "conv3", "conv4", "fc1"]
    assert zoo.entry("fmnist-cnn").trained_here and not zoo.entry("vgg16").trained_here
    with pytest.raises(KeyError, match="available: .*fmnist-cnn"):
        zoo.entry("nope")


def test_fmnist_cnn_shapes_and_taps():
    torch.manual_seed(0)
    model = zoo.build("fmnist-cnn")
    assert isinstance(model, zoo.Classifier) and not model.training
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    torch.testing.assert_close(model(x), model.net(model.normalize(x)))
    assert set(zoo.layers("fmnist-cnn")) <= set(zoo.graph_nodes(model))


def test_classifier_normalises_inside():
    net = nn.Flatten()
    model = zoo.Classifier(net, mean=(0.5, 0.25), std=(0.5, 0.25))
    x = torch.tensor([[[[1.0]], [[0.5]]]])  # (1, 2, 1, 1)
    torch.testing.assert_close(model(x), torch.tensor([[1.0, 1.0]]))
    assert model.state_dict() == {}  # mean and std are not saved with the weights


def test_predict_matches_argmax_of_logits_in_any_batch():
    torch.manual_seed(1)
    model = zoo.build("fmnist-cnn")
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    want = model(torch.from_numpy(to_float(images))).argmax(1).numpy()
    got = model.predict(images)
    assert got.dtype == np.int64 and got.shape == (7,)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.predict(images, batch=2), want)
    assert model.predict(images[:0]).shape == (0,)


@pytest.mark.parametrize("m, size, resize", [
    ({"name": "fmnist-cnn"}, (1, 28, 28), 28),
    ({"name": "vgg16"}, (3, 224, 224), 256),
    ({"name": "vgg16", "image_size": 64}, (3, 64, 64), 73),  # resize scaled as the crop: round(64 * 256 / 224)
    ({"name": "inception_v3", "image_size": 80, "resize": 90}, (3, 80, 80), 90),
    ({"name": "custom", "input_size": [3, 16, 12]}, (3, 16, 12), 16),
    ({"name": "custom", "input_size": [1, 8, 8], "resize": 10}, (1, 8, 8), 10),
])
def test_input_spec(m, size, resize):
    assert zoo.input_spec(m) == zoo.InputSpec(size, resize)


def test_input_spec_of_custom_needs_input_size():
    with pytest.raises(ValueError, match="input_size"):
        zoo.input_spec({"name": "custom"})


def test_from_config_zoo_model_agrees_with_input_spec():
    m = {"name": "resnet50", "weights": "none", "num_classes": 3, "image_size": 64}
    model, spec = zoo.from_config(m)
    assert spec == zoo.input_spec(m)
    assert model(torch.rand(2, *spec.size)).shape == (2, 3)
    with pytest.raises(ValueError, match="random weights"):
        zoo.from_config({**m, "weights": "IMAGENET1K_V1"})


def test_from_config_custom_builder():
    m = {"name": "custom", "input_size": [1, 4, 4], "mean": [0.5], "std": [0.5]}
    model, spec = zoo.from_config(m, builder=lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    assert spec == zoo.InputSpec((1, 4, 4), 4)
    assert model(torch.rand(5, 1, 4, 4)).shape == (5, 2)
    torch.testing.assert_close(model.mean.ravel(), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        zoo.from_config(m, builder=lambda: "model")
    with pytest.raises(ValueError, match="input_size"):
        zoo.from_config({"name": "custom"}, builder=nn.Identity)


def test_missing_weights_are_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the torch cache"):
        zoo.build("resnet50", weights="IMAGENET1K_V1")
    assert not any(tmp_path.rglob("*.pth"))


def test_fmnist_cnn_adapts_to_a_folders_channels_size_and_classes():
    default = zoo.from_config({"name": "fmnist-cnn", "weights": "none"})[0]
    assert default.net.fc1[0].in_features == 64 * 3 * 3 and default.net.fc2.out_features == 10  # unchanged
    m, spec = zoo.from_config({"name": "fmnist-cnn", "weights": "none", "num_classes": 3, "channels": 3,
                               "image_size": 32})
    assert spec.size == (3, 32, 32) and spec.resize == 32
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    assert m.mean.shape == (1, 3, 1, 1) and set(zoo.layers("fmnist-cnn")) <= set(zoo.graph_nodes(m))
    own = zoo.from_config({"name": "fmnist-cnn", "weights": "none", "channels": 3, "mean": [0.5, 0.4, 0.3],
                           "std": [0.2, 0.2, 0.2]})[0]
    torch.testing.assert_close(own.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    with pytest.raises(ValueError, match="need 3 values"):
        zoo.from_config({"name": "fmnist-cnn", "weights": "none", "channels": 3, "mean": [0.5], "std": [0.2]})
