"""Classifier probes on frozen embeddings X [n, d] with labels y [n] of any type (like scikit-learn).

- `LinearProbe`: multinomial logistic regression (scikit-learn, lbfgs), C chosen from `c_grid`;
- `MLPProbe`: two ReLU hidden layers trained with Adam and an L2 penalty (torch, CPU), hidden sizes
  and L2 strength chosen from `hidden_grid` x `l2_grid`.

Both standardize features with the training rows' mean and std (a constant dimension is centred and
left unscaled), choose their configuration by accuracy on (X_dev, y_dev) when given, ties going to the
first entry of `dev_scores_` (LinearProbe lists C ascending: the stronger regularization wins; MLPProbe
lists the grid in its order, hidden sizes outer, L2 inner), and keep that configuration's model fitted
on the training rows. Without dev data they use a fixed default configuration (see each class).
Labels of dev or test rows that do not occur in training count as errors.

After `fit`: `classes_` [K] (sorted, as np.unique), `best_params_` (dict), `dev_scores_` (one dict per
configuration with `params` and `dev_accuracy`, plus `n_iter` (linear) or `best_epoch` and `curve`,
the dev accuracy after each epoch (MLP); empty without dev data).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def encode_labels(classes: np.ndarray, y) -> np.ndarray:
    """[n] index of each label of y in `classes`, -1 for a label not among them."""
    index = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    return np.array([index.get(v, -1) for v in np.asarray(y).tolist()], dtype=np.int64)


def _as_matrix(X, name: str, d: int | None = None) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or (d is not None and X.shape[1] != d):
        want = f"[n, {d}]" if d is not None else "[n, d]"
        raise ValueError(f"{name} must be {want}, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} has non-finite values")
    return X


class _Probe:
    """Shared checks, standardization, label coding, predict and score."""

    def _prepare(self, X, y, X_dev, y_dev):
        X = _as_matrix(X, "X")
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(X):
            raise ValueError(f"y must be [{len(X)}], got shape {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y needs at least 2 classes to train a probe, got {self.classes_}")
        self.mean_ = X.mean(0)
        std = X.std(0)
        self.scale_ = np.where(std > 1e-10 * np.abs(X).max(0), std, 1.0)
        if (X_dev is None) != (y_dev is None):
            raise ValueError("give both X_dev and y_dev, or neither")
        dev = None
        if X_dev is not None:
            X_dev = _as_matrix(X_dev, "X_dev", X.shape[1])
            if len(X_dev) == 0 or len(X_dev) != len(np.asarray(y_dev)):
                raise ValueError(
                    f"X_dev {X_dev.shape} and y_dev must be non-empty, of equal length"
                )
            dev = (self._standardize(X_dev), encode_labels(self.classes_, y_dev))
        return self._standardize(X), codes.ravel(), dev

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) / self.scale_

    def predict_proba(self, X) -> np.ndarray:
        """[n, K] class probabilities, columns in the order of `classes_`."""
        return self._proba(self._standardize(_as_matrix(X, "X", len(self.mean_))))

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def score(self, X, y) -> float:
        """Accuracy; labels unseen in training count as errors."""
        return float((self.predict_proba(X).argmax(1) == encode_labels(self.classes_, y)).mean())

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LinearProbe(_Probe):
    """Logistic regression on standardized features. Without dev data C is the middle of the sorted
    grid (the upper middle for an even length: 1.0 for the default grid). The fits along the grid
    warm-start from the previous (smaller) C."""

    def __init__(
        self,
        c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
        max_iter: int = 1000,
        seed: int = 0,
    ):
        self.c_grid = tuple(c_grid)
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X, y, X_dev=None, y_dev=None) -> LinearProbe:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        Z, codes, dev = self._prepare(X, y, X_dev, y_dev)
        grid = sorted(float(c) for c in self.c_grid)
        if dev is None:
            grid = [grid[len(grid) // 2]]
        model = LogisticRegression(max_iter=self.max_iter, warm_start=True, random_state=self.seed)
        models, self.dev_scores_ = [], []
        for c in grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.set_params(C=c).fit(Z, codes)
            models.append(copy.deepcopy(model))
            if dev is not None:
                acc = float((model.predict(dev[0]) == dev[1]).mean())
                self.dev_scores_.append(
                    {"params": {"C": c}, "dev_accuracy": acc, "n_iter": int(model.n_iter_.max())}
                )
        scores = [s["dev_accuracy"] for s in self.dev_scores_]
        best = int(np.argmax(scores)) if dev is not None else 0
        self.model_ = models[best]
        self.best_params_ = {"C": grid[best]}
        return self

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(Z)


# ----------------------------------------------------------------------------- MLP


class _FlatAdam:
    """torch.optim.Adam's update (with L2 added to the gradient, like its weight_decay) on one flat
    buffer that holds all the parameters: a few tensor ops per step, however many tensors there are.
    `params` are leaf views into the buffer and their .grad views into one gradient buffer, so
    backward accumulates straight into it. decay: per tensor, an L2 coefficient broadcastable to it."""

    def __init__(self, tensors: list[torch.Tensor], decay: list[torch.Tensor], lr: float):
        self.lr, self.beta1, self.beta2, self.eps, self.t = lr, 0.9, 0.999, 1e-8, 0
        self.theta = torch.cat([t.reshape(-1) for t in tensors])
        self.grad, self.m, self.v = (torch.zeros_like(self.theta) for _ in range(3))
        self.decay = torch.cat(
            [c.expand(t.shape).reshape(-1) for c, t in zip(decay, tensors, strict=True)]
        )
        self.params, offset = [], 0
        for t in tensors:
            view = slice(offset, offset + t.numel())
            p = self.theta[view].view(t.shape).requires_grad_()
            p.grad = self.grad[view].view(t.shape)
            self.params.append(p)
            offset += t.numel()

    def zero_grad(self) -> None:
        self.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        g = self.grad.addcmul_(self.theta, self.decay)
        self.m.lerp_(g, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        denom = (self.v.sqrt() / (1 - self.beta2**self.t) ** 0.5).add_(self.eps)
        self.theta.addcdiv_(self.m, denom, value=-self.lr / (1 - self.beta1**self.t))


class _Stack:
    """g independent MLPs d -> h1 -> h2 -> k of one hidden size, trained together. The first layer
    of all g is one matrix w1 [d, g*h1] (one matmul for the shared input), the others are stacked
    [g, fan_in, fan_out] for batched matmuls; biases b1 [g*h1], b2 [g, 1, h2], b3 [g, 1, k].
    Initialised like torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). `decay`: the L2
    coefficient of each parameter tensor (each network's l2 on its weights, 0 on the biases)."""

    def __init__(self, d: int, hidden: tuple[int, int], k: int, l2: list[float], gen):
        g, (h1, h2) = len(l2), hidden
        self.g, self.h1 = g, h1
        shapes = [(d, h1), (h1,), (1, h1, h2), (1, 1, h2), (1, h2, k), (1, 1, k)]
        fans = [d, d, h1, h1, h2, h2]
        # network by network, so that a network's start does not depend on the ones after it
        nets = [
            [
                (torch.rand(s, generator=gen) * 2 - 1) * f**-0.5
                for s, f in zip(shapes, fans, strict=True)
            ]
            for _ in range(g)
        ]
        self.params = [torch.cat([net[i] for net in nets], 1 if i == 0 else 0) for i in range(6)]
        a, zero = torch.tensor(l2, dtype=torch.float32), torch.zeros(1)
        self.decay = [a.repeat_interleave(h1), zero, a[:, None, None], zero, a[:, None, None], zero]
        # early stopping: best dev accuracy, its epoch and weights; the last epoch that beat the
        # accuracy of the previous such epoch by more than tol (patience counts from there)
        self.best = [p.clone() for p in self.params]
        self.best_acc, self.best_epoch = np.full(g, -1.0), np.zeros(g, dtype=np.int64)
        self.mark_acc, self.mark_epoch = np.full(g, -np.inf), np.zeros(g, dtype=np.int64)
        self.curve: list[np.ndarray] = []  # [g] dev accuracies after each epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d] -> logits [g, B, k]."""
        w1, b1, w2, b2, w3, b3 = self.params
        h = torch.relu(torch.addmm(b1, x, w1)).view(len(x), self.g, self.h1).transpose(0, 1)
        h = torch.relu(torch.baddbmm(b2, h, w2))
        return torch.baddbmm(b3, h, w3)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        return torch.cat([self.forward(x[i : i + chunk]) for i in range(0, len(x), chunk)], 1)

    def by_config(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of params with the network index first."""
        w1, b1, *rest = params
        return [w1.view(len(w1), self.g, self.h1).transpose(0, 1), b1.view(self.g, self.h1), *rest]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, t: torch.Tensor, epoch: int, tol: float) -> None:
        """Dev accuracy of each network after `epoch`; keep the weights of a new best."""
        acc = (self.logits(x).argmax(-1) == t).double().mean(1).numpy()
        self.curve.append(acc)
        up = acc > self.best_acc
        if up.any():
            mask = torch.from_numpy(up)
            for q, p in zip(self.by_config(self.best), self.by_config(self.params), strict=True):
                q[mask] = p[mask]
            self.best_acc[up], self.best_epoch[up] = acc[up], epoch
        mark = acc > self.mark_acc + tol
        self.mark_acc[mark], self.mark_epoch[mark] = acc[mark], epoch

    def pick(self, params: list[torch.Tensor], j: int) -> _Stack:
        """A stack of one network: network j of params (a parameter list laid out like this one's)."""
        one = copy.copy(self)
        one.g, one.best, one.decay = 1, None, None
        w1, b1, *rest = self.by_config(params)
        one.params = [w1[j], b1[j]] + [p[j : j + 1] for p in rest]
        one.params = [p.detach().clone() for p in one.params]
        return one


class MLPProbe(_Probe):
    """Two hidden ReLU layers, softmax output, Adam on mini-batches, L2 penalty (l2 / 2) sum ||W||^2
    on the weight matrices (not the biases) added to the mean cross-entropy.

    The configurations that share a hidden size are trained at once as one stack of independent
    networks (weights [g, fan_in, fan_out], batched matmuls); all stacks see the same mini-batches
    and the summed loss gives each network its own gradient; Adam (elementwise, run on one flat
    buffer of all parameters) then updates each exactly as if it were trained alone. With dev data, evaluated after each epoch, each network keeps the weights of
    its best dev-accuracy epoch (the earliest, on ties); a stack trains until each of its networks
    has gone `patience` epochs without beating its accuracy at its last gain by more than `tol`
    (counted once `min_steps` optimizer steps are done: a small set takes few steps per epoch),
    the fit until all stacks are done (or `epochs`). Without dev data the first hidden size and the
    first L2 of the grids train for `epochs` epochs and keep the last weights. batch_size=None:
    n // 64 rows clipped to [64, 256] (64 up to 8k rows, 256 from 16k: big batches run much faster
    per row on CPU), kept in `batch_size_`.

    Deterministic for a seed: initial weights (drawn network by network, in grid order) and batch
    order come from torch.Generators seeded with `seed` and `seed + 1` (the global RNG and the
    thread count are left alone)."""

    def __init__(
        self,
        hidden_grid: tuple[tuple[int, int], ...] = ((256, 256), (128, 128)),
        l2_grid: tuple[float, ...] = (1e-4, 1e-2),
        lr: float = 1e-3,
        epochs: int = 100,
        batch_size: int | None = None,
        patience: int = 5,
        min_steps: int = 100,
        tol: float = 1e-3,
        seed: int = 0,
    ):
        self.hidden_grid = tuple(tuple(int(s) for s in h) for h in hidden_grid)
        self.l2_grid = tuple(float(a) for a in l2_grid)
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.min_steps = min_steps
        self.tol = tol
        self.seed = seed

    def fit(self, X, y, X_dev=None, y_dev=None) -> MLPProbe:
        Z, codes, dev = self._prepare(X, y, X_dev, y_dev)
        bs = self.batch_size
        bs = self.batch_size_ = int(np.clip(len(Z) // 64, 64, 256)) if bs is None else bs
        if min(self.epochs, self.patience, bs) < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        configs = [{"hidden": h, "l2": a} for h in self.hidden_grid for a in self.l2_grid]
        configs = configs if dev is not None else configs[:1]
        hiddens = list(dict.fromkeys(c["hidden"] for c in configs))
        members = [[i for i, c in enumerate(configs) if c["hidden"] == h] for h in hiddens]
        init = torch.Generator().manual_seed(self.seed)
        order = torch.Generator().manual_seed(self.seed + 1)  # batch order
        d, k = Z.shape[1], len(self.classes_)
        stacks = [
            _Stack(d, h, k, [configs[i]["l2"] for i in m], init)
            for h, m in zip(hiddens, members, strict=True)
        ]
        opt = _FlatAdam(
            [p for s in stacks for p in s.params], [c for s in stacks for c in s.decay], self.lr
        )
        for i, s in enumerate(stacks):
            s.params = opt.params[6 * i : 6 * i + 6]
        x, t = torch.from_numpy(Z.astype(np.float32)), torch.from_numpy(codes)
        if dev is not None:
            x_dev, t_dev = torch.from_numpy(dev[0].astype(np.float32)), torch.from_numpy(dev[1])
        active = stacks
        # early stopping starts after min_steps optimizer steps (small sets take few per epoch)
        min_epochs = -(-self.min_steps // -(-len(x) // bs))
        for epoch in range(1, self.epochs + 1):
            perm = torch.randperm(len(x), generator=order)
            for i in range(0, len(x), bs):
                idx = perm[i : i + bs]
                xb, tb = x[idx], t[idx]
                # the sum of the networks' mean losses: each gets the gradient of its own loss
                loss = sum(
                    F.cross_entropy(s.forward(xb).flatten(0, 1), tb.repeat(s.g), reduction="sum")
                    for s in active
                ) / len(idx)
                opt.zero_grad()
                loss.backward()
                opt.step()  # a stopped stack moves on (zero loss gradient) but is never read again
            if dev is None:
                continue
            for s in active:
                s.evaluate(x_dev, t_dev, epoch, self.tol)
            active = [
                s
                for s in active
                if epoch < min_epochs or (epoch - s.mark_epoch < self.patience).any()
            ]
            if not active:
                break
        self.epochs_run_ = epoch
        if dev is None:
            self.dev_scores_, j = [], 0
            self.net_ = stacks[0].pick(stacks[0].params, 0)
        else:
            self.dev_scores_ = [{}] * len(configs)
            for s, m in zip(stacks, members, strict=True):
                for r, c in enumerate(m):
                    self.dev_scores_[c] = {
                        "params": configs[c],
                        "dev_accuracy": float(s.best_acc[r]),
                        "best_epoch": int(s.best_epoch[r]),
                        "curve": [float(a[r]) for a in s.curve],
                    }
            j = int(np.argmax([s["dev_accuracy"] for s in self.dev_scores_]))
            gi = next(gi for gi, m in enumerate(members) if j in m)
            self.net_ = stacks[gi].pick(stacks[gi].best, members[gi].index(j))
        self.best_params_ = dict(configs[j])
        return self

    def _proba(self, Z: np.ndarray) -> np.ndarray:
        logits = self.net_.logits(torch.from_numpy(Z.astype(np.float32)))[0]
        return torch.softmax(logits.double(), -1).numpy()
