"""The README and the manual in docs/ against the code they describe: every `coordinator`
command they show parses with the CLI's own parser, every COORD_* and BACKEND_* variable
they name is read, their Python blocks compile and their shell blocks are bash, the ports
they start things on do not collide, the configuration reference lists every variable,
every module and file they name exists, and every link between them resolves."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from coordinator.ops.arguments import build_parser
from coordinator.settings import Settings
from tests.support import ROOT, _Recorder, doc_blocks, known_variables

MANUAL = ("guide.md", "configuration.md", "redis-contract.md", "operations.md", "deploy.md",
          "security.md", "benchmarks.md")
DOCS = {path.relative_to(ROOT).as_posix(): path.read_text()
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
README_MAX_LINES = 250  # the front door: what, why, the two commands, one example, links


def fenced_blocks(text: str, *languages: str) -> list[str]:
    """The text of every fenced block of ``text`` in one of ``languages``."""
    return [block for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
            if lang in languages]


def every_block(*languages: str) -> list[str]:
    """The fenced blocks in ``languages`` of the README and of every document in docs/."""
    return [block for text in DOCS.values() for block in fenced_blocks(text, *languages)]


def prose(text: str) -> str:
    """``text`` without its fenced blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_the_readme_is_a_front_door_to_the_manual_in_docs() -> None:
    assert {f"docs/{name}" for name in MANUAL} <= set(DOCS)
    readme = DOCS["README.md"]
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert set(MANUAL) <= linked, sorted(set(MANUAL) - linked)


def started_ports() -> set[int]:
    """Every port a shell block of the docs starts something on (``PORT=8001``,
    ``HAPROXY_BIND=:8080``, ``--port 8000``, a compose comment's ``on :8080``)."""
    ports: set[int] = set()
    for block in every_block("sh", "console"):
        ports |= {int(p) for p in re.findall(r"(?:PORT=|BIND=:|--port |on :)(\d{2,5})\b", block)}
    return ports


def test_the_dashboard_default_port_collides_with_nothing_the_docs_start() -> None:
    default = build_parser().parse_args(["dashboard"]).port
    ports = started_ports()
    assert {8000, 8001, 8080} <= ports  # the parse finds the docs' own servers
    assert default not in ports, (default, sorted(ports))
    assert any(f"[--port {default}]" in text for text in DOCS.values())  # the default stated


# -- what the docs show exists ----------------------------------------------------------

# `--instance ID`, `--count N`, `--url URL`, ...
PLACEHOLDERS = {"ID": "web-1", "N": "3", "S": "2", "URL": "http://127.0.0.1:8000/drain"}


def shown_commands() -> list[str]:
    """Every `coordinator ...` the docs show: the lines of their shell and console blocks
    that run it (after a `$ ` prompt, `docker compose exec NAME`, `kubectl exec ...
    --`), and their inline code spans, brackets around optional parts dropped."""
    found = []
    for block in every_block("sh", "console"):
        for line in block.splitlines():
            match = re.search(r"(?:^|\$ |-- |exec \S+ )(coordinator .*)", line)
            if match:
                found.append(match[1])
    for text in DOCS.values():
        found += [" ".join(span.split())
                  for span in re.findall(r"`(coordinator [^`]+)`", prose(text))]
    return found


def argv(shown: str) -> list[str]:
    """The arguments after `coordinator`, as the shell would pass them."""
    command = re.split(r"\s#|;|\s\\?\|", shown, maxsplit=1)[0]  # comments, `; echo $?`, `||`
    words = command.replace("[", " ").replace("]", " ").split()[1:]
    return [PLACEHOLDERS.get(word, word) for word in words]


def test_the_docs_show_the_commands_of_every_kind() -> None:
    shown = {argv(c)[0] for c in shown_commands()}
    assert shown == {"fleet", "events", "check", "dashboard", "drain"}


@pytest.mark.parametrize("shown", sorted(set(shown_commands())))
def test_every_coordinator_command_the_docs_show_parses(shown: str) -> None:
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


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_coord_variable_a_doc_names_is_one_the_settings_read(doc: str) -> None:
    named = set(re.findall(r"\bCOORD_[A-Z_]*[A-Z]\b", DOCS[doc]))
    read = coord_variables_read()
    assert named <= read, sorted(named - read)


def test_the_configuration_reference_lists_every_variable_the_settings_read() -> None:
    listed = set(re.findall(r"^\| `(COORD_[A-Z_]+)` \|", DOCS["docs/configuration.md"], re.M))
    assert listed == coord_variables_read()


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_backend_variable_a_doc_names_is_one_the_backend_reads(doc: str) -> None:
    named = set(re.findall(r"\bBACKEND_[A-Z_]*[A-Z]\b", DOCS[doc]))  # not HAProxy's BACKEND_1
    assert named <= known_variables(), sorted(named - known_variables())


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_python_block_compiles_and_every_shell_block_is_bash(doc: str) -> None:
    for block in fenced_blocks(DOCS[doc], "python"):
        compile(block, doc, "exec")
    for block in fenced_blocks(DOCS[doc], "sh"):
        done = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, (doc, done.stderr, block)


def resolves(dotted: str) -> bool:
    """Whether ``coordinator.a.b.c`` names a module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_module_and_file_a_doc_names_exists(doc: str) -> None:
    """`coordinator.x.y` imports (or is an attribute of what does), and a path under one
    of the repository's folders is there: a module that moved leaves no stale name."""
    text = DOCS[doc]
    dotted = set(re.findall(r"`(coordinator(?:\.\w+)+)", text))
    assert dotted or doc != "README.md"
    assert not [d for d in sorted(dotted) if not resolves(d)]
    paths = set(re.findall(
        r"`((?:coordinator|backend|bench|tests|deploy|harness|bin|demo)/[\w./-]*)`", text))
    assert not [p for p in sorted(paths) if not (ROOT / p).exists()]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(text), re.M)}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_link_between_the_docs_resolves(doc: str) -> None:
    """A relative link names a file of the repository, and its ``#anchor`` a heading of
    the document it points to."""
    here = (ROOT / doc).parent
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(DOCS[doc])):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (here / path).resolve() if path else ROOT / doc
        missing = not file.exists() or (anchor != "" and file.suffix == ".md"
                                        and anchor not in anchors(file.read_text()))
        if missing:
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_no_doc_cites_a_document_users_do_not_have(doc: str) -> None:
    text = prose(DOCS[doc])  # a recorded output may name what the program printed then
    assert "DESIGN.md" not in text
    assert "BENCHMARKS.md" not in text  # now docs/benchmarks.md


def test_the_manual_is_in_docs_not_at_the_root() -> None:
    assert not (ROOT / "BENCHMARKS.md").exists()
    assert Path(ROOT / "docs" / "dashboard.png").exists()


def test_the_client_helper_section_installs_the_extra_its_imports_need() -> None:
    """Its example failed on the documented install (ModuleNotFoundError: tenacity): the
    section never said it needs the ``client`` extra."""
    import tomllib

    (install,) = doc_blocks("docs/guide.md", "Client helper")
    assert "[client]" in install
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["client"]
    assert {line.split(">")[0] for line in extra} == {"websockets", "tenacity"}
