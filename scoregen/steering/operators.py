"""Linear measurement operators y = A x for inverse problems, on points (N, D) and images (N, C, H, W).

A `LinearOperator` maps each example of shape `in_shape` to a measurement of shape `out_shape` and
knows its adjoint A^T (<A x, y> = <x, A^T y>, checked by the tests) and how to apply

    (v I + lam A A^T)^{-1}                      (`gram_solve`),

the inverse of a measurement covariance, which the posterior scores of `inverse` need. It is exact
where A A^T is known: a matrix (eigendecomposition), a mask (A A^T = M, a projection), average
pooling by k (A A^T = I / k^2), channel averaging (A A^T = I / C). For an operator given only as a
function pair, and for the blur (A A^T is a convolution), A A^T is replaced by `gram` I, a scalar
(the blur's: sum of the squared kernel, A A^T's diagonal away from the border).

Built-in image operators (`make_operator(NAME, shape, ...)`): random inpainting, box inpainting,
super-resolution by average pooling, Gaussian blur, colorization (grey = channel mean).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..util import Registry

__all__ = ["LinearOperator", "MatrixOperator", "FunctionOperator", "MaskOperator", "AvgPoolOperator",
           "BlurOperator", "GreyOperator", "make_operator", "OPERATORS", "random_mask", "box_mask",
           "check_mask"]


def _shape(shape, what: str) -> tuple:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{what} must be a tuple of positive integers, got {shape!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"{what} must be a tuple of positive integers, got {shape!r}")
    return out


class LinearOperator:
    """y = A x per example: `forward` (N, *in_shape) -> (N, *out_shape), `adjoint` back."""

    name = "linear"

    def __init__(self, in_shape, out_shape):
        self.in_shape, self.out_shape = _shape(in_shape, "in_shape"), _shape(out_shape, "out_shape")

    # --- the map -------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(self.check_input(x))

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._adjoint(self.check_observation(y))

    def gram_solve(self, r: torch.Tensor, lam, noise_var: float) -> torch.Tensor:
        """(noise_var I + lam A A^T)^{-1} r for r of shape (N, *out_shape); lam a float or (N,)."""
        lam = _per_example(lam, r)
        return r / (noise_var + lam * self.gram)

    #: the scalar c of the approximation A A^T ~ c I (exact for the subclasses that override gram_solve)
    gram: float = 1.0

    # --- checks --------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"operator {self.name!r} acts on examples of shape {self.in_shape}, but the data have "
                             f"examples of shape {tuple(x.shape[1:])} (batch {tuple(x.shape)})")
        return x

    def check_observation(self, y: torch.Tensor) -> torch.Tensor:
        if tuple(y.shape[1:]) != self.out_shape:
            raise ValueError(f"operator {self.name!r} gives measurements of shape {self.out_shape}, but the "
                             f"observation has shape {tuple(y.shape[1:])} per example (batch {tuple(y.shape)})")
        return y

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


def _per_example(lam, like: torch.Tensor):
    """A float, or an (N,) tensor reshaped to broadcast over like's example axes."""
    if isinstance(lam, torch.Tensor) and lam.dim() == 1:
        return lam.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))
    return lam


class MatrixOperator(LinearOperator):
    """A given as an (m, d) matrix acting on flattened examples (in_shape defaults to (d,))."""

    name = "matrix"

    def __init__(self, A, in_shape=None):
        A = torch.as_tensor(A)
        if A.dim() != 2:
            raise ValueError(f"a measurement matrix must have shape (m, d), got {tuple(A.shape)}")
        in_shape = (A.shape[1],) if in_shape is None else _shape(in_shape, "in_shape")
        if math.prod(in_shape) != A.shape[1]:
            raise ValueError(f"the matrix has {A.shape[1]} columns but in_shape {in_shape} has {math.prod(in_shape)} entries")
        super().__init__(in_shape, (A.shape[0],))
        self.A = A.to(torch.float64)
        # A A^T = V diag(e) V^T once, for the exact gram_solve
        self._e, self._V = torch.linalg.eigh(self.A @ self.A.T)
        self._e = self._e.clamp_min(0.0)

    def _forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.to(x).T

    def _adjoint(self, y):
        return (y @ self.A.to(y)).reshape((y.shape[0],) + self.in_shape)

    def gram_solve(self, r, lam, noise_var):
        V, e = self._V.to(r), self._e.to(r)
        denom = noise_var + _per_example(lam, r) * e  # (N, m) or (m,)
        return ((r @ V) / denom) @ V.T


