"""Sliding-window inference shared by validation, prediction and search scoring (MONAI's implementation)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import sliding_window_inference


def predict_logits(model: Callable[..., torch.Tensor], image: torch.Tensor, patch_size: list[int],
                   overlap: float = 0.25, sw_batch_size: int = 2, amp: bool = False,
                   forward_kwargs: dict[str, Any] | None = None) -> torch.Tensor:
    """Logits ``(B, K, H, W, D)`` for a whole image ``(B, C, H, W, D)``, patch by patch with Gaussian blending.

    Images smaller than the patch are padded by MONAI and cropped back.
    """
    kwargs = forward_kwargs or {}
    with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=amp and image.device.type == "cuda"):
        logits = sliding_window_inference(image, roi_size=patch_size, sw_batch_size=sw_batch_size,
                                          predictor=lambda x: model(x, **kwargs), overlap=overlap, mode="gaussian")
    return torch.as_tensor(logits).float()
