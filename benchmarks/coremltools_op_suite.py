"""coremltools 9.0's own MIL op test suite, run against the reference interpreter on Linux.

coremltools' op tests (``coremltools/converters/mil/mil/ops/tests/iOS14..iOS18``) build one
program per case, convert it, and compare ``MLModel.predict`` with expected values that are
what the Core ML runtime produces; off macOS they stop after conversion. Here the gates are
opened (``testing_utils._IS_MACOS``, ``coremltools.models.utils._macos_version`` -> 15.0) and
``MLModel.predict`` / ``make_state`` run :class:`mnv1_coreml.mil.ReferenceModel` on the
model's package instead, so every mlprogram case (fp16 and fp32, ``PYMIL_TEST_TARGETS`` and
``INCLUDE_MIL_FP32_UNIT_TESTS``) checks our kernels against Core ML. Neural-network backends
are not run. Prints pass / fail / skip per test file and, for failures, the test classes (op
names) with the first error line; exits 1 if any case failed.

    python benchmarks/coremltools_op_suite.py                    # everything (slow)
    python benchmarks/coremltools_op_suite.py iOS17/test_scatter_gather.py -k GatherNd
    python benchmarks/coremltools_op_suite.py --json out.json -x    # unknown args: pytest
    python benchmarks/coremltools_op_suite.py --sample 10           # every 10th case: quick
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before coremltools' testing_reqs reads them (at import of the first test module).
os.environ["PYMIL_TEST_TARGETS"] = "mlprogram"
os.environ.setdefault("INCLUDE_MIL_FP32_UNIT_TESTS", "1")

import coremltools as ct  # noqa: E402
import pytest  # noqa: E402

TESTS_DIR = Path(ct.__file__).parent / "converters" / "mil" / "mil" / "ops" / "tests"
OPSET_DIRS = ("iOS14", "iOS15", "iOS16", "iOS17", "iOS18")
MACOS_VERSION = (15, 0)


def _reference(mlmodel: Any) -> Any:
    """The interpreter for ``mlmodel``'s package (saved to a temporary one if need be)."""
    from mnv1_coreml.mil import ReferenceModel

    ref = getattr(mlmodel, "_mnv1_reference", None)
    if ref is None:
        path = getattr(mlmodel, "package_path", None)
        if path is None or not os.path.isdir(path):
            path = os.path.join(tempfile.mkdtemp(prefix="mnv1_op_suite_"), "model.mlpackage")
            mlmodel.save(path)
        ref = ReferenceModel.load(path)
        mlmodel._mnv1_reference = ref
    return ref


#: Predictions the interpreter made (a run whose cases all skip before predicting checks nothing).
PREDICTIONS = [0]


def _predict(self: Any, data: Any, state: Any = None) -> Any:
    if self.get_spec().WhichOneof("Type") != "mlProgram":  # a test's own neuralnetwork model
        pytest.skip("neural network model: not an ML Program, not run")
    PREDICTIONS[0] += 1  # counts attempts: a model the interpreter cannot load is its failure
    ref = _reference(self)
    return ref.predict(data) if state is None else ref.predict(data, state=state)


def _make_state(self: Any) -> dict[str, Any]:
    PREDICTIONS[0] += 1  # the interpreter loads the model here: its verdict, not coremltools'
    return _reference(self).make_state()


def install() -> None:
    """Open coremltools' macOS-only prediction paths onto the interpreter (this process)."""
    import coremltools.converters.mil.testing_utils as testing_utils
    import coremltools.models.utils as ct_utils

    testing_utils._IS_MACOS = True
    ct_utils._macos_version = lambda: MACOS_VERSION
    ct.models.MLModel.predict = _predict
    ct.models.MLModel.make_state = _make_state


_UNSUPPORTED = re.compile(r"unsupported op '([^']+)'")