class FunctionOperator(LinearOperator):
    """A given by a function and its adjoint; `gram` is the c of A A^T ~ c I (default: the largest
    eigenvalue of A A^T, by 50 power iterations, an upper bound on the measurement's gain)."""

    name = "function"

    def __init__(self, forward, adjoint, in_shape, out_shape, gram: float | None = None):
        super().__init__(in_shape, out_shape)
        if not (callable(forward) and callable(adjoint)):
            raise ValueError("FunctionOperator needs a forward function and its adjoint")
        self._fwd, self._adj = forward, adjoint
        self.gram = float(gram) if gram is not None else self._power_iteration()

    def _forward(self, x):
        return self._fwd(x)

    def _adjoint(self, y):
        return self._adj(y)

    def _power_iteration(self, iters: int = 50) -> float:
        g = torch.Generator().manual_seed(0)
        v = torch.randn((1,) + self.out_shape, generator=g, dtype=torch.float64)
        lam = 0.0
        for _ in range(iters):
            w = self._fwd(self._adj(v.float()).float()).double()
            lam = float(w.norm())
            v = w / max(lam, 1e-30)
        return lam


class MaskOperator(LinearOperator):
    """Inpainting / imputation: A x = M * x with M a 0/1 mask of one example's shape (unknown = 0).
    The measurement keeps the example's shape (zeros where unknown); A = A^T, A A^T = M."""

    name = "mask"

    def __init__(self, mask):
        mask = check_mask(mask)
        super().__init__(mask.shape, mask.shape)
        self.mask = mask

    def _forward(self, x):
        return x * self.mask.to(x)

    _adjoint = _forward

    def gram_solve(self, r, lam, noise_var):
        # off the mask A^T discards the result, so only the observed entries matter
        return r * self.mask.to(r) / (noise_var + _per_example(lam, r))


