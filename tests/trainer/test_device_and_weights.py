"""WARP_DEVICE and WARP_INITIAL_WEIGHTS=imagenet: the choices, and the fall-back to scratch when the ImageNet
weights cannot be fetched (no network here: the fetch is replaced)."""

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from services.trainer.models import (
    ICON_HEAD,
    DepthwiseConv2d,
    choose_device,
    icon_model,
    load_imagenet_weights,
)
from services.trainer.settings import TrainerSettings
from shared.torchvision_compat import import_torchvision

tv = import_torchvision()


def test_auto_trains_on_a_gpu_when_torch_sees_one_and_on_the_cpu_otherwise():
    assert choose_device("auto", cuda_available=True) == "cuda"
    assert choose_device("auto", cuda_available=False) == "cpu"
    assert choose_device("cpu", cuda_available=True) == "cpu"
    assert choose_device("cuda:1", cuda_available=True) == "cuda:1"
    with pytest.raises(ValueError, match="WARP_DEVICE=cuda, but torch sees no CUDA device"):
        choose_device("cuda", cuda_available=False)


def test_the_settings_accept_imagenet_or_a_path_and_refuse_an_unknown_device():
    assert TrainerSettings(initial_weights="imagenet").initial_weights == "imagenet"
    assert TrainerSettings(initial_weights="/w/icons.pt").initial_weights == Path("/w/icons.pt")
    assert TrainerSettings().device == "auto"
    with pytest.raises(ValidationError, match="device"):
        TrainerSettings(device="gpu")


def test_unreachable_imagenet_weights_leave_the_model_from_scratch_with_one_log_line(caplog):
    def offline() -> dict:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    model = icon_model(4)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="services.trainer.models"):
        assert load_imagenet_weights(model, ICON_HEAD, fetch=offline) == 0
    [line] = caplog.records
    assert line.levelno == logging.WARNING and "trains from scratch" in line.getMessage()
    assert "name resolution" in line.getMessage()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_imagenet_weights_are_loaded_with_the_first_convolution_made_for_bgr_inputs_without_mean_and_std():
    imagenet = icon_model(1000).state_dict()
    model = icon_model(4)
    assert load_imagenet_weights(model, ICON_HEAD, fetch=lambda: imagenet) == len(imagenet) - 2
    first = imagenet["features.0.0.weight"]
    bgr_std = torch.tensor([0.225, 0.224, 0.229]).view(1, 3, 1, 1)
    assert torch.allclose(model.features[0][0].weight, first[:, [2, 1, 0]] / bgr_std)
    assert torch.equal(model.features[1][0].block[0][0].weight, imagenet["features.1.0.block.0.0.weight"])
    assert model.classifier[1].weight.shape == (4, 1280)  # the head stays the model's own


def test_the_icon_model_trains_without_stochastic_depth_and_clients_load_it_as_they_build_it():
    model = icon_model(5)
    depths = [m.p for m in model.modules() if type(m).__name__ == "StochasticDepth"]
    assert depths and set(depths) == {0.0}
    client = tv.models.efficientnet_b0(weights=None, num_classes=5)  # WIRE_CONTRACT §4: how clients build it
    client.load_state_dict(model.state_dict())  # strict: the same keys and shapes
    client.eval()
    model.eval()
    crop = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(client(crop), model(crop), atol=1e-5)


@pytest.mark.parametrize("size", [64, 128])
def test_depthwise_layers_whose_kernel_is_larger_than_their_map_train_to_the_same_gradients(size):
    model = icon_model(6)
    plain = tv.models.efficientnet_b0(weights=None, num_classes=6, stochastic_depth_prob=0.0)
    plain.load_state_dict(model.state_dict())
    swapped = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert len(swapped) == 16 and all(isinstance(m, torch.nn.Conv2d) for m in swapped)
    crops = torch.rand(4, 3, size, size).contiguous(memory_format=torch.channels_last)
    gradients = []
    for network in (model, plain):
        network.to(memory_format=torch.channels_last).train()
        torch.manual_seed(0)  # the same dropout
        network(crops).logsumexp(1).sum().backward()
        gradients.append({name: p.grad for name, p in network.named_parameters()})
    for name, expected in gradients[1].items():
        assert torch.allclose(
            gradients[0][name], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max())
        ), name
