"""The instance-feature softmax loss of Ye et al. (CVPR 2019), Section 3.2, Eq. 3-7.

Two forms are provided, selected by ``variant``:

``"reference"`` (default) is what the authors' released code (``BatchCriterion``) computes and how
the paper's numbers were produced. The 2N features of both views are pooled, x = [z1; z2], and
every row a is an anchor whose positive p(a) is the other view of the same instance:

    s_ak = x_a . x_k / tau,      Z_a = sum_{k != a} exp(s_ak)        (self excluded, positive included)
    P_a  = exp(s_a,p(a)) / Z_a,  Q_aj = exp(s_aj) / Z_a              (j not in {a, p(a)})
    loss = -1/(2N) sum_a [ log P_a + sum_{j not in {a, p(a)}} log(1 - Q_aj) ]

With ``stop_gradient=True`` the right-hand factor x_k of every similarity (the "key") is detached,
exactly as the released code multiplies by ``x.data``: gradients reach a feature only through its
own row as an anchor.

``"paper"`` is Eq. 3-7 read literally, with z1 the original branch f and z2 the augmented branch f^:

    P(i|x^_i) = exp(f_i . f^_i / tau) / sum_{k=1..N} exp(f_k . f^_i / tau)            (Eq. 3)
    P(i|x_j)  = exp(f_i . f_j / tau)  / sum_{k=1..N} exp(f_k . f_j / tau)             (Eq. 4, k = j included, Eq. 9)
    J = -sum_i log P(i|x^_i) - sum_i sum_{j != i} log(1 - P(i|x_j)),   loss = J / N  (Eq. 7)

Here ``stop_gradient=True`` detaches the summed-over factor f_k ("pseudo classifier weights").

Everything is computed in the inputs' precision (float32 at least) in log-sum-exp form. ``log(1 - softmax)`` is evaluated as a
leave-one-out log-sum-exp, so it stays finite even when one negative takes all the probability
mass (tau = 0.01, bf16 inputs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.distributed import gather_rows, gathered_view_columns
from .precision import at_least_float32

VARIANTS = ("reference", "paper")
NEGATIVES = ("all", "hard", "easy", "released")


def log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - softmax(logits, dim=1))`` without cancellation.

    logits: (R, C), may hold ``-inf`` for excluded entries (they get probability 0). Every row must
    have at least two finite entries. Returns (R, C).

    log(1 - p_c) = log(sum_{k != c} exp(l_k)) - logsumexp(l). The leave-one-out sum is taken
    relative to the row maximum, which stays in the sum for every c except the arg-max; for the
    arg-max column it is a log-sum-exp over the row with that entry removed.
    """
    m1 = logits.max(dim=1, keepdim=True).values
    shifted = torch.exp(logits - m1)  # (R, C), max entry is exactly 1
    total = shifted.sum(dim=1, keepdim=True)
    # For c != argmax the remaining sum is >= 1 (the max term stays), so no cancellation.
    loo_rest = m1 + torch.log((total - shifted).clamp_min(1.0))
    argmax = logits.argmax(dim=1, keepdim=True)
    without_max = logits.scatter(1, argmax, float("-inf"))
    loo_max = torch.logsumexp(without_max, dim=1, keepdim=True)  # (R, 1)
    is_argmax = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, argmax, True)
    loo = torch.where(is_argmax, loo_max, loo_rest)
    return loo - torch.logsumexp(logits, dim=1, keepdim=True)


