"""Training objectives for score models: DSM, NCSN, continuous-time DSM, sliced score matching.

Notation (Song et al. 2021, Section 3.3): x(t) = alpha(t) x(0) + std(t) z with z ~ N(0, I), and a model s(x, t).
Since grad log p_0t(x(t) | x(0)) = -z / std, denoising score matching (Vincent 2011) regresses
s onto -z / std; with the weight lambda = std^2 every noise level contributes O(1):

    l(x0, t, z) = lambda(t) / 2 || s(x(t), t) + z / std(t) ||^2  =  1/2 || std s + z ||^2.

Reduction: the squared norm is *summed* over all of an example's coordinates and halved, then
averaged over the batch (Song et al. 2021's reference code with reduce_mean=False). Its minimiser
is the score of p_t, with minimum value 1/2 (D - std^2 E||grad log p_t||^2) (because
E[z | x(t)] = -std grad log p_t(x(t))).

Every objective is a `Loss`: `draw(x0, generator)` makes all its random inputs (one row per
example, so a trainer can cut a global batch into shards) and `per_example(model, x0, draws, y)`
returns the (N,) losses; calling it returns their mean. `model` is any callable
model(x, t) or model(x, t, y) -> score: a ScoreModel or an exact `GaussianMixture.score_fn(sde)`.
"""
from __future__ import annotations

import math

import torch

from ..models.edm import check_sigma_data  # the EDM model's check, shared by its loss
from ..process.schedules import t_from_sigma
from ..process.sde import SDE, NoiseLadder, broadcast_to
from ..util import Registry, check_eps, check_positive_int, time_vector

__all__ = ["Loss", "DSMLoss", "NCSNLoss", "ContinuousDSMLoss", "SSMLoss", "dsm_loss", "ncsn_loss",
           "continuous_dsm_loss", "ssm_loss", "LOSSES", "LOSS_OPTIONS", "make_loss", "WEIGHTINGS",
           "draw_normal", "sqnorm", "EDMLoss", "check_sigma_data"]

WEIGHTINGS = ("sigma2", "likelihood")


def draw_normal(shape, like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normals drawn on the generator's device (CPU if none), moved to like's device."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype, device=dev).to(like.device)


def _rand(n: int, like: torch.Tensor, generator) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, dtype=torch.float64, device=dev).to(like.device)


def sqnorm(v: torch.Tensor) -> torch.Tensor:
    """Per-example squared norm, shape (N,)."""
    return v.reshape(v.shape[0], -1).pow(2).sum(1)


def _apply(model, x, t, y):
    return model(x, t) if y is None else model(x, t, y)


def _denoising_term(model, sde: SDE, x0, t, z, y, std=None) -> torch.Tensor:
    """1/2 ||std s(alpha x0 + std z, t) + z||^2 per example."""
    std = sde.std(t) if std is None else std
    x = broadcast_to(sde.alpha(t), x0) * x0 + broadcast_to(std, x0) * z
    s = _apply(model, x, t, y).to(x0.dtype)
    return 0.5 * sqnorm(broadcast_to(std, s) * s + z)


