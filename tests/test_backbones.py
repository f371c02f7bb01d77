import pytest
import torch

from mtml_lib.models import MLP, Conv4, PlainBatchNorm2d


def test_plain_batchnorm_equals_torch_batchnorm_in_training_mode():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    ours = PlainBatchNorm2d(3).double()
    ref = torch.nn.BatchNorm2d(3, track_running_stats=False).double()
    with torch.no_grad():
        ours.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        ours.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)


def test_plain_batchnorm_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"PlainBatchNorm2d\(3\) expects \(B, 3, H, W\)"):
        PlainBatchNorm2d(3)(torch.randn(2, 4, 5, 5))


@pytest.mark.parametrize("norm", ["plain", "batchnorm", "none"])
def test_conv4_shapes(norm):
    net = Conv4(in_channels=1, hidden=8, n_out=5, norm=norm)
    assert net(torch.randn(7, 1, 28, 28)).shape == (7, 5)
    assert Conv4(hidden=8, norm=norm).feature_dim == 8
    assert Conv4(hidden=8, norm=norm)(torch.randn(2, 1, 28, 28)).shape == (2, 8)


def test_conv4_standard_size_and_errors():
    net = Conv4(in_channels=1, hidden=64, n_out=5)
    # 4 conv layers (3x3) + 4 affine norms + a 64->5 head
    expected = (1 * 9 * 64 + 64) + 3 * (64 * 9 * 64 + 64) + 4 * 128 + (64 * 5 + 5)
    assert sum(p.numel() for p in net.parameters()) == expected
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        Conv4(norm="layer")
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(3, 28, 28))
    with pytest.raises(ValueError, match="too small"):
        Conv4(image_size=8)


def test_mlp_sizes_and_errors():
    net = MLP([1, 40, 40, 1])
    assert net(torch.randn(10, 1)).shape == (10, 1)
    assert sum(p.numel() for p in net.parameters()) == 2 * 40 + 41 * 40 + 41
    with pytest.raises(ValueError, match="two positive"):
        MLP([3])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP([1, 2], activation="swish")


def test_tf_same_padding_and_the_strided_conv4_of_finn_et_al():
    from mtml_lib.models.backbones import StridedConv4, tf_same_padding

    assert [tf_same_padding(n, 3, 2) for n in (28, 14, 7, 4)] == [(0, 1), (0, 1), (1, 1), (0, 1)]
    torch.manual_seed(0)
    model = StridedConv4(1, hidden=64, n_out=5)
    sizes = []
    for conv in model.convs:
        conv.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    x = torch.rand(7, 1, 28, 28)
    assert model(x).shape == (7, 5)
    assert sizes == [(14, 14), (7, 7), (4, 4), (2, 2)]  # 28 -> 14 -> 7 -> 4 -> 2, no pooling
    assert model.features(x).shape == (7, 64)  # averaged over the last 2x2 map, not flattened
    assert all(norm.weight is None and norm.eps == 1e-3 for norm in model.norms)  # a shift, no scale
    assert 0.9 < model.head.weight.std().item() < 1.1 and model.head.bias.abs().sum() == 0  # N(0, 1) head
    assert all(conv.bias.abs().sum() == 0 for conv in model.convs)
    bound = (6 / (9 * 64 + 9 * 64)) ** 0.5  # Glorot-uniform of a 3x3 64 -> 64 convolution
    assert model.convs[1].weight.abs().max() <= bound and model.convs[1].weight.abs().max() > 0.9 * bound
    assert model.fast_names == [f"convs.{i}.{p}" for i in range(4) for p in ("weight", "bias")] + ["head.weight", "head.bias"]
    # the shift-only normalisation equals PlainBatchNorm2d with its weight fixed at one
    plain = PlainBatchNorm2d(64, eps=1e-3)
    plain.bias.data = torch.randn(64)
    model.norms[0].bias.data = plain.bias.data.clone()
    h = torch.randn(4, 64, 5, 5)
    assert torch.allclose(model.norms[0](h), plain(h))
