"""The README against the code it describes: every `coordinator` command it shows parses
with the CLI's own parser, every COORD_* and BACKEND_* variable it names is read, its
Python blocks compile and its shell blocks are bash, and the ports it starts things on
do not collide."""

from __future__ import annotations

import re
import subprocess

import pytest

from coordinator.ops.cli import build_parser
from coordinator.settings import Settings
from tests.support import ROOT, _Recorder, known_variables

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


# -- what the README shows exists -------------------------------------------------------

PLACEHOLDERS = {"ID": "web-1", "N": "3", "S": "2"}  # `--instance ID`, `--count N`, ...


def shown_commands() -> list[str]:
    """Every `coordinator ...` the README shows: the lines of its shell and console
    blocks that run it (after a `$ ` prompt, `docker compose exec NAME`, `kubectl exec
    ... --`), and its inline code spans, brackets around optional parts dropped."""
    found = []
    for block in fenced_blocks("sh", "console"):
        for line in block.splitlines():
            match = re.search(r"(?:^|\$ |-- |exec \S+ )(coordinator .*)", line)
            if match:
                found.append(match[1])
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    found += [" ".join(span.split()) for span in re.findall(r"`(coordinator [^`]+)`", prose)]
    return found


def argv(shown: str) -> list[str]:
    """The arguments after `coordinator`, as the shell would pass them."""
    command = re.split(r"\s#|;|\s\\?\|", shown, maxsplit=1)[0]  # comments, `; echo $?`, `||`
    words = command.replace("[", " ").replace("]", " ").split()[1:]
    return [PLACEHOLDERS.get(word, word) for word in words]


def test_the_readme_shows_the_commands_of_every_kind() -> None:
    shown = {argv(c)[0] for c in shown_commands()}
    assert shown == {"fleet", "events", "check", "dashboard"}


@pytest.mark.parametrize("shown", sorted(set(shown_commands())))
def test_every_coordinator_command_the_readme_shows_parses(shown: str) -> None:
    """The real parser accepts it: the subcommand and each option exist, with a value of
    the type it takes (argparse exits 2 on anything else)."""
    parser = build_parser()
    try:
        parser.parse_args(argv(shown))
    except SystemExit as exc:
        pytest.fail(f"`{shown}`: the CLI refuses {argv(shown)} (exit {exc.code})")


def coord_variables_read() -> set[str]:
    """Every COORD_* variable the settings read (asked of an environment that notes it)."""
    recorder = _Recorder()
    Settings.from_env(recorder)
    return {name for name in recorder.asked if name.startswith("COORD_")}


def test_every_coord_variable_the_readme_names_is_one_the_settings_read() -> None:
    named = set(re.findall(r"\bCOORD_[A-Z_]*[A-Z]\b", README))
    read = coord_variables_read()
    assert named <= read, sorted(named - read)


def test_the_configuration_table_lists_every_variable_the_settings_read() -> None:
    section = README[README.index("\n## Configuration\n"):]
    section = section[:section.index("\n## ", 1)]
    listed = set(re.findall(r"^\| `(COORD_[A-Z_]+)` \|", section, re.M))
    assert listed == coord_variables_read()


def test_every_backend_variable_the_readme_names_is_one_the_backend_reads() -> None:
    named = set(re.findall(r"\bBACKEND_[A-Z_]*[A-Z]\b", README))  # not HAProxy's BACKEND_1
    assert named <= known_variables(), sorted(named - known_variables())


def test_every_python_block_compiles_and_every_shell_block_is_bash() -> None:
    for block in fenced_blocks("python"):
        compile(block, "README.md", "exec")
    for block in fenced_blocks("sh"):
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, (done.stderr, block)