class Collector:
    """pytest plugin: outcomes per test file and the failures, by test class."""

    def __init__(self) -> None:
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter)
        self.failures: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)

    sample = 1

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        """``--sample N``: every N-th case of each file (a quick estimate of the full run)."""
        if self.sample > 1:
            seen: collections.Counter[str] = collections.Counter()
            kept = []
            for item in items:
                key = item.nodeid.split("::")[0]
                if seen[key] % self.sample == 0:
                    kept.append(item)
                seen[key] += 1
            items[:] = kept

    def pytest_runtest_setup(self, item: Any) -> None:
        self._predictions_before = PREDICTIONS[0]

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when != "call" and not (report.when == "setup" and not report.passed):
            return
        predicted = PREDICTIONS[0] > getattr(self, "_predictions_before", PREDICTIONS[0])
        path, _, rest = report.nodeid.partition("::")
        key = _short(path)
        if report.passed:
            outcome = "xpassed" if hasattr(report, "wasxfail") else "passed"
        elif report.skipped:
            outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        else:
            # "failed early": before the interpreter ran (building or converting the program
            # failed in coremltools itself, e.g. under this NumPy): not an interpreter verdict
            err = _first_error(report)
            outcome = "failed" if predicted or err.startswith("UnsupportedOpError") else "early"
            self.failures[key].append((rest, err if outcome == "failed" else f"[early] {err}"))
        self.counts[key][outcome] += 1

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            key = _short(report.nodeid)
            self.counts[key]["failed"] += 1
            self.failures[key].append(("<collection>", _first_error(report)))

    def summary(self) -> dict[str, Any]:
        files = {k: dict(v) for k, v in sorted(self.counts.items())}
        by_dir: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for key, counts in self.counts.items():
            by_dir[key.split("/")[0]].update(counts)
        failing: dict[str, dict[str, int]] = collections.defaultdict(collections.Counter)
        for key, items in self.failures.items():
            for rest, err in items:
                failing[f"{key}::{rest.split('::')[0]}"][err] += 1
        return {"files": files, "dirs": {k: dict(v) for k, v in sorted(by_dir.items())},
                "failing": {k: dict(v) for k, v in sorted(failing.items())},
                "predictions": PREDICTIONS[0],
                "failed_ids": sorted(f"{k}::{r}" for k, items in self.failures.items()
                                     for r, e in items if not e.startswith("[early]")),
                "early_ids": sorted(f"{k}::{r}" for k, items in self.failures.items()
                                    for r, e in items if e.startswith("[early]"))}


def _short(nodeid: str) -> str:
    parts = Path(nodeid.split("::")[0]).parts
    for i, part in enumerate(parts):
        if part in OPSET_DIRS:
            return "/".join(parts[i:])
    return "/".join(parts[-2:])


def _first_error(report: Any) -> str:
    """One line saying why: the op the interpreter lacks, or the first ``E`` line."""
    text = str(report.longrepr)
    match = _UNSUPPORTED.search(text)
    if match:
        return f"UnsupportedOpError {match.group(1)}"
    for line in text.splitlines():
        if line.startswith("E "):
            return line[1:].strip()[:160]
    return text.strip().splitlines()[-1][:160] if text.strip() else "?"


def run(targets: list[str], keyword: str | None = None, extra: list[str] | None = None,
        sample: int = 1) -> tuple[int, dict[str, Any]]:
    """Run the selected test files (paths relative to the suite's ``tests`` dir) in this
    process; returns pytest's exit code and :meth:`Collector.summary`."""
    install()
    paths = [str(TESTS_DIR / t) for t in targets]
    ini = Path(tempfile.mkdtemp(prefix="mnv1_op_suite_")) / "pytest.ini"
    ini.write_text("[pytest]\n")  # not this project's pytest settings
    args = [*paths, "-c", str(ini), "-p", "no:cacheprovider", "-q", "--no-header", "-rN",
            "-W", "ignore::DeprecationWarning", "--rootdir", str(TESTS_DIR),
            *(["-k", keyword] if keyword else []), *(extra or [])]
    collector = Collector()
    collector.sample = sample
    code = pytest.main(args, plugins=[collector])
    return int(code), collector.summary()


def default_targets() -> list[str]:
    return [f"{d}/{p.name}" for d in OPSET_DIRS for p in sorted((TESTS_DIR / d).glob("test_*.py"))]


def _print(summary: dict[str, Any]) -> None:
    cols = ("passed", "failed", "early", "skipped", "xfailed", "xpassed")
    print(f"\n{'file':48s}" + "".join(f"{c:>9s}" for c in cols))
    for name, counts in [*summary["files"].items(), *[("TOTAL " + k, v) for k, v in
                                                      summary["dirs"].items()]]:
        print(f"{name:48s}" + "".join(f"{counts.get(c, 0):9d}" for c in cols))
    if summary["failing"]:
        print("\nfailing test classes (cases: first error line):")
        for cls, errors in summary["failing"].items():
            print(f"  {cls}")
            for err, n in sorted(errors.items(), key=lambda kv: -kv[1]):
                print(f"      {n:4d}  {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="e.g. iOS17/test_scatter_gather.py "
                        "(default: every test file of iOS14..iOS18)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--sample", type=int, default=1,
                        help="run every N-th case of each file only (an estimate)")
    args, extra = parser.parse_known_args(argv)  # the rest goes to pytest
    extra = [a for a in extra if a != "--"]
    start = time.perf_counter()
    code, summary = run(args.targets or default_targets(), args.keyword, extra, args.sample)
    _print(summary)
    print(f"\n{summary['predictions']} predictions by the interpreter, "
          f"{time.perf_counter() - start:.0f} s, pytest exit code {code}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    # pytest's 1 ("some failed") may be early failures only, which are not ours
    return 0 if code in (0, 1, 5) and not summary["failed_ids"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
