"""[CLS] normalizers and the classifier head: every built-in method, built from the treatment
registry (isoprobe.core.treatments), IsoBN against an independent reference of Zhou, Lin & Ren
(AAAI 2021), ZCA whitening, moving moments and multi-process statistics."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from isoprobe.core.errors import IsoprobeError
from isoprobe.core.treatments import get_treatment, treatment_names
from isoprobe.finetune.heads import METHODS, ClassifierHead, make_normalizer
from isoprobe.finetune.heads.isobn import IsoBN
from isoprobe.finetune.heads.moments import MovingMoments, batch_moments
from isoprobe.finetune.heads.whiten import Whiten

HIDDEN, CLASSES, BATCH = 8, 3, 16


def anisotropic(n: int, hidden: int, seed: int, offset: float = 5.0, dtype=torch.float64):
    """x = z A + b: correlated dimensions with unequal scales and a large common mean."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    a = a * torch.logspace(-1, 1, hidden, dtype=torch.float64)[:, None]
    b = offset * torch.randn(hidden, generator=g, dtype=torch.float64)
    z = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    return (z @ a + b).to(dtype)


def batches(count: int, n: int, hidden: int, seed: int = 0, dtype=torch.float64):
    """`count` different random batches from one fixed anisotropic distribution."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(hidden, hidden, generator=g, dtype=torch.float64)
    a = a * torch.logspace(-1, 1, hidden, dtype=torch.float64)[:, None]
    b = 10.0 * torch.randn(hidden, generator=g, dtype=torch.float64)
    return [
        (torch.randn(n, hidden, generator=g, dtype=torch.float64) @ a + b).to(dtype)
        for _ in range(count)
    ]


class ReferenceIsoBN:
    """IsoBN written from the paper's description, independently of the package."""

    def __init__(self, hidden, momentum=0.05, beta=0.5, eps=1e-3):
        self.momentum, self.beta, self.eps = momentum, beta, eps
        self.cov = torch.zeros(hidden, hidden, dtype=torch.float64)
        self.std = torch.zeros(hidden, dtype=torch.float64)
        self.t = 0

    def update(self, x):
        x = x.detach().to(torch.float64)
        y = x - x.mean(0)
        cov = y.T @ y / x.shape[0]
        std = torch.sqrt((y**2).mean(0))
        self.cov = self.cov + self.momentum * (cov - self.cov)
        self.std = self.std + self.momentum * (std - self.std)
        self.t += 1

    def stats(self):
        correction = 1 - (1 - self.momentum) ** self.t
        return self.cov / correction, self.std / correction

    def scale(self):
        cov, std = self.stats()
        rho = (cov / torch.outer(std, std)).clamp(-1, 1)
        gamma = (rho**2).mean(1)
        s = (gamma * std + self.eps) ** (-self.beta)
        var = torch.diagonal(cov)
        m = torch.sqrt(var.sum() / ((var * s**2).sum() + self.eps))
        return m * s

    def __call__(self, x):
        self.update(x)
        return x * self.scale().to(x.dtype)


def isobn(**options) -> IsoBN:
    """IsoBN through the registry: unset options take the defaults of its options model."""
    return make_normalizer("isobn", HIDDEN, options)


def whiten(**options) -> Whiten:
    return make_normalizer("whiten", HIDDEN, options)


def defaults(method: str) -> dict:
    return get_treatment(method).defaults().model_dump()


def head(method: str, seed: int = 0, dropout: float = 0.0, **options) -> ClassifierHead:
    torch.manual_seed(seed)
    return ClassifierHead(method, HIDDEN, CLASSES, dropout, options or None)


