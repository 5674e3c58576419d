"""Linux checks of the iOS demo app (ios_demo/): what would break it, without Xcode.

Each check runs on the real app and, to show that it can fail, on a broken copy of the input.
The model comes from the project's own `convert` (the session's `small_packages`): a convert
that fails, or writes something the app does not expect, fails these tests.
"""

from __future__ import annotations

import plistlib
import shutil
from pathlib import Path

import pytest

from . import ios_checks as checks

PBXPROJ = checks.XCODEPROJ / "project.pbxproj"
PRIVACY = checks.APP_DIR / "PrivacyInfo.xcprivacy"


@pytest.fixture(scope="module")
def demo(small_packages: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ios_demo/ with a converted model where the project expects it."""
    root = tmp_path_factory.mktemp("ios_demo")
    shutil.copytree(
        checks.IOS_DEMO, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.mlpackage")
    )
    model = root / checks.MODEL_RELPATH.relative_to("ios_demo")
    shutil.copytree(small_packages["fp16"], model)
    return root


@pytest.fixture(scope="module")
def project(demo: Path) -> checks.Project:
    return checks.load_project(demo / checks.XCODEPROJ.name / "project.pbxproj")


@pytest.fixture(scope="module")
def trees() -> dict:
    return checks.parse_all_swift()


@pytest.fixture(scope="module")
def spec(demo: Path) -> checks.ModelSpec:
    return checks.load_model_spec(demo / checks.MODEL_RELPATH.relative_to("ios_demo"))


def mutated(project: checks.Project, tmp_path: Path, old: str, new: str, count: int = 1):
    """The project with `old` replaced in its text, read against the same files."""
    assert project.text.count(old) >= count, old
    path = tmp_path / checks.XCODEPROJ.name / "project.pbxproj"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(project.text.replace(old, new, count), "utf-8")
    return checks.load_project(path, source_root=project.source_root)


def without_line(project: checks.Project, tmp_path: Path, contains: str) -> checks.Project:
    line = next(ln for ln in project.text.splitlines(keepends=True) if contains in ln)
    return mutated(project, tmp_path, line, "")


def snippet(source: str) -> dict:
    return {"Snippet.swift": checks.parse_swift(source)}


# --------------------------------------------------------------------------------------------
# Swift
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", checks.swift_files(), ids=lambda p: p.name)
def test_swift_file_parses(path: Path) -> None:
    assert checks.syntax_problems(checks.parse_swift(path.read_bytes())) == []


@pytest.mark.parametrize(
    "source",
    [
        "struct A { func f() { let x = [1, 2 }",
        "final class B { var x: Int = }",
        "func c() { if let x = y { print(x) }",
    ],
)
def test_syntax_checker_catches_broken_swift(source: str) -> None:
    assert checks.syntax_problems(checks.parse_swift(source))


# --------------------------------------------------------------------------------------------
# The Swift code against the model `convert` writes
# --------------------------------------------------------------------------------------------


def test_converted_model_is_what_vision_needs(spec: checks.ModelSpec) -> None:
    assert checks.model_spec_problems(spec) == []
    assert spec.inputs == {"image": (128, 128)}
    assert spec.class_count == 1000


def test_swift_code_matches_the_converted_model(trees, spec) -> None:
    assumptions = checks.model_assumptions(trees)
    assert set(assumptions.classes) == {checks.MODEL_NAME}
    assert checks.contract_problems(assumptions, spec, checks.MODEL_NAME) == []


def test_contract_checker_catches_wrong_assumptions(spec) -> None:
    source = """
    func load(_ c: MLModelConfiguration) throws {
        let model = try MobileNetV2(configuration: c).model
        let input = model.modelDescription.inputDescriptionsByName["input_1"]
        let output = model.modelDescription.outputDescriptionsByName["classLabelProbs"]
        let probabilities = result.featureValue(for: "probabilities")
        vision.inputImageFeatureName = "data"
    }
    """
    assumptions = checks.model_assumptions(snippet(source))
    problems = "\n".join(checks.contract_problems(assumptions, spec, checks.MODEL_NAME))
    for expected in (
        "never uses MobileNetV1",
        "MobileNetV2 is not generated",
        "input 'input_1'",
        "feature 'probabilities'",
        "input 'data'",
        "imageConstraint",
        "classLabels",
    ):
        assert expected in problems
    assert "output 'classLabelProbs'" not in problems  # that output exists


def test_model_checker_catches_a_model_that_is_not_a_classifier() -> None:
    broken = checks.ModelSpec(
        inputs={"image": (128, 128), "mask": None},
        outputs={"var_1": "multiArrayType"},
        predicted_feature="",
        predicted_probabilities="",
        class_count=0,
    )
    assert len(checks.model_spec_problems(broken)) == 4


def test_real_model_if_generated(trees) -> None:
    """The package converted into the working tree (the macOS workflow makes one)."""
    model = checks.REPO / checks.MODEL_RELPATH
    if not model.is_dir():
        pytest.skip(f"{checks.MODEL_RELPATH} not generated (see ios_demo/README.md)")
    real = checks.load_model_spec(model)
    assert checks.model_spec_problems(real) == []
    assumptions = checks.model_assumptions(trees)
    assert checks.contract_problems(assumptions, real, checks.MODEL_NAME) == []


# --------------------------------------------------------------------------------------------
# The Xcode project
# --------------------------------------------------------------------------------------------


def test_object_ids_are_unique_and_defined(project) -> None:
    assert checks.object_id_problems(project.text) == []


def test_id_checker_catches_duplicates_and_dangling_ids(project) -> None:
    line = next(ln for ln in project.text.splitlines(True) if "/* Classifier.swift */ = {" in ln)
    doubled = project.text.replace(line, line + line)
    assert any("defined 2 times" in p for p in checks.object_id_problems(doubled))
    dangling = project.text.replace(line, "")
    assert any("refers to no object" in p for p in checks.object_id_problems(dangling))


def test_file_references_resolve_including_the_model(project) -> None:
    assert checks.file_reference_problems(project) == []


def test_reference_checker_catches_a_missing_file(project, tmp_path: Path) -> None:
    broken = mutated(project, tmp_path, "path = Classifier.swift;", "path = Classifer.swift;")
    assert checks.file_reference_problems(broken) == [
        f"Classifer.swift -> {project.source_root}/MobileNetDemo/Classification/Classifer.swift"
        " does not exist"
    ]


def test_the_committed_tree_needs_the_generated_model() -> None:
    bare = checks.load_project(PBXPROJ)
    if (checks.REPO / checks.MODEL_RELPATH).exists():
        pytest.skip("a model is generated in the working tree")
    assert any("MobileNetV1.mlpackage" in p for p in checks.file_reference_problems(bare))


def test_every_file_is_compiled_or_copied(project, demo: Path) -> None:
    app_dir = demo / checks.APP_DIR.name
    assert checks.membership_problems(project, app_dir) == []
    assert (app_dir / "PrivacyInfo.xcprivacy").is_file()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/* ModelStore.swift in Sources */,", "Classification/ModelStore.swift is not compiled"),
        ("/* PrivacyInfo.xcprivacy in Resources */,", "PrivacyInfo.xcprivacy is not in the Res"),
        ("/* Assets.xcassets in Resources */,", "Assets.xcassets is not in the Resources phase"),
        ("/* MobileNetV1.mlpackage in Sources */,", "MobileNetV1.mlpackage is not in the Sources"),
    ],
)
def test_membership_checker_catches_a_file_left_out(
    project, demo: Path, tmp_path: Path, line: str, expected: str
) -> None:
    broken = without_line(project, tmp_path, line)
    problems = checks.membership_problems(broken, demo / checks.APP_DIR.name)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_membership_checker_catches_a_new_file_not_in_the_project(project, demo, tmp_path) -> None:
    app_dir = tmp_path / checks.APP_DIR.name
    shutil.copytree(demo / checks.APP_DIR.name, app_dir, symlinks=True)
    (app_dir / "Views" / "NewView.swift").write_text("struct NewView {}\n", "utf-8")
    moved = checks.load_project(demo / checks.XCODEPROJ.name / "project.pbxproj", tmp_path)
    assert checks.membership_problems(moved, app_dir) == ["Views/NewView.swift is not compiled"]


def test_info_plist_has_what_the_app_needs(project, trees) -> None:
    assert checks.info_plist_problems(project, trees) == []
    info = plistlib.loads((checks.APP_DIR / "Info.plist").read_bytes())
    assert info["UIFileSharingEnabled"] is True
    assert info["LSSupportsOpeningDocumentsInPlace"] is True


def test_info_plist_checker_catches_missing_and_forbidden_keys(project, trees, tmp_path) -> None:
    no_camera = without_line(project, tmp_path, "INFOPLIST_KEY_NSCameraUsageDescription")
    assert checks.info_plist_problems(no_camera, trees) == [
        "Debug: Info.plist has no NSCameraUsageDescription (the camera prompt (without it iOS "
        "kills the app))"
    ]
    photos = mutated(
        project,
        tmp_path,
        "INFOPLIST_KEY_NSCameraUsageDescription",
        'INFOPLIST_KEY_NSPhotoLibraryUsageDescription = "x";\n\t\t\t\t'
        "INFOPLIST_KEY_NSCameraUsageDescription",
    )
    assert checks.info_plist_problems(photos, trees) == [
        "Debug: Info.plist has NSPhotoLibraryUsageDescription"
    ]


def test_info_plist_checker_reads_the_plist_file(project, trees, tmp_path) -> None:
    root = tmp_path / "root"
    shutil.copytree(project.source_root / checks.APP_DIR.name, root / checks.APP_DIR.name)
    plist = root / checks.APP_DIR.name / "Info.plist"
    info = plistlib.loads(plist.read_bytes())
    del info["UIFileSharingEnabled"]
    info["UTImportedTypeDeclarations"].pop()
    plist.write_bytes(plistlib.dumps(info))
    moved = checks.load_project(PBXPROJ, source_root=root)
    problems = checks.info_plist_problems(moved, trees)
    assert sum("no UIFileSharingEnabled" in p for p in problems) == 2  # Debug and Release
    assert sum("'com.apple.coreml.model'" in p for p in problems) == 2


def test_privacy_manifest_declares_the_apis_the_app_uses(trees) -> None:
    assert checks.privacy_manifest_problems(PRIVACY, trees) == []
    data = plistlib.loads(PRIVACY.read_bytes())
    [entry] = data["NSPrivacyAccessedAPITypes"]
    assert entry["NSPrivacyAccessedAPIType"] == "NSPrivacyAccessedAPICategoryFileTimestamp"
    assert entry["NSPrivacyAccessedAPITypeReasons"] == ["3B52.1"]  # user-picked files


def test_privacy_checker_catches_undeclared_apis_and_bad_reasons(trees, tmp_path) -> None:
    data = plistlib.loads(PRIVACY.read_bytes())
    data["NSPrivacyAccessedAPITypes"][0]["NSPrivacyAccessedAPITypeReasons"] = ["XXXX.1"]
    manifest = tmp_path / "PrivacyInfo.xcprivacy"
    manifest.write_bytes(plistlib.dumps(data))
    assert any("XXXX.1" in p for p in checks.privacy_manifest_problems(manifest, trees))

    uses_defaults = {**trees, **snippet('let d = UserDefaults.standard.bool(forKey: "k")')}
    problems = checks.privacy_manifest_problems(PRIVACY, uses_defaults)
    assert problems == [
        "the app uses UserDefaults but PrivacyInfo.xcprivacy has no "
        "NSPrivacyAccessedAPICategoryUserDefaults"
    ]


def test_deployment_target(project) -> None:
    assert checks.deployment_target_problems(project) == []


def test_deployment_target_checker_catches_drift(project, tmp_path: Path) -> None:
    setting = "IPHONEOS_DEPLOYMENT_TARGET = 17.0;"
    drift = mutated(project, tmp_path, setting, "IPHONEOS_DEPLOYMENT_TARGET = 18.0;")
    assert "differs" in checks.deployment_target_problems(drift)[0]
    low = mutated(project, tmp_path, setting, "IPHONEOS_DEPLOYMENT_TARGET = 16.0;", 4)
    assert checks.deployment_target_problems(low) == [
        "IPHONEOS_DEPLOYMENT_TARGET 16.0 is below 17.0"
    ]


def test_strict_concurrency_is_on(project) -> None:
    settings = checks.build_settings(project)
    assert {c: s.get("SWIFT_STRICT_CONCURRENCY") for c, s in settings.items()} == {
        "Debug": "complete",
        "Release": "complete",
    }


def test_shared_scheme_builds_the_app(project) -> None:
    assert checks.scheme_problems(checks.SCHEME, project) == []


def test_scheme_checker_catches_a_wrong_target(project, tmp_path: Path) -> None:
    scheme = tmp_path / checks.SCHEME.name
    text = checks.SCHEME.read_text("utf-8")
    scheme.write_text(text.replace('BlueprintIdentifier = "', 'BlueprintIdentifier = "0'))
    assert checks.scheme_problems(scheme, project)
