"""Holdout images with true and predicted masks drawn per class in distinct colours (DVC image plots)."""

from __future__ import annotations

import cv2
import numpy as np

# RGB, one per class: 1 red, 2 green, 3 blue, 4 yellow (then cycling).
CLASS_COLOURS = ((230, 40, 40), (40, 200, 40), (40, 110, 255), (240, 220, 30))


def draw_masks(image: np.ndarray, masks: np.ndarray, fill: float = 0.35) -> np.ndarray:
    """RGB image with each class mask tinted and outlined in its colour."""
    canvas = image.astype(np.float32)
    for k, mask in enumerate(masks):
        if not mask.any():
            continue
        colour = np.asarray(CLASS_COLOURS[k % len(CLASS_COLOURS)], np.float32)
        on = mask.astype(bool)
        canvas[on] = (1 - fill) * canvas[on] + fill * colour
    result = canvas.astype(np.uint8)
    for k, mask in enumerate(masks):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(result, contours, -1, CLASS_COLOURS[k % len(CLASS_COLOURS)], 2)
    return result


def truth_vs_prediction(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, width: int = 800
) -> np.ndarray:
    """Two panels, truth above prediction, labelled, scaled to `width` pixels."""
    panels = []
    for label, masks in (("truth", truth), ("prediction", prediction)):
        panel = draw_masks(image, masks)
        scale = width / panel.shape[1]
        panel = cv2.resize(
            panel, (width, max(1, round(panel.shape[0] * scale))), interpolation=cv2.INTER_AREA
        )
        cv2.putText(panel, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(panel)
    separator = np.full((4, width, 3), 255, np.uint8)
    return np.vstack([panels[0], separator, panels[1]])
