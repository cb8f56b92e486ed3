"""How WARP clients feed the published models (WIRE_CONTRACT §5), with the same OpenCV calls they use.

Accuracy that counts is accuracy through exactly these steps; training inputs are made the same way.
"""

from __future__ import annotations

import cv2
import numpy as np

ICON_CROP_SIZE = 64
ICON_INPUT_SIZE = 224
SCREEN_INPUT_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

ICON_PREPROCESSING = {
    "steps": [
        "decode the slot crop as BGR (OpenCV's order; no conversion to RGB)",
        "cv2.resize to 64x64 with INTER_AREA",
        "cv2.resize to 224x224 with INTER_LINEAR",
        "float32, divide by 255; no mean/std normalisation",
        "NCHW, batch of 1; softmax over the logits; top-1",
    ],
    "channel_order": "BGR",
    "crop_size": ICON_CROP_SIZE,
    "input_size": ICON_INPUT_SIZE,
    "scale": 1 / 255,
    "mean": None,
    "std": None,
    "onnx_input_name": "input",
}
SCREEN_PREPROCESSING = {
    "steps": [
        "decode the screenshot as BGR",
        "cv2.resize to 224x224 with INTER_AREA",
        "BGR to RGB, float32, divide by 255",
        "subtract ImageNet mean, divide by ImageNet std",
        "NCHW, batch of 1; softmax; trust the top-1 at confidence >= 0.5",
    ],
    "channel_order": "RGB",
    "input_size": SCREEN_INPUT_SIZE,
    "mean": IMAGENET_MEAN.tolist(),
    "std": IMAGENET_STD.tolist(),
}


def decode_bgr(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("image cannot be decoded")
    return image


def icon_crop_64(png: bytes) -> np.ndarray:
    """Client step 1: the crop at 64x64, BGR, uint8 HxWxC."""
    return cv2.resize(decode_bgr(png), (ICON_CROP_SIZE, ICON_CROP_SIZE), interpolation=cv2.INTER_AREA)


def icon_input(crop_64: np.ndarray) -> np.ndarray:
    """Client steps 2-4 from the 64x64 BGR crop: float32 CxHxW at 224, scaled to [0, 1]."""
    upscaled = cv2.resize(crop_64, (ICON_INPUT_SIZE, ICON_INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(upscaled.transpose(2, 0, 1), dtype=np.float32) / 255.0


def screen_rgb(png: bytes) -> np.ndarray:
    """Client steps 1-2 for screenshots: 224x224 (INTER_AREA), RGB, uint8 HxWxC."""
    resized = cv2.resize(
        decode_bgr(png), (SCREEN_INPUT_SIZE, SCREEN_INPUT_SIZE), interpolation=cv2.INTER_AREA
    )
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)


def screen_input_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Client steps 3-4: float32 CxHxW, scaled to [0, 1], ImageNet-normalised."""
    x = rgb.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1), dtype=np.float32)