def train_steps(h: ClassifierHead, steps: int = 3, seed: int = 1, lr: float = 0.1):
    opt = torch.optim.SGD(h.parameters(), lr=lr)
    h.train()
    for i in range(steps):
        x = anisotropic(BATCH, HIDDEN, seed + i, dtype=torch.float32)
        y = torch.arange(BATCH) % CLASSES
        logits, _ = h(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return h


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_method():
    assert METHODS == ("baseline", "layernorm", "batchnorm", "standardize", "isobn", "whiten")
    assert treatment_names()[: len(METHODS)] == METHODS


def test_builtin_defaults_are_the_papers_and_the_modules():
    """The options models are the one place of the defaults (the modules take every option)."""
    assert defaults("baseline") == {}
    assert defaults("layernorm") == {"eps": 1e-12}
    assert defaults("batchnorm") == defaults("standardize") == {"momentum": 0.1, "eps": 1e-5}
    assert defaults("isobn") == {"momentum": 0.05, "beta": 0.5, "eps": 1e-3}
    assert defaults("whiten") == {"momentum": 0.05, "shrinkage": 0.1, "eps": 1e-5}
    assert isinstance(make_normalizer("baseline", HIDDEN), torch.nn.Identity)
    ln = make_normalizer("layernorm", HIDDEN)
    assert isinstance(ln, torch.nn.LayerNorm) and ln.eps == 1e-12 and ln.elementwise_affine
    iso = isobn()
    assert (iso.stats.momentum, iso.beta, iso.eps) == (0.05, 0.5, 1e-3)
    wh = whiten()
    assert (wh.stats.momentum, wh.shrinkage, wh.eps) == (0.05, 0.1, 1e-5)
    with pytest.raises(TypeError):
        IsoBN(HIDDEN)  # no second set of defaults


def test_unknown_method_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown method 'nope'") as err:
        make_normalizer("nope", HIDDEN)
    assert isinstance(err.value, IsoprobeError)
    for method in METHODS:
        assert f"'{method}'" in str(err.value)
    with pytest.raises(ValueError, match="registered"):
        ClassifierHead("nope", HIDDEN, CLASSES, 0.0)


def test_options_reach_the_normalizer():
    iso = make_normalizer("isobn", HIDDEN, {"beta": 1.0, "eps": 1e-2, "momentum": 0.2})
    assert isinstance(iso, IsoBN) and iso.beta == 1.0 and iso.eps == 1e-2
    assert iso.stats.momentum == 0.2
    wh = make_normalizer("whiten", HIDDEN, {"shrinkage": 0.5})
    assert isinstance(wh, Whiten) and wh.shrinkage == 0.5
    bn = make_normalizer("batchnorm", HIDDEN, {"momentum": 0.3})
    assert bn.momentum == 0.3 and bn.affine
    assert not make_normalizer("standardize", HIDDEN).affine
    with pytest.raises(ValueError, match="shrinkage"):
        Whiten(HIDDEN, **{**defaults("whiten"), "shrinkage": 1.5})
    with pytest.raises(
        ValueError, match=r"treatment 'whiten': shrinkage: .*less than or equal to 1"
    ):
        make_normalizer("whiten", HIDDEN, {"shrinkage": 1.5})
    with pytest.raises(ValueError, match=r"treatment 'isobn': gamma: unknown key"):
        make_normalizer("isobn", HIDDEN, {"gamma": 1.0})
    with pytest.raises(ValueError, match="baseline takes no options"):
        make_normalizer("baseline", HIDDEN, {"eps": 1.0})


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", METHODS)
def test_forward_backward_shapes_and_gradients(method):
    h = head(method, dropout=0.1).train()
    x = anisotropic(BATCH, HIDDEN, 3, dtype=torch.float32).requires_grad_(True)
    logits, z = h(x)
    assert logits.shape == (BATCH, CLASSES) and z.shape == (BATCH, HIDDEN)
    assert logits.dtype == z.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(z).all()
    (logits**2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert h.linear.weight.grad is not None and h.linear.weight.grad.abs().sum() > 0
    assert h.linear.bias.grad is not None
    for name, p in h.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("method", METHODS)
def test_eval_before_training_is_finite(method):
    h = head(method).eval()
    x = anisotropic(BATCH, HIDDEN, 4, dtype=torch.float32)
    with torch.no_grad():
        logits, z = h(x)
    assert torch.isfinite(logits).all() and torch.isfinite(z).all()
    if method in ("baseline", "isobn", "whiten"):
        assert torch.equal(z, x)  # identity until a training batch has been seen
    # a single example at eval is fine too
    with torch.no_grad():
        logits, z = h(x[:1])
    assert torch.isfinite(logits).all() and z.shape == (1, HIDDEN)


def test_baseline_is_identity():
    h = head("baseline")
    x = anisotropic(BATCH, HIDDEN, 5, dtype=torch.float32)
    for mode in (True, False):
        h.train(mode)
        logits, z = h(x)
        assert torch.equal(z, x)
        torch.testing.assert_close(logits, h.linear(x))


def test_layernorm_rows_are_standardized_in_train_and_eval():
    h = head("layernorm")
    x = anisotropic(BATCH, HIDDEN, 6)
    h = h.double()
    _, z_train = h.train()(x)
    _, z_eval = h.eval()(x)
    torch.testing.assert_close(z_train, z_eval)
    torch.testing.assert_close(z_eval.mean(1), torch.zeros(BATCH, dtype=torch.float64))
    torch.testing.assert_close(
        z_eval.std(1, unbiased=False), torch.ones(BATCH, dtype=torch.float64)
    )


@pytest.mark.parametrize("method", ["batchnorm", "standardize"])
def test_batch_statistics_in_train_running_statistics_in_eval(method):
    h = head(method).double()
    norm = h.norm
    eps = norm.eps
    xs = batches(4, BATCH, HIDDEN, seed=7)
    h.train()
    for x in xs:
        _, z = h(x)
        expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)
        torch.testing.assert_close(z, expected)
    # the running averages follow momentum 0.1 with the unbiased batch variance (PyTorch semantics)
    rm = torch.zeros(HIDDEN, dtype=torch.float64)
    rv = torch.ones(HIDDEN, dtype=torch.float64)
    for x in xs:
        rm = 0.9 * rm + 0.1 * x.mean(0)
        rv = 0.9 * rv + 0.1 * x.var(0, unbiased=True)
    torch.testing.assert_close(norm.running_mean, rm)
    torch.testing.assert_close(norm.running_var, rv)
    h.eval()
    x = anisotropic(5, HIDDEN, 8)
    _, z = h(x)
    torch.testing.assert_close(z, (x - rm) / torch.sqrt(rv + eps))
    torch.testing.assert_close(norm.running_mean, rm)  # eval does not update


@pytest.mark.parametrize("method", ["isobn", "whiten"])
def test_moving_statistics_update_only_in_training(method):
    h = head(method).train()
    xs = batches(3, BATCH, HIDDEN, seed=9, dtype=torch.float32)
    for x in xs:
        h(x)
    assert int(h.norm.stats.steps) == 3
    before = {k: v.clone() for k, v in h.state_dict().items()}
    h.eval()
    _, z1 = h(xs[0])
    _, z2 = h(xs[0])
    assert torch.equal(z1, z2)
    for k, v in h.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the training output of a batch uses the statistics updated with that batch
    h.train()
    _, z_train = h(xs[1])
    h.eval()
    _, z_eval = h(xs[1])
    torch.testing.assert_close(z_train, z_eval)


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip(method, tmp_path):
    trained = train_steps(head(method, seed=0), steps=3)
    path = tmp_path / "head.pt"
    torch.save(trained.state_dict(), path)
    fresh = head(method, seed=123)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    for (k, a), (k2, b) in zip(
        trained.state_dict().items(), fresh.state_dict().items(), strict=True
    ):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    if method in ("isobn", "whiten"):
        assert int(fresh.norm.stats.steps) == 3
        assert fresh.norm.stats.ema_cov.dtype == torch.float64
    trained.eval()
    fresh.eval()
    x = anisotropic(BATCH, HIDDEN, 99, dtype=torch.float32)
    with torch.no_grad():
        l1, z1 = trained(x)
        l2, z2 = fresh(x)
    assert torch.equal(z1, z2) and torch.equal(l1, l2)


@pytest.mark.parametrize("method", METHODS)
def test_dtype_and_device_moves_keep_buffers(method):
    h = train_steps(head(method), steps=3).eval()
    before = {k: v.clone() for k, v in h.state_dict().items()}
    x = anisotropic(BATCH, HIDDEN, 11, dtype=torch.float32)
    with torch.no_grad():
        l32, z32 = h(x)
    h64 = h.to(torch.float64)
    after = h64.state_dict()
    for k, v in before.items():
        w = after[k]
        if v.is_floating_point():
            assert w.dtype == torch.float64, k
            torch.testing.assert_close(w, v.to(torch.float64), rtol=0, atol=0)
        else:
            assert w.dtype == v.dtype and torch.equal(w, v), k
    if method in ("isobn", "whiten"):
        assert int(h64.norm.stats.steps) == 3
    with torch.no_grad():
        l64, z64 = h64(x.double())
    assert l64.dtype == torch.float64
    torch.testing.assert_close(z64, z32.double(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(l64, l32.double(), rtol=1e-4, atol=1e-4)
    moved = h64.to("cpu")
    for k, v in moved.state_dict().items():
        assert v.device.type == "cpu" and torch.equal(v, after[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", ["isobn", "whiten", "standardize"])
def test_cuda_move_keeps_buffers(method):
    h = train_steps(head(method), steps=2).eval()
    cpu_state = {k: v.clone() for k, v in h.state_dict().items()}
    h = h.to("cuda")
    for k, v in h.state_dict().items():
        assert v.is_cuda and v.dtype == cpu_state[k].dtype and torch.equal(v.cpu(), cpu_state[k])
    x = anisotropic(BATCH, HIDDEN, 12, dtype=torch.float32)
    with torch.no_grad():
        _, z = h(x.cuda())
        h.train()(x.cuda())  # a training step on the device works too
    assert z.is_cuda and torch.isfinite(z).all()


# --------------------------------------------------------------------------- moving moments


@pytest.mark.parametrize("momentum", [0.0, -0.1, 1.5, float("nan")])
def test_moving_moments_rejects_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum"):
        MovingMoments({"a": (3,)}, momentum)
    with pytest.raises(ValueError, match="momentum"):
        IsoBN(HIDDEN, **{**defaults("isobn"), "momentum": momentum})


@pytest.mark.parametrize("momentum", [0.05, 0.3, 1.0])
def test_moving_moments_bias_correction_is_exact_for_constants(momentum):
    mm = MovingMoments({"a": (3,), "b": (2, 2)}, momentum)
    assert not mm.ready and int(mm.steps) == 0
    assert mm.ema_a.dtype == torch.float64 and mm.steps.dtype == torch.long
    a = torch.tensor([1.5, -2.0, 1e3])
    b = torch.tensor([[4.0, 0.5], [0.5, 9.0]], dtype=torch.float64)
    for t in range(1, 60):
        mm.update(a=a, b=b)
        assert mm.ready and int(mm.steps) == t
        torch.testing.assert_close(mm.get("a"), a.double(), rtol=1e-12, atol=0)
        torch.testing.assert_close(mm.get("b"), b, rtol=1e-12, atol=0)


def test_moving_moments_follow_the_ema_recursion():
    momentum = 0.2
    mm = MovingMoments({"a": (2,)}, momentum)
    values = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0]), torch.tensor([0.0, 5.0])]
    ema = torch.zeros(2, dtype=torch.float64)
    for t, v in enumerate(values, start=1):
        mm.update(a=v)
        ema = ema + momentum * (v.double() - ema)
        torch.testing.assert_close(mm.ema_a, ema, rtol=1e-15, atol=0)
        torch.testing.assert_close(mm.get("a"), ema / (1 - (1 - momentum) ** t))


def test_batch_moments_is_the_population_moments_in_float64():
    x = anisotropic(40, HIDDEN, 13, dtype=torch.float32).requires_grad_(True)
    mean, cov = batch_moments(x)
    assert mean.dtype == cov.dtype == torch.float64 and not cov.requires_grad
    xd = x.detach().double()
    torch.testing.assert_close(mean, xd.mean(0))
    torch.testing.assert_close(cov, torch.cov(xd.T, correction=0))


# --------------------------------------------------------------------------- IsoBN


def test_isobn_is_identity_before_training_and_first_step_uses_that_batch():
    iso = isobn().eval()
    x = anisotropic(BATCH, HIDDEN, 14)
    assert torch.equal(iso(x), x) and int(iso.stats.steps) == 0
    iso.train()
    iso(x)
    y = x - x.mean(0)
    torch.testing.assert_close(iso.stats.get("cov"), y.T @ y / BATCH, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        iso.stats.get("std"), torch.sqrt((y**2).mean(0)), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    ("options", "dtype"),
    [
        ({}, torch.float64),
        ({"momentum": 0.3, "beta": 1.0, "eps": 1e-2}, torch.float64),
        ({}, torch.float32),
    ],
)
def test_isobn_matches_reference_over_steps(options, dtype):
    iso = isobn(**options).train()
    ref = ReferenceIsoBN(HIDDEN, **options)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {}
    for x in batches(5, 32, HIDDEN, seed=15, dtype=dtype):
        out = iso(x)
        expected = ref(x)
        assert out.dtype == dtype
        cov, std = ref.stats()
        torch.testing.assert_close(iso.stats.ema_cov, ref.cov, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(iso.stats.ema_std, ref.std, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(iso.stats.get("cov"), cov, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(iso.stats.get("std"), std, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(iso.scale(), ref.scale(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out, expected, **tol)
    assert int(iso.stats.steps) == 5
    iso.eval()
    x = anisotropic(7, HIDDEN, 16, dtype=dtype)
    torch.testing.assert_close(iso(x), x * ref.scale().to(dtype), **tol)


def test_isobn_scale_is_detached():
    iso = isobn().train()
    for x in batches(3, 32, HIDDEN, seed=17):
        iso(x)
    ref = ReferenceIsoBN(HIDDEN)
    for x in batches(3, 32, HIDDEN, seed=17):
        ref.update(x)
    x = anisotropic(32, HIDDEN, 18).requires_grad_(True)
    out = iso(x)
    ref.update(x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, ref.scale().expand(32, HIDDEN), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, iso.scale().expand(32, HIDDEN), rtol=0, atol=0)
    assert not iso.stats.ema_cov.requires_grad and not iso.stats.ema_std.requires_grad


def test_isobn_preserves_total_variance():
    eps = 1e-3
    iso = isobn(eps=eps).train()
    for x in batches(5, 64, HIDDEN, seed=19):
        iso(x)
    cov = iso.stats.get("cov")
    var = torch.diagonal(cov)
    scale = iso.scale()
    total_out = (var * scale**2).sum()
    # m^2 = sum C_ii / (sum C_ii s_i^2 + eps), so the output total is sum C_ii * S / (S + eps)
    std = iso.stats.get("std")
    rho = (cov / torch.outer(std, std)).clamp(-1, 1)
    s = ((rho**2).mean(1) * std + eps) ** -0.5
    big_s = (var * s**2).sum()
    torch.testing.assert_close(total_out, var.sum() * big_s / (big_s + eps), rtol=1e-12, atol=0)
    assert abs(float(total_out / var.sum()) - 1) < 1e-3
    # the anisotropy is redistributed: the scale is not uniform
    assert float(scale.max() / scale.min()) > 1.5
    # the same holds empirically for the output of a large batch drawn from the same distribution
    x = batches(1, 20000, HIDDEN, seed=19)[0]
    out = iso.eval()(x)
    in_total = x.var(0).sum()
    assert abs(float(out.var(0).sum() / in_total) - 1) < 0.1


def test_isobn_reduces_anisotropy():
    g = torch.Generator().manual_seed(20)
    stds = torch.logspace(-1.5, 1.5, HIDDEN, dtype=torch.float64)
    mix = torch.eye(HIDDEN, dtype=torch.float64) + 0.3 * torch.randn(
        HIDDEN, HIDDEN, generator=g, dtype=torch.float64
    )

    def sample(n):
        return (torch.randn(n, HIDDEN, generator=g, dtype=torch.float64) * stds) @ mix + 3.0

    iso = isobn().train()
    for _ in range(30):
        iso(sample(64))
    x = sample(4000)
    out = iso.eval()(x)

    def cv(t):
        s = t.std(0)
        return float(s.std() / s.mean())

    assert cv(out) < 0.7 * cv(x)
    assert torch.isfinite(out).all()


def test_isobn_handles_a_constant_dimension():
    x = anisotropic(BATCH, HIDDEN, 21)
    x[:, 2] = 4.0  # zero variance: rho must not become NaN
    iso = isobn().train()
    out = iso(x)
    assert torch.isfinite(out).all() and torch.isfinite(iso.scale()).all()


# --------------------------------------------------------------------------- whitening


def _gaussian(seed: int):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=g, dtype=torch.float64))
    eig = torch.logspace(-1, 1, HIDDEN, dtype=torch.float64)
    cov = q @ torch.diag(eig) @ q.T
    root = q @ torch.diag(eig.sqrt()) @ q.T
    mean = 5.0 * torch.randn(HIDDEN, generator=g, dtype=torch.float64)

    def sample(n):
        return torch.randn(n, HIDDEN, generator=g, dtype=torch.float64) @ root + mean

    return cov, mean, sample


def test_whiten_converges_to_identity_covariance():
    _, _, sample = _gaussian(22)
    wh = whiten(shrinkage=0.0, eps=1e-8).train()
    for _ in range(200):
        wh(sample(512))
    w = wh.matrix()
    torch.testing.assert_close(w, w.T, rtol=0, atol=1e-10)
    out = wh.eval()(sample(40000))
    eye = torch.eye(HIDDEN, dtype=torch.float64)
    assert (torch.cov(out.T) - eye).abs().max() < 0.08
    assert out.mean(0).abs().max() < 0.08


def test_whiten_full_shrinkage_is_centring_and_uniform_scale():
    _, _, sample = _gaussian(23)
    eps = 1e-5
    wh = whiten(shrinkage=1.0, eps=eps).train()
    for _ in range(5):
        wh(sample(256))
    cov = wh.stats.get("cov")
    c = (torch.trace(cov) / HIDDEN + eps) ** -0.5
    eye = torch.eye(HIDDEN, dtype=torch.float64)
    torch.testing.assert_close(wh.matrix(), c * eye, rtol=1e-10, atol=1e-12)
    x = sample(3000)
    out = wh.eval()(x)
    torch.testing.assert_close(out, (x - wh.stats.get("mean")) * c, rtol=1e-10, atol=1e-10)
    cov_in, cov_out = torch.cov(x.T), torch.cov(out.T)
    ratio = torch.trace(cov_out) / torch.trace(cov_in)
    torch.testing.assert_close(cov_out, ratio * cov_in, rtol=1e-8, atol=1e-10)


def test_whiten_first_step_and_gradient():
    x = anisotropic(64, HIDDEN, 24).requires_grad_(True)
    wh = whiten(shrinkage=0.0, eps=1e-10).train()
    out = wh(x)
    xd = x.detach()
    torch.testing.assert_close(wh.stats.get("mean"), xd.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wh.stats.get("cov"), torch.cov(xd.T, correction=0))
    # whitened with its own statistics: mean 0 and population covariance I
    torch.testing.assert_close(out.detach().mean(0), torch.zeros(HIDDEN, dtype=torch.float64))
    eye = torch.eye(HIDDEN, dtype=torch.float64)
    torch.testing.assert_close(torch.cov(out.detach().T, correction=0), eye, rtol=1e-6, atol=1e-6)
    out.sum().backward()  # W is detached: d out.sum() / dx = W 1
    w = wh.matrix()
    torch.testing.assert_close(x.grad, (w @ torch.ones(HIDDEN, dtype=torch.float64)).expand(64, -1))


def test_whiten_eval_reuses_matrix_until_statistics_change(monkeypatch):
    _, _, sample = _gaussian(25)
    wh, other = whiten().train(), whiten().train()
    for _ in range(3):
        wh(sample(128))
        other(sample(64) * 2.0)
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: calls.append(1) or eigh(a))
    x = sample(32)

    def expected(m):
        return (x - m.stats.get("mean")) @ m.matrix()

    wh.eval()
    first, second = wh(x), wh(x)
    assert len(calls) == 1  # one decomposition for two eval batches
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, expected(wh), rtol=0, atol=0)
    wh.train()(sample(128))  # new statistics: the cached matrix is stale
    wh.eval()
    torch.testing.assert_close(wh(x), expected(wh), rtol=0, atol=0)
    wh.load_state_dict(other.state_dict())  # same update count, other values
    torch.testing.assert_close(wh(x), expected(other), rtol=0, atol=0)
    assert not torch.allclose(wh(x), first)


# --------------------------------------------------------------------------- torch.distributed


def _ddp_worker(rank: int, world: int, port: int, outdir: str, xs: list[torch.Tensor]):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=30),
    )
    try:
        iso, wh = isobn().train(), whiten().train()
        outs = []
        for x in xs:
            half = x.shape[0] // world
            local = x[rank * half : (rank + 1) * half]
            outs.append(iso(local))
            wh(local)
        torch.save(
            {
                "iso": {k: v.clone() for k, v in iso.state_dict().items()},
                "whiten": {k: v.clone() for k, v in wh.state_dict().items()},
                "out": outs[-1].detach().clone(),
            },
            Path(outdir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_distributed_statistics_equal_single_process(tmp_path):
    world, steps = 2, 3
    xs = batches(steps, 32, HIDDEN, seed=25)
    mp.spawn(_ddp_worker, args=(world, free_port(), str(tmp_path), xs), nprocs=world, join=True)
    assert not dist.is_initialized()
    iso, wh = isobn().train(), whiten().train()
    for x in xs:
        last = iso(x)
        wh(x)
    single = {"iso": iso.state_dict(), "whiten": wh.state_dict()}
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for module in ("iso", "whiten"):
        for key, expected in single[module].items():
            for r, got in enumerate(ranks):
                value = got[module][key]
                assert value.dtype == expected.dtype, (module, key, r)
                if value.is_floating_point():
                    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-10)
                else:
                    assert torch.equal(value, expected), (module, key, r)
    assert int(ranks[0]["iso"]["stats.steps"]) == steps
    half = xs[-1].shape[0] // world
    for r, got in enumerate(ranks):
        torch.testing.assert_close(
            got["out"], last[r * half : (r + 1) * half], rtol=1e-10, atol=1e-10
        )
    assert math.isfinite(float(ranks[0]["iso"]["stats.ema_cov"].sum()))