class InvaSpreadLoss(nn.Module):
    """Invariant-and-spreading instance loss over real-time instance features.

    Args:
        temperature: tau in Eq. 3-4 (paper: 0.1).
        variant: ``"reference"`` (released code) or ``"paper"`` (Eq. 3-7 literally); see module doc.
        stop_gradient: detach the key / weight factor of every similarity (released code: True).
        negatives: ``"all"`` (default), or the sampling ablation of Table 8 (reference variant only):
            ``"released"`` is the released code's hard branch (its first commit, ``BatchCriterion`` with
            negM < 1): per anchor the m = int(2N f) most similar negatives are kept, their log(1 - Q) terms
            are weighted by f and the sum is divided by m + 1 instead of 2N (f = ``negative_fraction``).
            ``"hard"`` keeps, per anchor, the ``negative_fraction`` most similar negatives, ``"easy"`` the
            least similar; the others leave both Z_a and the sum over j. The selection carries no gradient.
        negative_fraction: share of the 2N - 2 negatives kept by "hard" / "easy" (paper: 50%).
        gather_distributed: in a process group, every rank's local rows are anchors against the keys of
            *all* ranks (``ops.distributed.gather_rows``): the mean over ranks of the returned losses is the
            loss of the concatenated batch, and each rank's gradient on its own rows is world size x that
            of the concatenated batch, which DDP's gradient averaging turns into single-process training.
            Keys are gathered with gradient unless ``stop_gradient``. Every rank must hold the same N.

    Shapes:
        z1, z2: (N, d) L2-normalised embeddings of two views; row i of both is the same instance.
        returns: scalar loss in the inputs' precision (float32 at least).
    """

    def __init__(self, temperature: float = 0.1, variant: str = "reference", stop_gradient: bool = True,
                 negatives: str = "all", negative_fraction: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"InvaSpreadLoss variant must be one of {VARIANTS}, got {variant!r}")
        if not temperature > 0:
            raise ValueError(f"InvaSpreadLoss temperature must be > 0, got {temperature!r}")
        if negatives not in NEGATIVES:
            raise ValueError(f"InvaSpreadLoss negatives must be one of {NEGATIVES}, got {negatives!r}")
        if negatives != "all" and variant != "reference":
            raise ValueError(f"negatives={negatives!r} is implemented for variant='reference' only")
        if not 0 < negative_fraction <= 1:
            raise ValueError(f"InvaSpreadLoss negative_fraction must be in (0, 1], got {negative_fraction!r}")
        self.temperature = float(temperature)
        self.variant = variant
        self.stop_gradient = bool(stop_gradient)
        self.negatives, self.negative_fraction = negatives, float(negative_fraction)
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, variant={self.variant!r}, stop_gradient={self.stop_gradient}, "
                f"negatives={self.negatives!r}")

    def _key(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.stop_gradient else x

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(f"InvaSpreadLoss expects two (N, d) tensors of equal shape, got {tuple(z1.shape)} "
                             f"and {tuple(z2.shape)}")
        if z1.shape[0] < 2:
            raise ValueError(f"InvaSpreadLoss needs at least 2 instances per batch (negatives come from the "
                             f"batch), got N={z1.shape[0]}")
        # Softmax statistics are accumulated in float32 even under bf16/fp16 autocast; float64 stays float64.
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = at_least_float32(z1), at_least_float32(z2)
            if self.variant == "reference":
                return self._reference(z1, z2)
            return self._paper(z1, z2)

    def _keys(self, z: torch.Tensor):
        """(all keys, offset of the local rows among them): the local rows, or every rank's when gathering."""
        if self.gather_distributed:
            return gather_rows(z, with_grad=not self.stop_gradient)
        return z, 0

    def _reference(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        x = torch.cat([z1, z2], dim=0)                                    # (2n, d) local anchors
        keys1, offset = self._keys(z1)
        keys2, _ = self._keys(z2)
        total = keys1.shape[0]                                            # N: instances over all ranks
        logits = x @ self._key(torch.cat([keys1, keys2])).t() / self.temperature   # (2n, 2N), s_ak
        # own: the column of the anchor itself; positive: p(a), the column of its other view
        rows, _, own, positive = gathered_view_columns(n, offset, total, x.device)
        eye = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, own[:, None], True)
        logits = logits.masked_fill(eye, float("-inf"))                   # Z_a excludes k = a
        is_negative = ~eye
        is_negative[rows, positive] = False
        if self.negatives != "all":
            is_negative = self._select_negatives(logits.detach(), is_negative)
            is_positive = torch.zeros_like(eye).scatter_(1, positive[:, None], True)
            logits = logits.masked_fill(~(is_negative | is_positive), float("-inf"))
        log_p = logits.gather(1, positive[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
        log_not_q = log_one_minus_softmax(logits).masked_fill(~is_negative, 0.0)
        if self.negatives == "released":
            kept = self._kept(logits.shape[1])
            # a sum over anchors (not a mean): each of the N / n ranks carries its share x N / n, so that the
            # mean over ranks is the sum over all anchors
            return -(log_p.sum() + self.negative_fraction * log_not_q.sum()) * (total // n) / (kept + 1)
        return -(log_p.sum() + log_not_q.sum()) / (2 * n)

    def _kept(self, rows: int) -> int:
        """Negatives kept per anchor among rows - 2: round(f (2N - 2)); the released code: int(2N f)."""
        total = rows - 2
        m = int(self.negative_fraction * rows) if self.negatives == "released" else round(self.negative_fraction * total)
        return min(total, max(1, m))

    def _select_negatives(self, logits: torch.Tensor, is_negative: torch.Tensor) -> torch.Tensor:
        """Mask of the kept negatives: per row the m most (hard) or least (easy) similar ones."""
        m = self._kept(logits.shape[1])
        hard = self.negatives != "easy"
        candidates = logits.masked_fill(~is_negative, float("-inf") if hard else float("inf"))
        picked = candidates.topk(m, dim=1, largest=hard).indices
        return torch.zeros_like(is_negative).scatter_(1, picked, True)

    def _paper(self, f: torch.Tensor, f_hat: torch.Tensor) -> torch.Tensor:
        n = f.shape[0]
        all_f, offset = self._keys(f)
        weights = self._key(all_f)                                        # f_k, the softmax "classes"
        own = offset + torch.arange(n, device=f.device)                   # column of each local instance
        # Eq. 3: row i holds f_k . f^_i / tau over k; the target class is i.
        aug_logits = f_hat @ weights.t() / self.temperature               # (n, N)
        log_p_aug = aug_logits.gather(1, own[:, None]).squeeze(1) - torch.logsumexp(aug_logits, dim=1)
        # Eq. 4: row j holds f_k . f_j / tau over k (k = j included); P(i|x_j) is column i.
        orig_logits = f @ weights.t() / self.temperature                  # (n, N)
        diagonal = torch.zeros_like(orig_logits, dtype=torch.bool).scatter_(1, own[:, None], True)
        log_not_p = log_one_minus_softmax(orig_logits).masked_fill(diagonal, 0.0)
        return -(log_p_aug.sum() + log_not_p.sum()) / n
