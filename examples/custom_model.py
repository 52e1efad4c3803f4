"""A user's own classifier, as `precompute/configs/custom-example.toml` points at it (`examples.custom_model:build`).

Any function that returns a ``torch.nn.Module`` taking normalised (N, C, H, W) images and returning logits works.
"""
from torch import nn


def build(n_classes: int = 3) -> nn.Module:
    """A small CNN for 3×64×64 images; taps: ``features.2``, ``features.5`` (conv maps), ``classifier.1`` (fc)."""
    return _Net(n_classes)


class _Net(nn.Module):
    def __init__(self, n_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, n_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
