"""Float64 re-derivations of the margin-softmax losses, shared by the loss tests.

Written from the papers' formulas with ``acos`` and dense ``(B, C)`` logits, independently of
the library's kernel; each ``_margin(...)`` returns the target logit as a function of the
target angle and the embedding norms.
"""

from __future__ import annotations

import math

import torch


def reference_loss(emb, weight, labels, target_of_theta, scale, sub_centers=1):
    """Margin softmax written from the papers' formulas with acos, in float64."""
    e = emb.double()
    w = weight.double()
    cos = (e / e.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()
    if sub_centers > 1:
        cos = cos.reshape(len(e), -1, sub_centers).amax(dim=2)
    one_hot = torch.nn.functional.one_hot(labels, cos.shape[1]).double()
    theta = torch.acos((cos * one_hot).sum(dim=1))
    target = target_of_theta(theta, e.norm(dim=1).detach())
    logits = scale * (cos * (1 - one_hot) + target.unsqueeze(1) * one_hot)
    return (torch.logsumexp(logits, dim=1) - (logits * one_hot).sum(dim=1)).mean()


def _sphere(m):
    def f(theta, _norms):
        k = torch.floor(m * theta / math.pi)
        return (-1.0) ** k * torch.cos(m * theta) - 2 * k

    return f


def _combined(m1, m2, m3):
    def f(theta, _norms):
        t_star = (math.pi - m2) / m1
        cont = torch.cos(theta) - math.cos(t_star) - 1 - m3
        return torch.where(theta <= t_star, torch.cos(m1 * theta + m2) - m3, cont)

    return f


def _adaface(m, h, eps, mean, std):
    def f(theta, norms):
        q = ((norms.clamp(1e-3, 100) - mean) / (std + eps) * h).clamp(-1, 1)
        return torch.cos((theta - m * q).clamp(eps, math.pi - eps)) - m - m * q

    return f


def _arc_easy(m):
    def f(theta, _norms):
        return torch.where(torch.cos(theta) > 0, torch.cos(theta + m), torch.cos(theta))

    return f
