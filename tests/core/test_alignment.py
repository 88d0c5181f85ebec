import torch

from casam.alignment import AlignmentLayer, CAResBlock


def test_untrained_layer_is_identity():
    z = torch.randn(2, 256, 64, 64)
    layer = AlignmentLayer(blocks=2).eval()
    with torch.no_grad():
        assert torch.equal(layer(z), z)


def test_paper_size_parameter_count():
    # method.md: 3 blocks x 2 convs x (256*256*9 + 256) = 3.54 M (+ tiny ECA and LayerNorm terms)
    n = sum(p.numel() for p in AlignmentLayer(blocks=3).parameters())
    convs = 3 * 2 * (256 * 256 * 9 + 256)
    assert n == convs + 3 * (3 + 2 * 256)  # + ECA kernel (3) and LayerNorm (2 x 256) per block
    assert abs(n / 1e6 - 3.54) < 0.01


def test_every_parameter_gets_a_gradient_after_one_step():
    torch.manual_seed(0)
    block = CAResBlock()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    z = torch.randn(1, 256, 8, 8)
    for _ in range(2):  # the first step moves the zero-initialised conv, the second reaches conv1
        opt.zero_grad()
        block(z).pow(2).mean().backward()
        opt.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_channel_attention_rescales_channels():
    block = CAResBlock()
    torch.nn.init.normal_(block.conv2.weight, std=0.01)
    z = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        h = block.conv2(block.act(block.conv1(block.norm(z))))
        w = torch.sigmoid(block.eca.conv(h.mean(dim=(2, 3))[:, None, :]))[0, 0]
        assert torch.allclose(block(z), z + h * w[None, :, None, None], atol=1e-6)


def test_blocks_in_state():
    assert AlignmentLayer.blocks_in_state(AlignmentLayer(blocks=3).state_dict()) == 3
