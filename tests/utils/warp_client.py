"""The WARP desktop client's update and inference logic, reproduced (WIRE_CONTRACT §2 and §5).

The client polls GET /model/version, updates when the remote trained_at is string-greater than its own,
downloads the required and optional files with hf_hub_download, and runs the icon model on a BGR crop resized
to 64x64 then 224x224, divided by 255, with no mean/std.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from shared.torchvision_compat import import_torchvision

tv = import_torchvision()
REPO = "warp/warp-knowledge"  # the repo the tests publish to
REQUIRED = ("models/icon_classifier.pt", "models/label_map.json")
OPTIONAL = (
    "models/icon_classifier_meta.json",
    "models/icon_classifier.onnx",
    "models/model_version.json",
    "models/screen_classifier.pt",
    "models/screen_classifier_labels.json",
    "models/screen_classifier_meta.json",
    "models/ship_type_corrections.json",
)


class WarpClient:
    """What the desktop client does, step by step."""

    def __init__(self, hub_url: str, cache: Path, local_trained_at: str) -> None:
        self.hub_url, self.cache, self.trained_at = hub_url, cache, local_trained_at
        self.files: dict[str, Path] = {}

    def wants(self, remote: dict) -> bool:
        return bool(remote.get("available")) and remote["trained_at"] > self.trained_at

    def install(self, remote: dict) -> None:
        for name in REQUIRED:
            self.files[name] = Path(self._download(name))
        for name in OPTIONAL:
            try:
                self.files[name] = Path(self._download(name))
            except RemoteEntryNotFoundError:
                pass
        self.trained_at = remote["trained_at"]

    def _download(self, name: str) -> str:
        return hf_hub_download(REPO, name, repo_type="dataset", endpoint=self.hub_url, cache_dir=self.cache)

    def classify(self, png: bytes) -> tuple[str, float]:
        label_map = json.loads(self.files["models/label_map.json"].read_text())
        model = tv.models.efficientnet_b0(weights=None, num_classes=len(label_map))
        model.load_state_dict(torch.load(self.files["models/icon_classifier.pt"], map_location="cpu"))
        model.eval()
        tensor = self.tensor(png)
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(tensor)), dim=1)[0]
        index = int(probabilities.argmax())
        return label_map[str(index)], float(probabilities[index])

    @staticmethod
    def tensor(png: bytes) -> np.ndarray:
        bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        small = cv2.resize(bgr, (64, 64), interpolation=cv2.INTER_AREA)
        big = cv2.resize(small, (224, 224), interpolation=cv2.INTER_LINEAR)
        return (big.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
