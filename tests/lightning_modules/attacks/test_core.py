import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_modules.attacks.core import check_eps, fgsm_rs, pgd, projected_gradient, trades_attack


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
    ).eval()


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
def test_pgd_stays_in_ball_and_box_and_raises_loss(norm, eps):
    net = toy_model()
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 10, (16,))
    x_adv = pgd(net, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)


def test_pgd_does_not_touch_parameter_grads():
    net = toy_model()
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    pgd(net, x, y, steps=3)
    assert all(p.grad is None for p in net.parameters())


def test_restarts_keep_worst_case_per_example():
    net = toy_model(1)
    x, y = torch.rand(32, 3, 8, 8), torch.randint(0, 10, (32,))
    torch.manual_seed(0)
    one = pgd(net, x, y, eps=2 / 255, alpha=0.5 / 255, steps=3, restarts=1)
    torch.manual_seed(0)
    many = pgd(net, x, y, eps=2 / 255, alpha=0.5 / 255, steps=3, restarts=4)
    with torch.no_grad():
        l1 = F.cross_entropy(net(one), y, reduction="none")
        l4 = F.cross_entropy(net(many), y, reduction="none")
        fooled1, fooled4 = net(one).argmax(1) != y, net(many).argmax(1) != y
    assert (fooled4 | ~fooled1).all()  # never loses a success of the first restart
    assert ((l4 >= l1 - 1e-6) | fooled4).all()


def test_projected_gradient_descends_when_asked():
    target = torch.full((4, 3, 4, 4), 0.5)
    x = torch.rand(4, 3, 4, 4)
    out = projected_gradient(
        lambda z: ((z - target) ** 2).flatten(1).sum(1),
        x,
        eps=1.0,
        alpha=0.05,
        steps=30,
        random_start=False,
        ascend=False,
    )
    assert ((out - target).abs() < (x - target).abs() + 1e-6).all()
    assert (out - target).abs().max() <= 0.05 + 1e-6


def test_check_eps_rejects_pixel_units():
    with pytest.raises(ValueError, match="8/255"):
        check_eps(8)
    with pytest.raises(ValueError, match="8/255"):
        pgd(toy_model(), torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), eps=8)
    assert check_eps(2.0, "L2") == 2.0  # L2 budgets above 1 are legitimate


def test_fgsm_rs_and_trades_attack():
    net = toy_model(2)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    xa = fgsm_rs(net, x, y, eps=8 / 255)
    assert (xa - x).abs().max() <= 8 / 255 + 1e-6
    xt = trades_attack(net, x, eps=8 / 255, alpha=2 / 255, steps=5)
    assert (xt - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        pc = net(x).softmax(1)
        kl = lambda z: (pc * (pc.log() - z.log_softmax(1))).sum(1).mean()  # noqa: E731
        assert kl(net(xt)) > kl(net((x + 0.001 * torch.randn_like(x)).clamp(0, 1)))


def test_undefended_trained_toy_model_goes_to_zero_under_pgd():
    # a linear model on separable data: clean accuracy 100%, PGD with a large eps -> 0%
    torch.manual_seed(0)
    n = 256
    y = torch.randint(0, 2, (n,))
    x = (0.5 + (y.float() * 2 - 1).view(-1, 1, 1, 1) * 0.05 + 0.02 * torch.randn(n, 1, 4, 4)).clamp(0, 1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean() > 0.99
    accs = []
    for eps in (0.01, 0.05, 0.2):
        xa = pgd(net, x, y, eps=eps, alpha=eps / 4, steps=20)
        accs.append((net(xa).argmax(1) == y).float().mean().item())
    assert accs[0] >= accs[1] >= accs[2]
    assert accs[2] == 0.0


@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_matches_torchattacks_from_the_same_start(steps):
    """The package's L-inf PGD and torchattacks' PGD, both starting at ``x`` (no random start): the same
    adversarial examples, on a small nonlinear model."""
    import torchattacks

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)
    ).eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 10, (16,))
    ours = pgd(net, x, y, eps=8 / 255, alpha=2 / 255, steps=steps, random_start=False)
    ref = torchattacks.PGD(net, eps=8 / 255, alpha=2 / 255, steps=steps, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ours - x).abs().max() > min(steps * 2, 8) / 255 - 1e-4  # the attack moved
