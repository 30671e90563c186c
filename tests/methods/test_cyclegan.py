import copy
import sys

import pytest
import torch

from raystyle.config import Config
from raystyle.methods.cyclegan import CycleGAN, ImagePool, linear_decay, resolve_amp


def tiny(**train):
    return Config().replace(model={"ngf": 4, "ndf": 4, "n_blocks": 1},
                            train={"pool_size": 3, **train})


def batch(seed, n=2, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_step_updates_all_four_nets_and_reports_losses():
    cfg = tiny()
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    before = {k: [p.clone() for p in getattr(m, k).parameters()] for k in ("g_ab", "g_ba", "d_a", "d_b")}
    losses = m.train_step(*batch(0))
    assert set(losses) == {"g_gan_ab", "g_gan_ba", "cycle_a", "cycle_b", "idt_a", "idt_b", "g_total", "d_a", "d_b"}
    assert all(torch.isfinite(v) for v in losses.values())
    for name, old in before.items():
        new = list(getattr(m, name).parameters())
        assert any(not torch.equal(a, b) for a, b in zip(old, new, strict=True)), name
    assert m.step == 1


def test_identity_weight_zero_skips_identity():
    cfg = tiny().replace(loss={"lambda_identity": 0.0})
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    assert "idt_a" not in m.train_step(*batch(0))


def test_losses_drop_on_a_fixed_batch():
    cfg = tiny(lr=2e-3)
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    a, b = (torch.nn.functional.interpolate(x[:, :, :4, :4], size=32, mode="bilinear") for x in batch(1))
    first = m.train_step(a, b)
    for _ in range(50):  # torch 2.15: 0.78x of the first loss after 25 steps, 0.50x after 50
        last = m.train_step(a, b)
    assert last["cycle_a"] < 0.7 * first["cycle_a"]


def test_state_round_trip_continues_identically():
    cfg = tiny()
    ref = CycleGAN(cfg.model, cfg.loss, cfg.train)
    for s in range(3):
        ref.train_step(*batch(s))
    # deepcopy: state dicts hold references to the live tensors that training mutates
    nets, state, rank = copy.deepcopy((ref.nets_state(), ref.train_state(), ref.rank_state()))
    expected = [ref.train_step(*batch(s)) for s in range(3, 6)]
    other = CycleGAN(cfg.model, cfg.loss, cfg.train)
    other.load(nets, state, rank)
    assert other.step == 3
    got = [other.train_step(*batch(s)) for s in range(3, 6)]
    for e, g in zip(expected, got, strict=True):
        for k in e:
            assert torch.allclose(e[k], g[k], atol=1e-6), k


def test_image_pool_fills_then_mixes_history():
    pool = ImagePool(2, seed=0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 1, 1)
    out = pool.query(x[:2])
    assert torch.equal(out, x[:2]) and len(pool.images) == 2
    seen = set()
    for _ in range(20):
        seen |= {float(v) for v in pool.query(x[2:4])[:, 0, 0, 0]}
    assert seen & {0.0, 1.0}, "old fakes are returned from the history"
    assert ImagePool(0).query(x) is x


def test_linear_decay_schedule():
    f = linear_decay(100, 100)
    # As in the reference code: epochs 0..99 at full rate, then 100 steps down towards 0.
    assert f(0) == 1.0 and f(99) == 1.0
    assert f(100) == pytest.approx(1 - 1 / 101)
    assert f(199) == pytest.approx(1 - 100 / 101)


def test_amp_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", cpu)


def test_bf16_autocast_step_on_cpu():
    cfg = tiny(amp="bf16", channels_last=True)
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    losses = m.train_step(*batch(0))
    assert all(torch.isfinite(v) for v in losses.values())


def test_pure_modules_do_not_import_ray():
    import subprocess

    code = ("import sys; import raystyle.core.nets, raystyle.core.losses, raystyle.methods.cyclegan, raystyle.data.datasets, "
            "raystyle.checkpoint, raystyle.config, raystyle.runlog, raystyle.data.images, "
            "raystyle.export.generator, raystyle.infer.generator, raystyle.registry, raystyle.train.evaluate, raystyle.methods.quality, raystyle.data.download, "
            "raystyle.core.perceptual, raystyle.methods.nst, raystyle.methods.fast, raystyle.methods.distill, raystyle.methods, "
            "raystyle.methods.adain, raystyle.infer.arbitrary, raystyle.infer.video; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_command_line_loads_without_torch():
    """Every `raystyle` call builds the whole parser: `nst`, `batch --nst` and `train --method
    fast` must not import torch for it (`raystyle stylize` would pay ~1 s of start-up)."""
    import subprocess

    code = "import sys; from raystyle.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_on_cuda(amp):
    cfg = tiny(amp=amp)
    m = CycleGAN(cfg.model, cfg.loss, cfg.train, device="cuda")
    for s in range(3):
        losses = m.train_step(*batch(s))
    assert all(torch.isfinite(v) for v in losses.values())
    assert m.scaler.is_enabled() == (amp == "fp16")


@pytest.mark.parametrize("lambda_cycle, lambda_identity", [(10.0, 0.5), (7.0, 0.3), (4.0, 0.0)])
def test_gradients_are_the_papers_weighted_losses(lambda_cycle, lambda_identity):
    """The gradients the step leaves on every net equal those of the paper's objective, written
    out here from scratch (LSGAN, L1 cycle and identity, identity weighted
    lambda_identity * lambda_cycle, D's loss halved), so any weight or term wrong in the step
    shows. Without the pool's history (first query) D sees exactly the step's fakes."""
    cfg = tiny().replace(loss={"lambda_cycle": lambda_cycle, "lambda_identity": lambda_identity},
                         train={"pool_size": 8})
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    ref = copy.deepcopy(m)  # the nets before the step
    a, b = batch(3)
    m.train_step(a, b)

    mse, l1 = torch.nn.functional.mse_loss, torch.nn.functional.l1_loss
    fake_b, fake_a = ref.g_ab(a), ref.g_ba(b)
    loss_g = (mse(ref.d_b(fake_b), torch.ones(1).expand_as(ref.d_b(fake_b)))  # D_b(G_ab(a)) -> 1
              + mse(ref.d_a(fake_a), torch.ones(1).expand_as(ref.d_a(fake_a)))
              + lambda_cycle * (l1(ref.g_ba(fake_b), a) + l1(ref.g_ab(fake_a), b))
              + lambda_identity * lambda_cycle * (l1(ref.g_ba(a), a) + l1(ref.g_ab(b), b)))
    gen_params = [*ref.g_ab.parameters(), *ref.g_ba.parameters()]
    expected_g = torch.autograd.grad(loss_g, gen_params)
    got_g = [p.grad for p in (*m.g_ab.parameters(), *m.g_ba.parameters())]

    def d_loss(d, real, fake):  # 0.5 * (||D(real) - 1||^2 + ||D(fake)||^2)
        pr, pf = d(real), d(fake.detach())
        return 0.5 * (mse(pr, torch.ones_like(pr)) + mse(pf, torch.zeros_like(pf)))

    loss_d = d_loss(ref.d_a, a, fake_a) + d_loss(ref.d_b, b, fake_b)
    disc_params = [*ref.d_a.parameters(), *ref.d_b.parameters()]
    expected_d = torch.autograd.grad(loss_d, disc_params)
    got_d = [p.grad for p in (*m.d_a.parameters(), *m.d_b.parameters())]
    for expected, got in ((expected_g, got_g), (expected_d, got_d)):
        assert len(expected) == len(got)
        for e, g in zip(expected, got, strict=True):
            assert g is not None and torch.allclose(e, g, rtol=1e-3, atol=1e-5), (e.norm(), g.norm())


def test_ema_follows_the_trained_generators_as_an_average():
    cfg = tiny(ema=0.9)
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    start = [p.clone() for p in m.g_ab.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, m.g_ab_ema.parameters(), strict=True))
    m.train_step(*batch(0))
    after_one = list(m.g_ab.parameters())
    # one step: avg = 0.9 * start + 0.1 * trained
    for s, t, avg in zip(start, after_one, m.g_ab_ema.parameters(), strict=True):
        assert torch.allclose(avg, 0.9 * s + 0.1 * t, atol=1e-6)
    assert not any(p.requires_grad for p in m.g_ab_ema.parameters())
    assert m.generators() == (m.g_ab_ema, m.g_ba_ema)
    assert set(m.nets_state()) == {"g_ab", "g_ba", "d_a", "d_b", "g_ab_ema", "g_ba_ema"}
    off = CycleGAN(cfg.model, cfg.loss, tiny().train)
    assert off.generators() == (off.g_ab, off.g_ba) and "g_ab_ema" not in off.nets_state()


def test_ema_survives_a_round_trip_and_starts_from_older_checkpoints():
    cfg = tiny(ema=0.9)
    ref = CycleGAN(cfg.model, cfg.loss, cfg.train)
    for s in range(3):
        ref.train_step(*batch(s))
    nets, state, rank = copy.deepcopy((ref.nets_state(), ref.train_state(), ref.rank_state()))
    ref.train_step(*batch(3))
    other = CycleGAN(cfg.model, cfg.loss, cfg.train)
    other.load(nets, state, rank)
    other.train_step(*batch(3))
    for a, b in zip(ref.g_ab_ema.parameters(), other.g_ab_ema.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # a checkpoint from a run without the average: the average starts at its weights
    plain = {k: v for k, v in nets.items() if not k.endswith("_ema")}
    third = CycleGAN(cfg.model, cfg.loss, cfg.train)
    third.load(plain, None, None)
    for a, b in zip(third.g_ab_ema.parameters(), third.g_ab.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_must_be_below_one():
    from raystyle.config import ConfigError

    with pytest.raises(ConfigError, match="train.ema"):
        tiny(ema=1.0)
