"""The macOS workflow (.github/workflows/macos.yml) can only run on GitHub's macOS runners, so
check here what can go stale without anyone noticing: every `mnv1-coreml` command in it against
the real CLI (the subcommand exists, the CLI's own parser accepts the arguments, every flag is in
`mnv1-coreml <cmd> --help`), and the paths, scheme and golden it relies on against the repo.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import ios_checks

REPO = ios_checks.REPO
WORKFLOW = REPO / ".github" / "workflows" / "macos.yml"
CLI = "mnv1-coreml"


# --------------------------------------------------------------------------------------------
# Reading the workflow
# --------------------------------------------------------------------------------------------


def load_workflow(path: Path = WORKFLOW) -> dict[Any, Any]:
    return yaml.safe_load(path.read_text("utf-8"))


def triggers(workflow: dict[Any, Any]) -> Any:
    """YAML 1.1 reads the key `on` as True."""
    return workflow.get("on", workflow.get(True))


def steps(workflow: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in workflow.get("jobs", {}).items():
        for step in job.get("steps", []):
            yield job_name, step


SEPARATORS = {"&&", "||", ";", "|", "&"}


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a `run:` script: continuations joined, comments and operators split."""
    joined = re.sub(r"\\\n", " ", script)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def run_commands(workflow: dict[Any, Any]) -> list[tuple[str, list[str]]]:
    """(step name, argv) of every command the workflow runs."""
    found = []
    for _, step in steps(workflow):
        if "run" in step:
            for argv in shell_commands(step["run"]):
                found.append((step.get("name", step["run"].splitlines()[0]), argv))
    return found


def cli_args(argv: list[str]) -> list[str] | None:
    """The arguments after the program, for `mnv1-coreml ...` or `python -m mnv1_coreml ...`."""
    if argv and argv[0] == CLI:
        return argv[1:]
    is_python = len(argv) >= 3 and re.fullmatch(r"python[0-9.]*", argv[0]) is not None
    if is_python and argv[1:3] == ["-m", "mnv1_coreml"]:
        return argv[3:]
    return None


def cli_invocations(workflow: dict[Any, Any]) -> list[tuple[str, list[str]]]:
    return [
        (name, args)
        for name, argv in run_commands(workflow)
        if (args := cli_args(argv)) is not None
    ]


# --------------------------------------------------------------------------------------------
# Checking commands against the real CLI
# --------------------------------------------------------------------------------------------


def click_module() -> Any:
    try:  # typer >= 0.22 vendors click
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click
    return click


@pytest.fixture(scope="module")
def cli() -> Any:
    """The Click group behind `mnv1-coreml` (fails, as it should, while the CLI is missing)."""
    import typer

    from mnv1_coreml.cli import app

    return typer.main.get_command(app)


def help_text(subcommand: str) -> str:
    from typer.testing import CliRunner

    from mnv1_coreml.cli import app

    result = CliRunner().invoke(
        app,
        [subcommand, "--help"],
        env={"COLUMNS": "240", "TERMINAL_WIDTH": "240", "NO_COLOR": "1"},
        terminal_width=240,
    )
    assert result.exit_code == 0, result.output
    return result.output


@dataclass
class Parsed:
    subcommand: str
    params: dict[str, Any]


def cli_problems(
    args: list[str], group: Any, help_for: Any = help_text
) -> tuple[list[str], Parsed | None]:
    """Problems with one `mnv1-coreml ARGS` command; the parsed parameters when it parses."""
    shown = shlex.join([CLI, *args])
    if not args or args[0].startswith("-"):
        return [f"{shown}: no subcommand"], None
    name, rest = args[0], args[1:]
    command = group.commands.get(name)
    if command is None:
        return [f"{shown}: no subcommand {name!r} (have {sorted(group.commands)})"], None
    problems = []
    known = {
        opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")
    }
    flags = [a.split("=", 1)[0] for a in rest if a.startswith("-") and a != "-"]
    help_output = help_for(name) if flags else ""
    for flag in flags:
        if flag not in known:
            problems.append(f"{shown}: {name} has no option {flag}")
        elif not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_output):
            problems.append(f"{shown}: {flag} is not in `{CLI} {name} --help`")
    click = click_module()
    try:
        ctx = command.make_context(f"{CLI} {name}", list(rest))
    except click.ClickException as exc:
        problems.append(f"{shown}: the CLI rejects it: {exc.format_message()}")
        return problems, None
    return problems, Parsed(name, dict(ctx.params))


