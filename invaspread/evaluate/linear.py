"""Linear classifier on frozen features (the "Linear" column of the paper's Table 2).

The paper trains an SVM on the learned features; we fit an L2-regularised multinomial logistic
regression (full-batch L-BFGS) on the L2-normalised training features. It only ever sees feature
tensors, so the backbone cannot change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
                          max_iter: int = 500, seed: int = 0):
    """Returns (W (d, C), b (C,)) minimising mean cross-entropy + weight_decay/2 ||W||^2."""
    torch.manual_seed(seed)
    x = F.normalize(features.detach().float(), dim=1)
    y = labels.to(x.device).long()
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Top-1 accuracy (%) on the test features of a linear classifier fit on the train features."""
    num_classes = int(max(train_labels.max().item(), test_labels.max().item())) + 1
    w, b = fit_linear_classifier(train_features, train_labels, num_classes, weight_decay, seed=seed)
    pred = (F.normalize(test_features.float(), dim=1).to(w.device) @ w + b).argmax(1)
    return 100.0 * (pred == test_labels.to(w.device)).float().mean().item()
