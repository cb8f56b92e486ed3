import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_test_command_the_readme_names():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(scripts/\S+)\s+# .*run the tests", readme, flags=re.MULTILINE)
    assert commands == ["scripts/test.sh"]
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_and_the_test_script_name_the_fast_tier_and_the_tier_before_a_commit():
    for path in (ROOT / "README.md", ROOT / "scripts" / "test.sh"):
        text = path.read_text()
        assert "scripts/test.sh -m unit" in text, path
        assert 'scripts/test.sh -m "not system"' in text, path


@pytest.mark.integration  # runs scripts/test.sh, which sources scripts/setup.sh: servers, a pytest process
def test_no_tests_collected_is_a_failure():
    result = subprocess.run(
        ["bash", "scripts/test.sh", "tests/utils", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr
