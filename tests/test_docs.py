"""The README's account of where the shipped stack leaves the seed stays true to the file."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _seed_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## The shipped stack and the seed\n", 1)[1].split("\n## ", 1)[0]


def test_seed_departures_name_the_shipped_images() -> None:
    """Every image the shipped file runs is in the departures table, and the Grafana row names
    the seed's image, user and the CVE it falls in: bumping an image means updating the list."""
    section = _seed_section()
    shipped = yaml.safe_load((ROOT / "desired_state.yaml").read_text())["services"]
    for name, service in shipped.items():
        assert f"`{service['image']}`" in section, (name, service["image"])
    assert shipped["grafana"]["user"] == "472"
    for fact in ("grafana/grafana-enterprise:8.2.0", "`104`", "CVE-2021-43798", "8.2.7"):
        assert fact in section, fact


def test_shipped_file_points_at_the_list() -> None:
    """desired_state.yaml says itself that it leaves the seed, and where that is listed."""
    text = (ROOT / "desired_state.yaml").read_text()
    assert "The shipped stack and the seed" in text
    assert "grafana/grafana-enterprise:8.2.0" in text and "CVE-2021-43798" in text
