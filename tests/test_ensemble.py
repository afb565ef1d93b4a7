"""Ensembles of runs and mirror test-time augmentation at prediction."""

from __future__ import annotations

import torch

from segnas.engine.inference import ensemble_probabilities, mirrorings, predict_logits


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(1, 3, kernel_size=3, padding=1).eval()


def test_ensemble_of_two_runs_is_the_mean_of_their_probabilities() -> None:
    image = torch.randn(1, 1, 12, 10, 8)
    models = [(_model(0), [8, 8, 8]), (_model(1), [8, 8, 8])]
    each = [torch.softmax(predict_logits(model, image, patch, 0.5), dim=1) for model, patch in models]
    together = ensemble_probabilities(models, image, overlap=0.5)
    torch.testing.assert_close(together, (each[0] + each[1]) / 2)
    torch.testing.assert_close(together.sum(1), torch.ones(1, 12, 10, 8))


def test_flip_tta_averages_eight_mirrorings_and_commutes_with_flips() -> None:
    assert len(set(mirrorings("flips"))) == 8 and mirrorings("none") == [()]
    model = [(_model(2), [8, 8, 8])]
    image = torch.randn(1, 1, 8, 8, 8)  # one window: the sliding window adds no asymmetry of its own
    plain = ensemble_probabilities(model, image)
    with_tta = ensemble_probabilities(model, image, tta="flips")
    assert not torch.allclose(plain, with_tta)  # a convolution with random weights is not mirror-symmetric
    for axes in [(2,), (3, 4), (2, 3, 4)]:  # averaged over the mirror group, the prediction is equivariant
        torch.testing.assert_close(ensemble_probabilities(model, image.flip(axes), tta="flips"),
                                   with_tta.flip(axes))
