import math

import pytest
import torch

from napari_wbc.models import create_model, wcsegnet

# our count (the paper gives none), with the project's 7 classes
PARAMETERS = 64_574_279


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("wcsegnet")


def test_parameter_count_and_constants(net):
    assert wcsegnet.PAPER_PARAMETERS is None
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == PARAMETERS
    assert wcsegnet.CLASSES == (
        "background",
        "cytoplasm",
        "nucleus:neutrophil",
        "nucleus:lymphocyte",
        "nucleus:monocyte",
        "nucleus:eosinophil",
        "nucleus:basophil",
    )
    assert wcsegnet.UNKNOWN_NUCLEUS == 7
    assert wcsegnet.TRAINING["lr"] == 1e-4 and wcsegnet.TRAINING["batch_size"] == 16


def test_forward_shapes_eval_and_train(net):
    assert net.pad_multiple == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert net.train()(x).shape == (1, 7, 64, 64)
        assert net.eval()(x).shape == (1, 7, 64, 64)


def test_widths_and_dropout(net):
    assert [s[0].conv1.out_channels for s in net.down] == [64, 128, 256, 512]
    assert net.bottleneck[0].conv1.out_channels == 1024
    assert [s[0].conv1.out_channels for s in net.up] == [512, 256, 128, 64]
    assert [type(d).__name__ for d in net.drop_dec] == ["Dropout", "Dropout", "Identity", "Identity"]


def test_conv_block_adds_its_input_then_leaky_relu():
    torch.manual_seed(0)
    block = wcsegnet.ConvBlock(4, 4, 0.1)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
        torch.testing.assert_close(block(x), torch.nn.functional.leaky_relu(x, 0.1))
    projected = wcsegnet.ConvBlock(3, 8, 0.1)
    assert isinstance(projected.shortcut, torch.nn.Conv2d) and projected.shortcut.kernel_size == (1, 1)


def test_loss_by_hand():
    # uniform logits over 7 classes: P(bg) = P(cyto) = 1/7, P(nucleus) = 5/7, each type 1/5
    target = torch.tensor([[[0, 1, 3, 7]]])
    logits = torch.zeros(1, 7, 1, 4)
    split = (2 * math.log(7) + 2 * math.log(7 / 5)) / 4
    types = math.log(5)  # only the lymphocyte pixel has a known type
    assert wcsegnet.loss(logits, target).item() == pytest.approx(split + types, abs=1e-6)
    # no known type anywhere: the split term alone
    assert wcsegnet.loss(logits, torch.tensor([[[0, 1, 7, 7]]])).item() == pytest.approx(split, abs=1e-6)


def test_unknown_type_nuclei_carry_no_type_loss_but_the_split_is_supervised():
    torch.manual_seed(0)
    target = torch.randint(0, 8, (2, 8, 8))
    target[0, 0, :4] = torch.tensor([0, 1, 4, 7])  # every kind present
    logits = torch.randn(2, 7, 8, 8)
    base = wcsegnet.loss(logits, target)
    unknown = target == 7
    # permuting the type logits keeps the nucleus probability: no change on unknown-type pixels
    permuted = logits.clone()
    permuted[:, 2:] = torch.where(unknown[:, None], logits[:, [3, 4, 5, 6, 2]], logits[:, 2:])
    torch.testing.assert_close(wcsegnet.loss(permuted, target), base)
    # ... but a change on known-type pixels
    known = (target >= 2) & (target <= 6)
    permuted = logits.clone()
    permuted[:, 2:] = torch.where(known[:, None], logits[:, [3, 4, 5, 6, 2]], logits[:, 2:])
    assert not torch.isclose(wcsegnet.loss(permuted, target), base)
    # raising every type logit on unknown-type nuclei raises P(nucleus) there: lower loss
    raised = logits + 2.0 * (unknown[:, None] & (torch.arange(7) >= 2)[None, :, None, None])
    assert wcsegnet.loss(raised, target) < base
    # and the gradient on those pixels is there, equal for the five types up to the softmax
    x = logits.clone().requires_grad_(True)
    wcsegnet.loss(x, target).backward()
    grad = x.grad.permute(0, 2, 3, 1)[unknown]  # (N, 7)
    assert grad.abs().sum() > 0
    p = logits.softmax(1).permute(0, 2, 3, 1)[unknown]
    ratio = grad[:, 2:] / p[:, 2:]  # the split term alone: d/dz_k = -p_k (1/P_nuc - 1) / N
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5, rtol=1e-4)


def test_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    net = wcsegnet.build(dropout=0.0).train()
    x = torch.randn(1, 3, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    target = ((r2 < 100).long() + (r2 < 30).long())[None].clone()
    target[target == 2] = 3  # a lymphocyte nucleus
    target[0, 14:18, 14:18] = wcsegnet.UNKNOWN_NUCLEUS
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(2):
        loss = wcsegnet.loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(wcsegnet.loss(net(x), target).item())
    assert losses[2] < losses[1] < losses[0]
