"""The conda route (environment.yml) and the pip route (requirements.txt) pin the same packages."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pip_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _conda_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.match(r"^\s*-\s+([A-Za-z0-9_.-]+)\s*(==|=)\s*([0-9][^\s#]*)", line)
        if match and match.group(1) != "python":
            pins[match.group(1).lower()] = match.group(3)
    return pins


def test_environment_yml_matches_requirements():
    assert _conda_pins() == _pip_pins()


def test_torch_is_pinned_exactly_and_first():
    lines = [l for l in (ROOT / "requirements.txt").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "torch==2.13.0"


def test_pyproject_keeps_a_torch_range():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.3"' in text and "torch==" not in text


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name, pinned in _pip_pins().items():
        installed = version(name)
        assert installed.split("+")[0] == pinned, f"{name}: installed {installed}, pinned {pinned}"
