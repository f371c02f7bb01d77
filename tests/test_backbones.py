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
