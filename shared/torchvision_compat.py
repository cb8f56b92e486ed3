"""The one place that makes ``import torchvision`` work on CPU-only hosts with a CUDA-built wheel.

torchvision 0.28.0 is published for this torch only as a CUDA build. Its C extension then fails to load,
and ``torchvision/_meta_registrations.py`` aborts the import because it registers fake kernels for the
``torchvision::nms`` and ``torchvision::qnms`` operators, whose schemas only the extension defines. The
models and transforms we use are pure Python, so defining those two schemas (with no kernels) is enough.
The schemas are defined only when the extension really failed to load; a working build is left alone.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

_MISSING_OPERATOR_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_fallback_library: torch.library.Library | None = None


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ImportError("torchvision is not installed (pip install torchvision==0.28.0)")
    extension = next(iter(sorted(Path(spec.origin).parent.glob("_C.*"))), None)
    if extension is None:
        return False
    try:
        torch.ops.load_library(str(extension))
    except OSError:
        return False
    return True


def import_torchvision() -> ModuleType:
    """Import torchvision, defining the two operator schemas first if its C extension cannot load."""
    global _fallback_library
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not _extension_loads() and _fallback_library is None:
        _fallback_library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OPERATOR_SCHEMAS:
            _fallback_library.define(schema)
    import torchvision

    return torchvision
