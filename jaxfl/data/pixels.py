"""How image pixels become model inputs: each data set's standard, as the papers' code does it."""

from __future__ import annotations

import numpy as np

# per-channel mean and standard deviation of the training split's [0, 1] pixels: the values the
# CIFAR pipelines of the PyTorch FL code bases (FedDF's among them) normalize with
CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def scale_images(images: np.ndarray, name: str = "mnist") -> np.ndarray:
    """uint8 (N, H, W[, C]) -> float32 (N, H, W, C): pixels / 255 in [0, 1] (MNIST, Fashion-
    MNIST, EMNIST: the standard of FedAvg's, LEAF's and FedJAX's pipelines), then, for CIFAR,
    (x - mean_c) / std_c per channel c (:data:`CHANNEL_STATS`)."""
    x = images.astype(np.float32) / 255.0
    x = x[..., None] if x.ndim == 3 else x
    if name in CHANNEL_STATS:
        mean, std = (np.asarray(v, np.float32) for v in CHANNEL_STATS[name])
        x = (x - mean) / std
    return x