class Loss:
    """Base class: a stochastic objective whose randomness is drawn separately from its value."""

    name = "loss"

    def draw(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """All random inputs for the batch x0, each a tensor whose first axis is the example."""
        raise NotImplementedError

    def per_example(self, model, x0: torch.Tensor, draws: dict, y=None) -> torch.Tensor:
        """The (N,) losses for the given draws."""
        raise NotImplementedError

    def __call__(self, model, x0: torch.Tensor, *, y=None, generator=None) -> torch.Tensor:
        return self.per_example(model, x0, self.draw(x0, generator), y).mean()

    # hooks for objectives with a schedule or state of their own (training.consistency); no-ops here
    def begin_step(self, step: int, total: int) -> None:
        """Called by the trainer before step `step` (0-based) of `total` draws its batch."""

    def end_step(self, model) -> None:
        """Called by the trainer after the optimizer step."""

    def state_dict(self) -> dict:
        """Tensors and numbers the objective needs on resume (plain data; {} for none)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output."""


class DSMLoss(Loss):
    """Single-noise-level denoising score matching (Vincent 2011), weighted by sigma^2:

        L = E_{x0, z} 1/2 || sigma s(alpha x0 + sigma z, t_sigma) + z ||^2,  t_sigma = sde.t_from_std(sigma),

    i.e. sigma^2/2 E||s + z/sigma||^2. For VE (alpha = 1) this is NCSN's x0 + sigma z (Song & Ermon 2019, eq. 5); for
    Gaussian data N(mu, S) its minimum is 1/2 sum_i alpha^2 l_i / (alpha^2 l_i + sigma^2), l_i = eig(S).
    """

    name = "dsm"

    def __init__(self, sde: SDE, sigma: float):
        if not isinstance(sigma, (int, float)) or not sigma > 0:
            raise ValueError(f"dsm needs a noise level sigma > 0, got sigma={sigma!r}")
        t = float(sde.t_from_std(torch.tensor(float(sigma), dtype=torch.float64)))
        if not (math.isfinite(t) and 0 < t <= sde.T):
            raise ValueError(f"sigma={sigma} is not a noise level of {sde!r} (std(t) for t in (0, T] "
                             f"reaches {sde.prior_std():.4g})")
        self.sde, self.sigma, self.t = sde, float(sigma), t

    def draw(self, x0, generator=None):
        return {"z": draw_normal(x0.shape, x0, generator)}

    def per_example(self, model, x0, draws, y=None):
        n = x0.shape[0]
        t = time_vector(self.t, x0)
        std = time_vector(self.sigma, x0)
        return _denoising_term(model, self.sde, x0, t, draws["z"], y, std=std)


class NCSNLoss(Loss):
    """The NCSN objective (Song & Ermon 2019, eq. 6) over the ladder sigma_1 > ... > sigma_L:

        L = 1/L sum_i lambda(sigma_i) E 1/2 || s(x0 + sigma_i z, t_i) + z / sigma_i ||^2,  lambda = sigma^2,

    with the level i drawn uniformly per example and the model called at the VE time
    t_i = ladder.times[i] whose std is sigma_i.
    """

    name = "ncsn"

    def __init__(self, ladder: NoiseLadder):
        if not isinstance(ladder, NoiseLadder):
            raise ValueError(f"ncsn needs a NoiseLadder (make_sde('ladder', ...)), got {ladder!r}")
        self.sde = ladder

    def draw(self, x0, generator=None):
        dev = generator.device if generator is not None else x0.device
        level = torch.randint(0, self.sde.L, (x0.shape[0],), generator=generator, device=dev).to(x0.device)
        return {"level": level, "z": draw_normal(x0.shape, x0, generator)}

    def per_example(self, model, x0, draws, y=None):
        level = draws["level"]
        sigma = self.sde.sigmas.to(device=x0.device, dtype=x0.dtype)[level]
        t = self.sde.times.to(device=x0.device, dtype=x0.dtype)[level]
        return _denoising_term(model, self.sde, x0, t, draws["z"], y, std=sigma)


class _ImportanceTimes:
    """Times t in [eps, T] with density q(t) proportional to g(t)^2 / std(t)^2, by inverse CDF.

    The density is integrated by the trapezoid rule on a grid geometric in t (it behaves like 1/t
    near 0) and sampled as piecewise constant on the grid cells. The weight uses the density q
    actually sampled from, so the estimator stays exactly unbiased whatever the grid size.
    """

    def __init__(self, sde: SDE, eps: float, n: int = 4096):
        t = torch.exp(torch.linspace(math.log(eps), math.log(sde.T), n + 1, dtype=torch.float64))
        h = sde.diffusion(t) ** 2 / sde.std(t) ** 2
        mass = 0.5 * (h[1:] + h[:-1]) * (t[1:] - t[:-1])
        self.grid, self.mass = t, mass
        self.cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(mass, 0)])
        self.Z = float(self.cdf[-1])

    def sample(self, u: torch.Tensor):
        """Map u ~ U(0, 1) (float64) to (t, q(t))."""
        u = u.cpu() * self.Z
        k = torch.clamp(torch.searchsorted(self.cdf, u, right=True) - 1, 0, len(self.mass) - 1)
        width = self.grid[k + 1] - self.grid[k]
        frac = torch.clamp((u - self.cdf[k]) / self.mass[k], 0.0, 1.0)
        return self.grid[k] + frac * width, self.mass[k] / (width * self.Z)


