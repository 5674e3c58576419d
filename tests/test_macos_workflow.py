"""The macOS workflow (.github/workflows/macos.yml) runs only on GitHub's macOS runners, so check
here what can go stale without anyone noticing:

* its structure, against GitHub's published schema (`check-jsonschema --builtin-schema
  vendor.github-workflows`, vendored in the tool: offline);
* every `mnv1-coreml` command in it, parsed by the real CLI;
* what the commands rely on: the model path the Xcode project references, a golden for the
  variant `validate` checks, the project and scheme `xcodebuild` builds, the test files.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import ios_checks

REPO = ios_checks.REPO
WORKFLOW = REPO / ".github" / "workflows" / "macos.yml"


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    """The maintained validator, from the venv that runs the tests."""
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "check_jsonschema"]
    cmd += ["--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_workflow_matches_githubs_schema() -> None:
    result = check_jsonschema(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_broken_workflow(tmp_path: Path) -> None:
    text = WORKFLOW.read_text("utf-8")
    broken = tmp_path / "macos.yml"
    broken.write_text(text.replace("timeout-minutes: 60", "timeout-minutes: soon", 1), "utf-8")
    result = check_jsonschema(broken)
    assert result.returncode == 1 and "timeout-minutes" in result.stdout, result.stdout


# --------------------------------------------------------------------------------------------
# The commands the workflow runs
# --------------------------------------------------------------------------------------------


def load_workflow(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text("utf-8") if text is None else text)


def commands(workflow: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(job, argv) of the simple commands of every `run:` script, `env:` expanded."""
    env = {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    found = []
    for job_name, job in workflow["jobs"].items():
        for step in job["steps"]:
            script = re.sub(r"\\\n", " ", step.get("run", ""))
            for line in script.splitlines():
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split, lexer.commenters = True, "#"
                try:
                    tokens = list(lexer)
                except ValueError:  # a line inside a multi-line quoted argument
                    continue
                current: list[str] = []
                for token in [*tokens, ";"]:
                    if token in {"&&", "||", ";", "|", "&", "(", ")"}:
                        if current:
                            found.append((job_name, current))
                        current = []
                    else:
                        current.append(
                            re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], m[0]), token)
                        )
    return found


@pytest.fixture(scope="module")
def cli() -> Any:
    """The Click group behind `mnv1-coreml`."""
    import typer

    from mnv1_coreml.cli import app

    return typer.main.get_command(app)


def parse_cli(args: list[str], group: Any) -> tuple[str, dict[str, Any]]:
    """(subcommand, parameters) as the real CLI parses `mnv1-coreml ARGS`; raises on error."""
    command = group.commands.get(args[0]) if args else None
    if command is None:
        raise LookupError(f"no subcommand {args[:1]} (have {sorted(group.commands)})")
    ctx = command.make_context(f"mnv1-coreml {args[0]}", list(args[1:]))
    return args[0], dict(ctx.params)


def golden_for(alpha: float, res: int, weights: str) -> Path | None:
    """The committed golden `validate` finds by the package's metadata, if any."""
    for manifest in sorted((REPO / "golden").glob("*/manifest.json")):
        m = json.loads(manifest.read_text("utf-8"))
        if (float(m.get("alpha", -1)), int(m.get("res", -1)), m.get("weights")) == (
            alpha,
            res,
            weights,
        ):
            return manifest.parent
    return None


def _value(param: Any) -> Any:
    return getattr(param, "value", param)


def workflow_problems(workflow: dict[str, Any], group: Any) -> list[str]:
    """What would make the workflow fail for a reason the Linux suite can see."""
    problems: list[str] = []
    converted: dict[tuple[str, Path], tuple[float, int, str]] = {}
    builds = 0
    for job, argv in commands(workflow):
        if argv[0] == "mnv1-coreml":
            try:
                name, params = parse_cli(argv[1:], group)
            except Exception as exc:  # click's UsageError, or no such subcommand
                problems.append(f"{shlex.join(argv)}: the CLI rejects it: {exc}")
                continue
            if name == "convert":
                weights = str(params["weights"])
                weights = f"random:{params['seed']}" if weights == "random" else weights
                variant = (float(params["alpha"]), int(params["res"]), weights)
                converted[job, Path(params["output"])] = variant
            elif name == "validate":
                path = Path(params["model"])
                variant = converted.get((job, path))  # the latest convert before it in the job
                if variant is None:
                    problems.append(f"validate {path}: nothing converts it")
                elif golden_for(*variant) is None:
                    problems.append(f"validate {path}: no committed golden for {variant}")
                if _value(params.get("backend")) != "coreml":
                    problems.append(f"{shlex.join(argv)}: does not run the Core ML runtime")
        elif argv[0] == "xcodebuild" and "build" in argv:
            builds += 1
            opts = dict(zip(argv[1::2], argv[2::2], strict=False))
            project, scheme = opts.get("-project", ""), opts.get("-scheme", "")
            schemes = REPO / project / "xcshareddata" / "xcschemes"
            if not (schemes / f"{scheme}.xcscheme").is_file():
                problems.append(f"xcodebuild: no shared scheme {scheme!r} in {project!r}")
        elif "pytest" in argv:
            problems += [
                f"pytest {a}: no such file"
                for a in argv
                if a.startswith("tests/") and not (REPO / a).exists()
            ]
    model = ios_checks.MODEL_RELPATH
    for job in workflow["jobs"]:
        if (job, model) not in converted:
            problems.append(f"job {job}: nothing converts the app's model {model}")
    if builds == 0:
        problems.append("no xcodebuild build")
    return problems


def test_workflow_commands_fit_the_cli_and_the_repo(cli) -> None:
    workflow = load_workflow()
    assert workflow_problems(workflow, cli) == []
    argvs = [argv for _, argv in commands(workflow)]
    app_model = str(ios_checks.MODEL_RELPATH)
    assert sum(a[:2] == ["mnv1-coreml", "convert"] and app_model in a for a in argvs) == 2
    assert sum(a[0] == "xcodebuild" and "SWIFT_VERSION=6" in a for a in argvs) == 2


def test_model_path_is_the_one_the_xcode_project_references() -> None:
    project = ios_checks.load_project(ios_checks.XCODEPROJ / "project.pbxproj")
    paths = ios_checks.resolved_paths(project).values()
    assert REPO / ios_checks.MODEL_RELPATH in paths


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("--alpha 1.0 --res 224", "--alpha 1.0 --res big", "the CLI rejects it"),
        ("--weights random -o ios_demo", "--colour red -o ios_demo", "the CLI rejects it"),
        ("mnv1-coreml validate", "mnv1-coreml verify", "no subcommand"),
        ("--backend coreml", "--backend reference", "does not run the Core ML runtime"),
        ("--weights random -o ios_demo", "--weights random --seed 7 -o ios_demo", "no committed"),
        ("-o ios_demo/MobileNetDemo/MobileNetV1", "-o MobileNetV1", "nothing converts the app"),
        ("SCHEME: MobileNetDemo", "SCHEME: MobileNet", "no shared scheme 'MobileNet'"),
        ("-q tests/test_ios_demo.py", "-q tests/test_ios.py", "pytest tests/test_ios.py: no such"),
    ],
)
def test_workflow_checker_catches_drift(cli, old: str, new: str, expected: str) -> None:
    text = WORKFLOW.read_text("utf-8")
    assert old in text, old
    problems = workflow_problems(load_workflow(text.replace(old, new, 1)), cli)
    assert any(expected in p for p in problems), problems
