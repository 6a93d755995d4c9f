"""The README against the code it describes: the commands it shows exist, the ports it
starts things on do not collide."""

from __future__ import annotations

import re

from coordinator.cli import build_parser
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def fenced_blocks(*languages: str) -> list[str]:
    """The text of every fenced block of the README in one of ``languages``."""
    return [text for lang, text in re.findall(r"```(\w*)\n(.*?)```", README, re.S)
            if lang in languages]


def started_ports() -> set[int]:
    """Every port a shell block of the README starts something on (``PORT=8001``,
    ``HAPROXY_BIND=:8080``, ``--port 8000``, a compose comment's ``on :8080``)."""
    ports: set[int] = set()
    for block in fenced_blocks("sh", "console"):
        ports |= {int(p) for p in re.findall(r"(?:PORT=|BIND=:|--port |on :)(\d{2,5})\b", block)}
    return ports


def test_the_dashboard_default_port_collides_with_nothing_the_readme_starts() -> None:
    default = build_parser().parse_args(["dashboard"]).port
    ports = started_ports()
    assert {8000, 8001, 8080} <= ports  # the parse finds the README's own servers
    assert default not in ports, (default, sorted(ports))
    assert f"[--port {default}]" in README  # and the README states the default