class ContinuousDSMLoss(Loss):
    """Continuous-time DSM (Song et al. 2021, eq. 7), t ~ U(eps, T):

        L = E_t lambda(t) E 1/2 || s(x(t), t) + z / std(t) ||^2
          = E_t (lambda(t) / std(t)^2) E 1/2 || std s + z ||^2,

    weighting "sigma2": lambda = std^2 (every level O(1));
    weighting "likelihood": lambda = g(t)^2, which makes the objective bound the negative
    log-likelihood (Song, Durkan, Murray, Ermon 2021, "Maximum likelihood training of score-based
    diffusion models", Thm. 1).
    With importance_sampling, t ~ q(t) proportional to g^2/std^2 and each term is reweighted by
    (lambda/std^2) / (q(t) (T - eps)): the estimator keeps the expectation of the plain one (for
    "likelihood" the weight is ~constant, which removes most of the variance of the 1/t spike).
    """

    name = "sde"

    def __init__(self, sde: SDE, weighting: str = "sigma2", importance_sampling: bool = False,
                 eps: float | None = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
        eps = check_eps(eps, sde.T, sde.eps)
        self.sde, self.weighting, self.eps = sde, weighting, eps
        self.importance = _ImportanceTimes(sde, eps) if importance_sampling else None

    def lam_over_std2(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) / std(t)^2: 1 for "sigma2", g^2 / std^2 for "likelihood"."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        return self.sde.diffusion(t) ** 2 / self.sde.std(t) ** 2

    def draw(self, x0, generator=None):
        u = _rand(x0.shape[0], x0, generator)
        if self.importance is None:
            t = self.eps + (self.sde.T - self.eps) * u
            weight = self.lam_over_std2(t)
        else:
            t, q = self.importance.sample(u)
            weight = self.lam_over_std2(t) / (q * (self.sde.T - self.eps))
        return {"t": t.to(device=x0.device, dtype=x0.dtype), "weight": weight.to(device=x0.device, dtype=x0.dtype),
                "z": draw_normal(x0.shape, x0, generator)}

    def per_example(self, model, x0, draws, y=None):
        return draws["weight"] * _denoising_term(model, self.sde, x0, draws["t"], draws["z"], y)


def _sliced_terms(model_fn, x, v, variance_reduction: bool) -> torch.Tensor:
    """Per-example mean over projections of v^T (ds/dx) v + 1/2 (v^T s)^2 (or + 1/2 ||s||^2)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        s = model_fn(x)
        total = 0.0
        for p in range(v.shape[1]):
            vp = v[:, p]
            # grad_x (v . s) = (ds/dx)^T v, per example since examples do not interact
            jv = torch.autograd.grad((s * vp).sum(), x, create_graph=True)[0]
            vjv = (jv * vp).reshape(x.shape[0], -1).sum(1)
            second = sqnorm(s) if variance_reduction else (s * vp).reshape(x.shape[0], -1).sum(1) ** 2
            total = total + vjv + 0.5 * second
    return total / v.shape[1]


class SSMLoss(Loss):
    """Sliced score matching (Song, Garg, Shi, Ermon 2019) on the noised data, weighted by std^2:

        L = E_t std(t)^2 E_{x ~ p_t, v ~ N(0, I)} [ v^T (ds/dx) v + 1/2 (v^T s)^2 ]     ("ssm")
        L = E_t std(t)^2 E_{x ~ p_t, v}          [ v^T (ds/dx) v + 1/2 ||s||^2 ]     ("ssm-vr")

    Both equal, up to a constant, 1/2 E||s - grad log p_t||^2 (Hyvarinen 2005), so the minimiser
    is the full score (Song, Garg, Shi & Ermon 2019, "Sliced Score Matching", eq. 8: 1/2 ||s||^2 + v^T (ds/dx) v). Unlike DSM it
    needs only samples of p_t, not the noise z that made them.
    """

    def __init__(self, sde: SDE, n_projections: int = 1, variance_reduction: bool = False, eps: float | None = None):
        check_positive_int(n_projections, "n_projections")
        eps = check_eps(eps, sde.T, sde.eps)
        self.sde, self.eps = sde, eps
        self.n_projections, self.variance_reduction = int(n_projections), bool(variance_reduction)
        self.name = "ssm-vr" if variance_reduction else "ssm"

    def draw(self, x0, generator=None):
        u = _rand(x0.shape[0], x0, generator)
        return {"t": (self.eps + (self.sde.T - self.eps) * u).to(x0.dtype), "z": draw_normal(x0.shape, x0, generator),
                "v": draw_normal((x0.shape[0], self.n_projections) + tuple(x0.shape[1:]), x0, generator)}

    def per_example(self, model, x0, draws, y=None):
        t = draws["t"]
        x = self.sde.perturb(x0, t, draws["z"])
        terms = _sliced_terms(lambda xx: _apply(model, xx, t, y), x, draws["v"], self.variance_reduction)
        return self.sde.std(t) ** 2 * terms


# --- functional forms -----------------------------------------------------------------------
def dsm_loss(model, x0, sigma: float, *, sde: SDE | None = None, y=None, generator=None) -> torch.Tensor:
    """Scalar `DSMLoss(sde, sigma)` on x0; sde defaults to model.sde."""
    return DSMLoss(_sde_of(model, sde), sigma)(model, x0, y=y, generator=generator)


def ncsn_loss(model, ladder: NoiseLadder, x0, *, y=None, generator=None) -> torch.Tensor:
    """Scalar `NCSNLoss(ladder)` on x0."""
    return NCSNLoss(ladder)(model, x0, y=y, generator=generator)


def continuous_dsm_loss(model, sde: SDE, x0, weighting: str = "sigma2", importance_sampling: bool = False,
                        eps: float | None = None, *, y=None, generator=None) -> torch.Tensor:
    """Scalar `ContinuousDSMLoss(sde, weighting, importance_sampling, eps)` on x0 (eps defaults to sde.eps)."""
    return ContinuousDSMLoss(sde, weighting, importance_sampling, eps)(model, x0, y=y, generator=generator)


def ssm_loss(model_fn, x, n_projections: int = 1, variance_reduction: bool = False, *, generator=None) -> torch.Tensor:
    """Sliced score matching of a noise-free model s(x) on samples x (Song et al. 2019):

        E_{x, v ~ N(0, I)} [ v^T (ds/dx) v + 1/2 (v^T s(x))^2 ]   (variance_reduction: + 1/2 ||s(x)||^2),

    averaged over `n_projections` directions per example. Minimised by s = grad log p_data.
    """
    if int(n_projections) != n_projections or n_projections < 1:
        raise ValueError(f"n_projections must be an integer >= 1, got {n_projections!r}")
    v = draw_normal((x.shape[0], int(n_projections)) + tuple(x.shape[1:]), x, generator)
    return _sliced_terms(model_fn, x, v, variance_reduction).mean()


def _sde_of(model, sde):
    if sde is None:
        sde = getattr(model, "sde", None)
    if not isinstance(sde, SDE):
        raise ValueError("pass sde=... (the model has no .sde attribute)")
    return sde


# --- registry for the trainer and the CLI ------------------------------------------------------
class EDMLoss(Loss):
    """EDM's objective (Karras et al. 2022, eq. 8 and Table 1; `preconditioning`'s module docstring) for
    any linear process, with log-normal noise levels:

        l = lambda(sigma) / 2 || D(x(0) + sigma z; sigma) - x(0) ||^2,  lambda = (sigma^2 + sd^2) / (sigma sd)^2.


    log sigma ~ N(p_mean, p_std^2), clipped to [sigma(eps), sigma(T)], the levels a sampler visits
    (for VP with the defaults about 0.3% of draws fall below sigma(eps) = 0.0105); the model is called
    at t = t_from_sigma(sigma). `model` is an EDMModel (its `denoise` is used directly) or any score
    model(x, t[, y]), whose denoiser is x_hat + alpha sigma^2 s.
    """

    name = "edm"

    def __init__(self, sde: SDE, sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2,
                 eps: float | None = None):
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be a scoregen.process.sde.SDE, got {type(sde).__name__}")
        eps = check_eps(eps, sde.T, sde.eps)
        if not (isinstance(p_std, (int, float)) and p_std > 0):
            raise ValueError(f"p_std must be a positive number, got {p_std!r}")
        self.sde, self.sigma_data = sde, check_sigma_data(sigma_data)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        lo, hi = (float(sde.sigma(torch.tensor(v, dtype=torch.float64))) for v in (eps, sde.T))
        self.log_sigma_range = (math.log(lo), math.log(hi))

    def draw(self, x0, generator=None):
        n = torch.randn(x0.shape[0], generator=generator, dtype=torch.float64,
                        device=generator.device if generator is not None else x0.device).cpu()
        sigma = torch.exp(torch.clamp(self.p_mean + self.p_std * n, *self.log_sigma_range))
        t = t_from_sigma(self.sde, sigma)
        return {"t": t.to(device=x0.device, dtype=x0.dtype), "sigma": sigma.to(device=x0.device, dtype=x0.dtype),
                "z": draw_normal(x0.shape, x0, generator)}

    def per_example(self, model, x0, draws, y=None):
        t, sigma = draws["t"], draws["sigma"]
        alpha = broadcast_to(self.sde.alpha(t.to(torch.float64)).to(x0.dtype), x0)
        sig = broadcast_to(sigma, x0)
        x = alpha * (x0 + sig * draws["z"])
        if hasattr(model, "denoise"):
            D = model.denoise(x, t, y) if y is not None else model.denoise(x, t)
        else:
            s = model(x, t) if y is None else model(x, t, y)
            D = x / alpha + alpha * sig**2 * s.to(x0.dtype)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return 0.5 * weight * sqnorm(D - x0)


LOSSES: Registry[type] = Registry("loss", {
    "dsm": DSMLoss,
    "ncsn": NCSNLoss,
    "sde": ContinuousDSMLoss,
    "ssm": lambda sde, **kw: SSMLoss(sde, variance_reduction=False, **kw),
    "ssm-vr": lambda sde, **kw: SSMLoss(sde, variance_reduction=True, **kw),
    "edm": EDMLoss,
})
#: the options each loss accepts (for config validation)
LOSS_OPTIONS = {"dsm": ("sigma",), "ncsn": (), "sde": ("weighting", "importance_sampling", "eps"),
                "ssm": ("n_projections", "eps"), "ssm-vr": ("n_projections", "eps"),
                "edm": ("sigma_data", "p_mean", "p_std", "eps")}
_OPTIONS = LOSS_OPTIONS  # the name config.py reads


def make_loss(name: str, sde: SDE, **options) -> Loss:
    """Build the objective `name` ("dsm", "ncsn", "sde", "ssm", "ssm-vr", "edm") for `sde`.

    Options: dsm: sigma; sde: weighting, importance_sampling, eps; ssm/ssm-vr: n_projections, eps;
    edm (EDMLoss): sigma_data, p_mean, p_std, eps.
    """
    name = LOSSES.key(name)
    unknown = sorted(set(options) - set(LOSS_OPTIONS[name]))
    if unknown:
        raise ValueError(f"loss {name!r} takes no option(s) {unknown}; accepted: {list(LOSS_OPTIONS[name])}")
    if name == "dsm" and "sigma" not in options:
        raise ValueError("loss 'dsm' needs the option sigma (the single noise level)")
    return LOSSES[name](sde, **options)
