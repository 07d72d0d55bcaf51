import math

import pytest
import torch

from napari_wbc.models import create_model, wbcnet

# our count (the paper gives none): 3-class head; the paper's one-channel head has 5 x 66 fewer
PARAMETERS = 25_536_655
PARAMETERS_PAPER_HEAD = 25_536_325


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("wbcnet")


def _count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_parameter_count(net):
    assert wbcnet.PAPER_PARAMETERS is None
    assert _count(net) == PARAMETERS
    assert _count(wbcnet.build(paper_head=True)) == PARAMETERS_PAPER_HEAD
    assert wbcnet.KIND == "semantic" and wbcnet.TRAINING["optimizer"] == "adam"


def test_forward_shapes_eval_and_train(net):
    assert net.pad_multiple == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = net.train()(x)
        assert isinstance(outs, list) and len(outs) == 5
        assert all(o.shape == (1, 3, 64, 64) for o in outs)
        assert net.eval()(x).shape == (1, 3, 64, 64)


def test_paper_head_gives_two_class_logits_at_inference():
    torch.manual_seed(0)
    net = wbcnet.build(paper_head=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = net.train()(x)
        assert [o.shape for o in outs] == [(1, 1, 32, 32)] * 5
        net.eval()
        logits = net(x)
        assert logits.shape == (1, 2, 32, 32)
        heads = zip(net.heads, net.features(x), strict=True)
        cell = torch.stack([torch.sigmoid(h(f)) for h, f in heads]).mean(0)
        torch.testing.assert_close(logits.softmax(1)[:, 1:], cell, atol=1e-5, rtol=1e-5)


def test_inference_averages_the_five_outputs(net):
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        mean = torch.stack([h(f).softmax(1) for h, f in zip(net.heads, net.features(x), strict=True)]).mean(0)
        torch.testing.assert_close(net(x).softmax(1), mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "skips, inputs",
    [
        ("mixed", {"0_1": 2, "0_2": 3, "0_3": 3, "0_4": 3, "1_2": 3, "3_1": 2}),
        ("dense", {"0_1": 2, "0_2": 3, "0_3": 4, "0_4": 5, "1_3": 4}),
        ("nested", {"0_1": 2, "0_2": 2, "0_4": 2}),
    ],
)
def test_skip_pathways(net, skips, inputs):
    """Node X_{i,j} takes the upsampled node below plus its row's nodes: mixed = j-1 and j-2."""
    if skips != "mixed":
        net = wbcnet.build(skips=skips)
    assert sorted(net.nodes) == sorted(f"{i}_{j}" for j in range(1, 5) for i in range(5 - j))
    for key, n in inputs.items():
        width = wbcnet.WIDTHS[int(key[0])]
        assert net.nodes[key][0].in_channels == n * width
    assert wbcnet._sources(2, "mixed") == [1, 0] and wbcnet._sources(4, "mixed") == [3, 2]


def test_encoder_is_resnet34(net):
    assert [len(stage) for stage in net.encoder] == [3, 4, 6, 3]
    assert [stage[0].conv1.out_channels for stage in net.encoder] == [64, 128, 256, 512]
    assert [stage[0].conv1.stride[0] for stage in net.encoder] == [1, 2, 2, 2]


def test_loss_by_hand_for_the_paper_head():
    # zero logits: p = 0.5 everywhere; 6 of 16 pixels are cell
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :3] = 1
    target[0, 3, 3] = 2
    logits = torch.zeros(1, 1, 4, 4)
    n, total = 7, 16
    tp, fp, fn = 0.5 * n, 0.5 * (total - n), 0.5 * n
    tversky = 1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)
    expected = math.log(2) + tversky
    assert wbcnet.loss([logits] * 5, target).item() == pytest.approx(expected, abs=1e-6)


def test_loss_by_hand_for_three_classes():
    # uniform logits: p = 1/3 for cytoplasm and nucleus, 2/3 for the whole cell
    target = torch.tensor([[[0, 1, 2, 2]]])
    logits = torch.zeros(1, 3, 1, 4)
    bce_cyto = (math.log(3) + 3 * math.log(1.5)) / 4  # one cytoplasm pixel of four
    bce_nuc = (2 * math.log(3) + 2 * math.log(1.5)) / 4
    bce_cell = (3 * math.log(1.5) + math.log(3)) / 4

    def tv(p, n_in, n):
        tp, fp, fn = p * n_in, p * (n - n_in), (1 - p) * n_in
        return 1 - (tp + 1) / (tp + 0.3 * fp + 0.7 * fn + 1)

    expected = (bce_cyto + bce_nuc + bce_cell) / 3 + (tv(1 / 3, 1, 4) + tv(1 / 3, 2, 4) + tv(2 / 3, 3, 4)) / 3
    assert wbcnet.loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_loss_of_a_perfect_prediction_is_near_zero_and_outputs_are_averaged():
    target = torch.tensor([[[0, 1, 2, 2]]])
    perfect = 50 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert wbcnet.loss([perfect] * 5, target).item() < 1e-6
    wrong = torch.zeros(1, 3, 1, 4)
    mixed = wbcnet.loss([perfect, wrong], target)
    assert mixed.item() == pytest.approx(wbcnet.loss(wrong, target).item() / 2, abs=1e-6)


def test_adam_steps_lower_the_loss():
    torch.manual_seed(0)
    net = wbcnet.build().train()
    x = torch.randn(1, 3, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    target = ((r2 < 100).long() + (r2 < 30).long())[None]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = wbcnet.loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(wbcnet.loss(net(x), target).item())
    assert losses[2] < losses[1] < losses[0]
