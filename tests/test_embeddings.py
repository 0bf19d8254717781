"""Time and periodic embeddings against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from models.embeddings import ScalarTime, SinusoidalTime, periodic_fourier_features


def test_scalar_time_is_edm_conditioning():
    t = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(ScalarTime()(t), t[:, None])


def test_sinusoidal_time_closed_form():
    emb = SinusoidalTime(4, scale=1000.0, max_period=10000.0)
    t = torch.tensor([0.0, 0.002], dtype=torch.float64)
    out = emb(t)
    # frequencies 1 and 1/10000; angles 1000 t w
    expected = torch.tensor(
        [[0.0, 0.0, 1.0, 1.0], [math.sin(2.0), math.sin(2e-4), math.cos(2.0), math.cos(2e-4)]],
        dtype=torch.float64,
    )
    assert torch.allclose(out, expected, atol=1e-7)
    with pytest.raises(ValueError, match="even dim"):
        SinusoidalTime(5)


def test_periodic_fourier_features_closed_form_and_period():
    d = torch.tensor([[0.25, 0.0, 0.5]], dtype=torch.float64)
    out = periodic_fourier_features(d, 2)
    # layout: sin over (coordinate, k) then cos; k = 0, 1
    sin = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    cos = [1.0, 0.0, 1.0, 1.0, 1.0, -1.0]
    assert torch.allclose(out, torch.tensor([sin + cos], dtype=torch.float64), atol=1e-12)
    shifted = periodic_fourier_features(
        d + torch.tensor([[3.0, -1.0, 7.0]], dtype=torch.float64), 2
    )
    assert torch.allclose(shifted, out, atol=1e-12)
