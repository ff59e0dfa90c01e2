"""Augmentation seen alike by both networks, and per-network views of the images (issue #20)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pairgraph
from pairgraph.config import PairSpec, with_defaults
from pairgraph.tasks import get_task

MNIST = {"kind": "image_classification", "dataset": "mnist1d", "train_size": 64, "val_size": 16, "test_size": 16}


def test_augment_true_is_crop_and_flip_and_old_runs_read_alike():
    assert get_task({**MNIST, "augment": True}).options.augment == "crop_flip"
    assert get_task({**MNIST, "augment": False}).options.augment == "none"
    spec = PairSpec.model_validate({"task": {**MNIST, "augment": False}}).resolved()
    old = {**spec, "task": {k: v for k, v in spec["task"].items() if k != "augment_scale"} | {"augment": False}}
    assert with_defaults(old) == spec


def _folder(root):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                arr = (torch.rand(16, 16, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return f"folder:{root}"


def test_random_resized_crop_draws_a_new_view_each_time_at_the_image_size(tmp_path):
    task = get_task({"kind": "image_classification", "dataset": _folder(tmp_path), "val_size": 2,
                     "augment": "random_resized_crop", "augment_scale": [0.2, 0.5]})
    splits = task.datasets(0)
    torch.manual_seed(0)
    a, b = splits["train"][0][0], splits["train"][0][0]
    assert a.shape == b.shape == (3, 16, 16) and not torch.equal(a, b)
    assert torch.equal(splits["val"][0][0], splits["val"][0][0])  # evaluation splits are never augmented


def _image_pair(tmp_path, **guide):
    spec = {"task": {"kind": "image_classification", "num_classes": 10, "image_size": [32, 32]},
            "guide": {"model": "resnet18", "args": {"preset": "cpu"}, **guide},
            "target": {"model": "deep_fcn", "args": {"num_blocks": 2, "width": 16}}}
    cp = pairgraph.compile(spec, tmp_path, render=False, notify=None)
    return cp, cp.build()


def _first_conv_inputs(pair):
    seen = {}
    for side, net in (("guide", pair.guide), ("target", pair.target)):
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear))
        first.register_forward_pre_hook(lambda m, args, side=side: seen.__setitem__(side, args[0].detach().clone()))
    return seen


def test_both_networks_see_the_same_augmented_batch(tmp_path):
    _, pair = _image_pair(tmp_path)
    seen = _first_conv_inputs(pair)
    x = torch.randn(4, 3, 32, 32)
    pair(x, torch.zeros(4, dtype=torch.long), 0)
    torch.testing.assert_close(seen["guide"], x)
    torch.testing.assert_close(seen["target"].reshape(4, -1), x.reshape(4, -1))


def test_a_guide_input_view_is_resized_and_renormalized_and_part_of_its_network(tmp_path):
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    cp, pair = _image_pair(tmp_path, input={"resize": [48, 40], "normalize": imagenet})
    assert "interpolate" in (tmp_path / "guided_pair.py").read_text()  # in the generated forward
    seen = _first_conv_inputs(pair)
    x = torch.randn(4, 3, 32, 32)
    pair(x, torch.zeros(4, dtype=torch.long), 0)
    cifar_mean, cifar_std = get_task(cp.spec.task).pixel_normalization()
    pixels = x * torch.tensor(cifar_std).view(1, 3, 1, 1) + torch.tensor(cifar_mean).view(1, 3, 1, 1)
    expected = (pixels - torch.tensor(imagenet["mean"]).view(1, 3, 1, 1)) / torch.tensor(imagenet["std"]).view(1, 3, 1, 1)
    expected = F.interpolate(expected, size=(48, 40), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(seen["guide"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen["target"].reshape(4, -1), x.reshape(4, -1))  # the target's view is the task's


def test_input_views_are_refused_where_they_make_no_sense(tmp_path):
    with pytest.raises(pairgraph.PairgraphError, match="guide.input transforms images, but the task's inputs are not"):
        pairgraph.compile({"task": {"kind": "copy_paste"}, "guide": {"model": "transformer_decoder",
                                                                     "input": {"resize": [4, 4]}}},
                          tmp_path / "a", render=False, notify=None)
    with pytest.raises(pairgraph.PairgraphError, match="input.normalize has 1 channels but the task's images have 3"):
        _image_pair(tmp_path / "b", input={"normalize": {"mean": [0.5], "std": [0.5]}})


def test_one_number_resizes_to_a_square():
    from pairgraph.config.spec import InputTransform

    assert InputTransform(resize=64).resize == (64, 64) and InputTransform(resize=[48, 40]).resize == (48, 40)
    with pytest.raises(ValueError, match="resize"):
        InputTransform(resize=True)
