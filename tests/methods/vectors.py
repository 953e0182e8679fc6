"""The small shared inputs of the reference-value tests (see conftest.py), and helpers."""

from __future__ import annotations

import numpy as np

from ltkd_jax.methods.primitives import effective_number_weights

# Three classes, two samples: training counts, student and teacher logits, labels.
N = np.array([100, 20, 5])
Z = np.array([[2.0, 0.5, -1.0], [0.2, 1.5, 0.3]])
V = np.array([[3.0, 1.0, -2.0], [4.0, 0.8, 0.6]])
Y = np.array([0, 2])
W_TV = [0.115896, 0.577167, 2.306937]  # effective number, beta = 0.9999, sum = C
W = np.asarray(effective_number_weights(N), np.float64)
COS = np.array([[0.5, 0.1, -0.2], [0.05, 0.3, 0.2]])  # cosine logits of a normed head (LDAM)
CE_ZY = 0.947379  # CE(Z, Y), a term of several distillation losses

# CBD: student features (post-projection) and two teachers' features.
F_S = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
T1 = np.array([[1.0, 1.0], [0.0, 2.0]])
T2 = np.array([[2.0, 0.0], [1.0, 1.0]])

# LTKD: six classes, two samples, groups head {0, 1}, medium {2, 3}, tail {4, 5}.
N6 = np.array([200, 100, 40, 20, 8, 4])
Z6 = np.array([[1.5, 0.3, -0.2, 0.8, -1.0, 0.1], [0.2, 1.1, 0.4, -0.3, 0.9, -0.5]])
V6 = np.array([[3.0, 1.2, 0.5, 0.9, -1.5, -0.4], [2.2, 1.8, 0.1, 0.6, 0.3, -1.2]])
Y6 = np.array([0, 4])
G6 = np.array([0, 0, 1, 1, 2, 2])

# KRDistill: teacher class-mean features, teacher features, regressed student features.
MU = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2], [0.5, 0.5, 1.0]])
FT = np.array([[1.2, 0.1, 0.6], [0.9, 0.4, 0.3]])
GFS = np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.6]])


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def cifar_lt_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """CIFAR-LT class counts (Cao et al. 2019): ``n_c = int(n_max * (1/IF)^(c/(C-1)))``."""
    c = np.arange(num_classes)
    return np.array([int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1))) for i in c])
