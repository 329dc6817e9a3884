"""Image score networks (SeedUNet, UNet, NCSN): shapes, conditioning on c and y, gradients, sizes."""
import pytest
import torch

from scoregen.models.nets.ncsn import NCSN
from scoregen.models.nets.unet import SeedUNet, UNet

torch.set_num_threads(1)

SMALL = {
    "seed-unet": lambda ch, **kw: SeedUNet(in_channels=ch, channels=(8, 16, 32, 32), embed_dim=32, **kw),
    "unet": lambda ch, **kw: UNet(in_channels=ch, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=1,
                                  attn_levels=(1,), heads=2, dropout=0.1, **kw),
    "ncsn": lambda ch, **kw: NCSN(in_channels=ch, ngf=8, emb_dim=16, **kw),
}
SIZES = {"seed-unet": [(1, 28, 28), (3, 32, 32), (1, 17, 23)],
         "unet": [(1, 28, 28), (3, 32, 32), (3, 30, 27), (1, 8, 8)],
         "ncsn": [(1, 28, 28), (3, 32, 32), (1, 13, 21), (1, 8, 8)]}


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_output_shape_for_sizes_and_channels(name):
    torch.manual_seed(0)
    for ch, h, w in SIZES[name]:
        net = SMALL[name](ch).eval()
        out = net(torch.randn(2, ch, h, w), torch.randn(2))
        assert out.shape == (2, ch, h, w) and torch.isfinite(out).all()
    print(f"{name}: {n_params(net)} parameters (small test widths)")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_noise_input_matters_and_examples_stay_separate(name):
    torch.manual_seed(0)
    net = SMALL[name](1).eval()
    x, c = torch.randn(3, 1, 28, 28), torch.tensor([-2.0, 0.0, 1.5])
    with torch.no_grad():
        base = net(x, c)
        c2 = c.clone()
        c2[0] = 2.5
        moved = net(x, c2)
    rel = (moved[0] - base[0]).norm() / base[0].norm()
    assert rel > 1e-2  # the output depends on c, by more than round-off
    # per-example normalisation: changing example 0's c leaves examples 1 and 2 as they were
    assert torch.allclose(moved[1:], base[1:], atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_labels_change_output_only_when_conditional(name):
    torch.manual_seed(0)
    x, c = torch.randn(2, 1, 28, 28), torch.zeros(2)
    net = SMALL[name](1, n_classes=10).eval()
    with torch.no_grad():
        a, b, null = net(x, c, torch.tensor([3, 3])), net(x, c, torch.tensor([7, 7])), net(x, c)
    assert (a - b).norm() / a.norm() > 1e-2
    assert torch.allclose(null, net(x, c, torch.tensor([10, 10])))  # y=None is the null label 10
    with pytest.raises(ValueError, match="labels must lie in 0..10"):
        net(x, c, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="n_classes=0"):
        SMALL[name](1)(x, c, torch.tensor([1, 2]))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    net = SMALL[name](1, n_classes=10)
    net(torch.randn(4, 1, 28, 28), torch.randn(4), torch.tensor([0, 1, 2, 10])).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_bad_inputs_are_named():
    net = SMALL["unet"](1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="noise input c"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="17x17"):
        SMALL["seed-unet"](1)(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(channel_mults=(1, 2), attn_levels=(2,))


def test_seed_unet_parameter_count_matches_its_layers():
    """Seed 001's ScoreNet, counted layer by layer: embedding Linear(256, 256); bias-free convs
    1->32->64->128->256 (3x3); 7 dense projections 256->c; GroupNorm affine pairs; bias-free
    transposed convs 256->128, 256->64, 128->32 and 64->1 with bias."""
    ch, e = (32, 64, 128, 256), 256
    embed = e * e + e
    convs = 9 * (1 * 32 + 32 * 64 + 64 * 128 + 128 * 256)
    dense = (e + 1) * (32 + 64 + 128 + 256 + 128 + 64 + 32)
    norms = 2 * sum(ch) + 2 * (128 + 64 + 32)
    tconvs = 9 * (256 * 128 + 256 * 64 + 128 * 32 + 64 * 1) + 1
    net = SeedUNet()
    assert n_params(net) == embed + convs + dense + norms + tconvs
    print(f"SeedUNet: {n_params(net)} parameters; UNet(base 64, 1-2-2): {n_params(UNet())}; "
          f"NCSN(ngf 32): {n_params(NCSN())}")


@pytest.mark.parametrize("name,kw", [("seed-unet", {"channels": [8, 16, 16, 16], "embed_dim": 32}),
                                     ("unet", {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                                               "attn_levels": [], "mid_attn": False, "heads": 1})])
def test_conditional_image_nets_expose_n_classes_to_the_trainer(name, kw):
    """The trainer and guidance read net.n_classes: a conditional U-Net must train with its labels."""
    from scoregen.models import ScoreModel
    from scoregen.models.nets import build_net
    from scoregen.process.sde import VESDE
    from scoregen.training.trainer import TrainConfig, Trainer

    net = build_net(name, in_channels=1, n_classes=10, **kw)
    assert net.n_classes == 10
    x = torch.rand(8, 1, 28, 28)  # SeedUNet needs at least 17x17
    tr = Trainer(ScoreModel(net, VESDE()), x, TrainConfig(steps=1, batch_size=4, progress=False),
                 labels=torch.arange(8) % 10)
    assert tr.labels is not None
    assert torch.equal(tr.labels.cpu(), torch.arange(8) % 10)
    # the labels reach the network: its output depends on them, and one step trains the label table
    model = tr.model
    xb, tb = x[:2], torch.full((2,), 0.5)
    with torch.no_grad():
        assert not torch.allclose(model(xb, tb, torch.tensor([0, 0])), model(xb, tb, torch.tensor([3, 3])))
    label_params = {k: v.detach().clone() for k, v in net.named_parameters() if k.startswith("label")}
    assert label_params, "the conditional net has no label table"
    tr.train_step()
    assert any(not torch.equal(v, dict(net.named_parameters())[k]) for k, v in label_params.items())