class AvgPoolOperator(LinearOperator):
    """Super-resolution: the mean of every factor x factor block (C, H, W) -> (C, H/k, W/k);
    A^T spreads each value over its block divided by k^2, so A A^T = I / k^2."""

    name = "superres"

    def __init__(self, in_shape, factor: int = 2):
        in_shape = _shape(in_shape, "in_shape")
        k = int(factor)
        if len(in_shape) != 3 or k < 1 or k != factor:
            raise ValueError(f"super-resolution needs images (C, H, W) and an integer factor >= 1, got {in_shape}, {factor!r}")
        c, h, w = in_shape
        if h % k or w % k:
            raise ValueError(f"the pooling factor {k} must divide the image size {h}x{w}")
        super().__init__(in_shape, (c, h // k, w // k))
        self.factor, self.gram = k, 1.0 / k**2

    def _forward(self, x):
        return F.avg_pool2d(x, self.factor)

    def _adjoint(self, y):
        k = self.factor
        return y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) / k**2


class BlurOperator(LinearOperator):
    """Gaussian blur, per channel, zero padding ('same' size): A = A^T (the kernel is symmetric).

    A A^T is a convolution with the kernel's autocorrelation; gram_solve uses its diagonal away from
    the border, sum_ij k_ij^2, as the scalar c (an approximation, stated in the module docstring)."""

    name = "blur"

    def __init__(self, in_shape, sigma: float = 1.5, size: int | None = None):
        in_shape = _shape(in_shape, "in_shape")
        if len(in_shape) != 3:
            raise ValueError(f"the blur acts on images (C, H, W), got in_shape {in_shape}")
        if not sigma > 0:
            raise ValueError(f"the blur needs sigma > 0, got {sigma!r}")
        size = int(size) if size is not None else 2 * math.ceil(3 * sigma) + 1
        if size < 1 or size % 2 == 0:
            raise ValueError(f"the blur kernel size must be a positive odd integer, got {size}")
        super().__init__(in_shape, in_shape)
        r = torch.arange(size, dtype=torch.float64) - size // 2
        k1 = torch.exp(-0.5 * (r / sigma) ** 2)
        k = torch.outer(k1, k1)
        self.kernel = k / k.sum()
        self.sigma, self.size, self.gram = float(sigma), size, float((self.kernel**2).sum())

    def _forward(self, x):
        c = x.shape[1]
        w = self.kernel.to(x).expand(c, 1, self.size, self.size)
        return F.conv2d(x, w, padding=self.size // 2, groups=c)

    _adjoint = _forward


class GreyOperator(LinearOperator):
    """Colorization: grey = the mean over the C channels, (C, H, W) -> (1, H, W); A A^T = I / C."""

    name = "colorize"

    def __init__(self, in_shape):
        in_shape = _shape(in_shape, "in_shape")
        if len(in_shape) != 3:
            raise ValueError(f"colorization acts on images (C, H, W), got in_shape {in_shape}")
        super().__init__(in_shape, (1,) + in_shape[1:])
        self.gram = 1.0 / in_shape[0]

    def _forward(self, x):
        return x.mean(dim=1, keepdim=True)

    def _adjoint(self, y):
        return y.expand((y.shape[0], self.in_shape[0]) + tuple(y.shape[2:])) / self.in_shape[0]


# --- masks -----------------------------------------------------------------------------------
def check_mask(mask, shape=None) -> torch.Tensor:
    """A mask of known (1) / unknown (0) entries as float; `shape`: the example shape it must have."""
    m = torch.as_tensor(mask)
    if m.dtype == torch.bool:
        m = m.float()
    m = m.to(torch.float32)
    if shape is not None and tuple(m.shape) != tuple(shape):
        raise ValueError(f"the mask has shape {tuple(m.shape)}, but the data's examples have shape {tuple(shape)}; "
                         "give a mask of one example's shape (1 = known, 0 = unknown)")
    if m.numel() == 0 or not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("a mask must hold only 0 (unknown) and 1 (known) values")
    return m


def random_mask(shape, keep: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Each entry of `shape` known with probability `keep` (for images, one draw per pixel shared by
    the channels), from a seeded generator."""
    shape = _shape(shape, "shape")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    g = torch.Generator().manual_seed(int(seed))
    pix = shape[1:] if len(shape) == 3 else shape
    m = (torch.rand(pix, generator=g) < keep).float()
    return m.expand(shape).clone() if len(shape) == 3 else m


def box_mask(shape, box=None) -> torch.Tensor:
    """Images (C, H, W) known everywhere but the rectangle box = (top, left, height, width); the default
    box hides the bottom half."""
    shape = _shape(shape, "shape")
    if len(shape) != 3:
        raise ValueError(f"a box mask is for images (C, H, W), got shape {shape}")
    _, h, w = shape
    top, left, bh, bw = (h // 2, 0, h - h // 2, w) if box is None else (int(v) for v in box)
    if bh < 1 or bw < 1 or top < 0 or left < 0 or top + bh > h or left + bw > w:
        raise ValueError(f"box (top, left, height, width) = {box} does not fit in a {h}x{w} image")
    m = torch.ones(shape)
    m[:, top:top + bh, left:left + bw] = 0
    return m


OPERATORS = ("inpaint-random", "inpaint-box", "superres", "blur", "colorize")
_OPERATOR_NAMES = Registry("operator", {n: n for n in OPERATORS}, sort=False)


def make_operator(name: str, shape, **options) -> LinearOperator:
    """A built-in image operator for examples of `shape` (C, H, W):

    inpaint-random (keep=0.5, seed=0), inpaint-box (box=(top, left, height, width), default bottom
    half), superres (factor=2), blur (sigma=1.5, size), colorize.
    """
    key = _OPERATOR_NAMES.key(name)
    try:
        if key == "inpaint-random":
            return MaskOperator(random_mask(shape, **options))
        if key == "inpaint-box":
            return MaskOperator(box_mask(shape, **options))
        if key == "superres":
            return AvgPoolOperator(shape, **options)
        if key == "blur":
            return BlurOperator(shape, **options)
        if key == "colorize":
            return GreyOperator(shape, **options)
    except TypeError as e:
        raise ValueError(f"bad options {sorted(options)} for operator {name!r}: {e}") from None
    raise ValueError(f"unknown operator {name!r}; choose one of {list(OPERATORS)}")
