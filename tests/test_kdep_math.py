"""PTS and the KDEP loss on fixed tensors, against hand computation."""

from __future__ import annotations

import math

import torch

from kdflow.distill.kdep import SVDAlignment, kdep_loss, power_temperature_scaling


def test_pts_values():
    z = torch.tensor([-0.8, -0.1, 0.0, 0.0125, 2.7])
    out = power_temperature_scaling(z, tau=0.1, power=3)
    expected = torch.tensor([-2.0, -1.0, 0.0, 0.5, 3.0])  # sign(z) * (|z| / 0.1) ** (1/3)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(power_temperature_scaling(torch.tensor([0.8]), 0.2, 2), torch.tensor([2.0]))


def test_kdep_loss_against_hand_computation():
    # teacher features (B=2, D=3), mean, and a basis keeping the first two principal directions
    teacher = torch.tensor([[1.1, 0.3, 5.0], [0.9, -0.7, 5.0]])
    mean = torch.tensor([1.0, 0.0, 5.0])
    basis = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    student = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    align = SVDAlignment(mean, basis)
    # z = [[0.1, 0.3], [-0.1, -0.7]] -> t = sign(z) * (|z| / 0.1) ** (1/3)
    t = [[1.0, 3 ** (1 / 3)], [-1.0, -(7 ** (1 / 3))]]
    s = [[1.0, 1.0], [-1.0, 0.0]]
    mse = sum((s[b][j] - t[b][j]) ** 2 for b in range(2) for j in range(2)) / 4
    loss = kdep_loss(student, teacher, align, tau=0.1, power=3, weight=3.0)
    assert math.isclose(loss.item(), 3.0 * mse, rel_tol=1e-6)


def test_loss_gradient_reaches_student_only():
    align = SVDAlignment(torch.zeros(4), torch.eye(4)[:, :2])
    student = torch.randn(3, 2, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    kdep_loss(student, teacher, align, 0.1, 3, 1.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in align.buffers())