# --------------------------------------------------------------------------------------------
# The workflow as a whole
# --------------------------------------------------------------------------------------------


def xcodebuild_problems(argv: list[str]) -> list[str]:
    """The build step names the committed project and shared scheme, for the Simulator, unsigned."""
    problems = []
    options = {
        argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("-")
    }
    project = options.get("-project")
    scheme = options.get("-scheme")
    if project is None or not (REPO / project / "project.pbxproj").is_file():
        problems.append(f"xcodebuild -project {project}: no such Xcode project in the repo")
    elif scheme is None or not (
        REPO / project / "xcshareddata" / "xcschemes" / f"{scheme}.xcscheme"
    ).is_file():
        problems.append(f"xcodebuild -scheme {scheme}: not a shared scheme of {project}")
    if options.get("-destination") != "generic/platform=iOS Simulator":
        problems.append(f"xcodebuild -destination {options.get('-destination')!r}")
    if "CODE_SIGNING_ALLOWED=NO" not in argv:
        problems.append("xcodebuild without CODE_SIGNING_ALLOWED=NO needs a signing identity")
    if argv[-1] != "build":
        problems.append(f"xcodebuild action is {argv[-1]!r}, not build")
    return problems


def golden_for(alpha: float, res: int, weights: str) -> Path | None:
    """A committed golden for this variant (what `validate` finds by the package's metadata)."""
    for manifest in sorted((REPO / "golden").glob("*/manifest.json")):
        m = json.loads(manifest.read_text("utf-8"))
        variant = (float(m.get("alpha", -1)), int(m.get("res", -1)), m.get("weights"))
        if variant == (alpha, res, weights):
            return manifest.parent
    return None


def workflow_problems(workflow: dict[Any, Any], group: Any, help_for: Any = help_text) -> list[str]:
    problems = []
    jobs = workflow.get("jobs", {})
    if not jobs:
        return ["no jobs"]
    if not triggers(workflow):
        problems.append("no `on:` triggers")
    for name, job in jobs.items():
        if not str(job.get("runs-on", "")).startswith("macos-"):
            problems.append(f"job {name} runs on {job.get('runs-on')!r}, not macOS")
    uses = [step.get("uses", "") for _, step in steps(workflow)]
    if not any(u.startswith("actions/checkout@") for u in uses):
        problems.append("no actions/checkout step")
    setup = [
        step
        for _, step in steps(workflow)
        if step.get("uses", "").startswith("actions/setup-python@")
    ]
    if not setup or str(setup[0].get("with", {}).get("python-version")) != "3.11":
        problems.append("no actions/setup-python step with python-version 3.11")
    commands = run_commands(workflow)
    if not any(argv[:4] == ["pip", "install", "-e", ".[dev]"] for _, argv in commands):
        problems.append('no `pip install -e ".[dev]"`')

    converted: list[Path] = []
    validated: list[Path] = []
    for step_name, args in cli_invocations(workflow):
        found, parsed = cli_problems(args, group, help_for)
        problems += [f"step {step_name!r}: {p}" for p in found]
        if parsed is None:
            continue
        if parsed.subcommand == "convert":
            converted.append(Path(parsed.params["output"]))
            weights = parsed.params["weights"]
            if weights == "random":
                weights = f"random:{parsed.params['seed']}"
            alpha, res = float(parsed.params["alpha"]), int(parsed.params["res"])
            if golden_for(alpha, res, weights) is None:
                problems.append(
                    f"step {step_name!r}: no golden/ for alpha {alpha} res {res} weights "
                    f"{weights}, so validate cannot find one by metadata"
                )
        elif parsed.subcommand == "validate":
            validated.append(Path(parsed.params["model"]))
            backend = getattr(parsed.params.get("backend"), "value", parsed.params.get("backend"))
            if backend != "coreml":
                problems.append(f"step {step_name!r}: validate runs {backend!r}, not Core ML")

    model = ios_checks.MODEL_RELPATH
    if model not in converted:
        problems.append(f"no step converts the app's model to {model} (converts {converted})")
    if model not in validated:
        problems.append(f"no step validates {model} (validates {validated})")

    builds = [argv for _, argv in commands if argv and argv[0] == "xcodebuild" and "build" in argv]
    if not builds:
        problems.append("no xcodebuild build step")
    for argv in builds:
        problems += xcodebuild_problems(argv)
    for _, argv in commands:
        if "pytest" in argv:
            missing = [a for a in argv if a.startswith("tests/") and not (REPO / a).exists()]
            problems += [f"pytest {a}: no such file" for a in missing]
    return problems


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_workflow_is_valid_yaml_with_a_macos_job() -> None:
    workflow = load_workflow()
    assert workflow["jobs"]
    assert triggers(workflow)


