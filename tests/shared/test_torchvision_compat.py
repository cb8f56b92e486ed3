import subprocess
import sys
import textwrap

import pytest

# a fresh interpreter importing torch per check: seconds each
pytestmark = pytest.mark.integration


def run_isolated(code: str) -> str:
    """Each check in a fresh interpreter: the workaround acts at import time, once per process."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_torchvision_models_the_services_use_build_on_this_machine():
    output = run_isolated(
        """
        import torch
        from shared.torchvision_compat import import_torchvision
        tv = import_torchvision()
        icon = tv.models.efficientnet_b0(weights=None, num_classes=5)
        screen = tv.models.mobilenet_v3_small(weights=None, num_classes=7)
        with torch.no_grad():
            print(tuple(icon.eval()(torch.rand(1, 3, 64, 64)).shape), tuple(screen.eval()(torch.rand(1, 3, 224, 224)).shape))
        print(icon.classifier[1].in_features, screen.classifier[3].in_features)
        """
    )
    assert output.splitlines() == ["(1, 5) (1, 7)", "1280 1024"]


def test_operator_schemas_are_defined_only_when_the_extension_failed_to_load():
    output = run_isolated(
        """
        import torch
        from shared import torchvision_compat
        extension_loads = torchvision_compat._extension_loads()
        torchvision_compat.import_torchvision()
        print(extension_loads, torchvision_compat._fallback_library is not None, hasattr(torch.ops.torchvision, "nms"))
        """
    )
    extension_loads, fallback_used, nms_known = output.split()
    assert fallback_used == str(extension_loads == "False")
    assert nms_known == "True"


def test_importing_twice_returns_the_same_module():
    assert (
        run_isolated(
            """
        from shared.torchvision_compat import import_torchvision
        print(import_torchvision() is import_torchvision())
        """
        )
        == "True"
    )
