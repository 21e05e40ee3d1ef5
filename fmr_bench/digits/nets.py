"""The evaluated classifiers of the digits world.

Both take normalised images, ``(x - MEAN) / STD`` with ``x`` in [0, 1] and shape
(N, 3, 32, 32), and return (N, 10) logits. The CNN uses BatchNorm: call ``eval()``
before evaluating (the FMR protocol does, as it freezes the evaluated model).
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DigitsCNN(nn.Module):
    """Small VGG-style CNN: three blocks of two 3x3 convolutions (32 -> 16 -> 8 -> 4 px).

    Args:
        width: channels of the first block; the next blocks have 2x and 4x as many.
        num_classes: number of output logits.
        dropout: dropout before the classifier (active in training mode only).
    """

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, width),
            _conv_block(width, 2 * width),
            _conv_block(2 * width, 4 * width),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of normalised images (N, 3, 32, 32)."""
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """Multi-layer perceptron on the flattened 3x32x32 image.

    Args:
        hidden: width of the two hidden layers.
        num_classes: number of output logits.
        dropout: dropout after each hidden layer (active in training mode only).
    """

    def __init__(self, hidden: int = 128, num_classes: int = NUM_CLASSES, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of normalised images (N, 3, 32, 32)."""
        return self.net(x)