def test_workflow_runs_the_cli() -> None:
    invoked = {args[0] for _, args in cli_invocations(load_workflow())}
    assert {"convert", "validate"} <= invoked


def test_every_cli_command_in_the_workflow_matches_the_cli(cli) -> None:
    for step_name, args in cli_invocations(load_workflow()):
        problems, parsed = cli_problems(args, cli)
        assert problems == [], step_name
        assert parsed is not None


def test_workflow_fits_the_repo(cli) -> None:
    assert workflow_problems(load_workflow(), cli) == []


def test_model_path_is_the_one_the_xcode_project_references() -> None:
    project = ios_checks.load_project(ios_checks.XCODEPROJ / "project.pbxproj")
    path = ios_checks.model_package_path(project, ios_checks.MODEL_NAME)
    assert path is not None
    assert path.relative_to(REPO) == ios_checks.MODEL_RELPATH


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("mnv1-coreml convert --alpha 1.0 --colour red", "has no option --colour"),
        ("mnv1-coreml frobnicate --alpha 1.0", "no subcommand 'frobnicate'"),
        ("mnv1-coreml validate model.mlpackage --backend metal", "the CLI rejects it"),
        ("mnv1-coreml validate --backend coreml", "the CLI rejects it"),
        ("mnv1-coreml convert --alpha wide", "the CLI rejects it"),
        ("mnv1-coreml --alpha 1.0", "no subcommand"),
    ],
)
def test_cli_checker_catches_bad_commands(cli, command: str, expected: str) -> None:
    args = cli_args(shlex.split(command))
    assert args is not None
    problems, _ = cli_problems(args, cli)
    assert any(expected in p for p in problems), problems


def test_cli_checker_requires_flags_to_be_in_the_help(cli) -> None:
    problems, _ = cli_problems(["convert", "--force"], cli, help_for=lambda _name: "no flags here")
    assert problems == [f"{CLI} convert --force: --force is not in `{CLI} convert --help`"]


def test_shell_parsing() -> None:
    script = (
        "mnv1-coreml convert --alpha 1.0 \\\n  -o 'a b.mlpackage' && echo done # comment\n"
        "python -m mnv1_coreml validate x.mlpackage --backend coreml; ls | wc -l\n"
    )
    assert shell_commands(script) == [
        ["mnv1-coreml", "convert", "--alpha", "1.0", "-o", "a b.mlpackage"],
        ["echo", "done"],
        ["python", "-m", "mnv1_coreml", "validate", "x.mlpackage", "--backend", "coreml"],
        ["ls"],
        ["wc", "-l"],
    ]
    assert cli_args(shell_commands(script)[2]) == ["validate", "x.mlpackage", "--backend", "coreml"]


def _mutated(old: str, new: str) -> dict[Any, Any]:
    source = WORKFLOW.read_text("utf-8")
    assert old in source, old
    return yaml.safe_load(source.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "-o ios_demo/MobileNetDemo/MobileNetV1.mlpackage",
            "-o MobileNetV1.mlpackage",
            "no step converts the app's model",
        ),
        ("--backend coreml", "--backend reference", "not Core ML"),
        ("--weights random", "--weights random --seed 7", "no golden/"),
        ("-scheme MobileNetDemo", "-scheme MobileNet", "not a shared scheme"),
        ("CODE_SIGNING_ALLOWED=NO ", "", "CODE_SIGNING_ALLOWED=NO"),
        ("runs-on: macos-14", "runs-on: ubuntu-latest", "not macOS"),
        ('python-version: "3.11"', 'python-version: "3.12"', "python-version 3.11"),
        ("--res 224", "--res big", "the CLI rejects it"),
    ],
)
def test_workflow_checker_catches_drift(cli, old: str, new: str, expected: str) -> None:
    problems = workflow_problems(_mutated(old, new), cli)
    assert any(expected in p for p in problems), problems
