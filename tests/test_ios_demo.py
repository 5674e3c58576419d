"""Linux checks of the iOS demo app (ios_demo/): what can be verified without Xcode.

Each check runs against the real project and, to show it can fail, against a broken input
(a Swift snippet, a mutated project.pbxproj or scheme). The checkers live in ios_checks.py.

The project references ios_demo/MobileNetDemo/MobileNetV1.mlpackage, which is generated, not
committed. The session fixture copies ios_demo/ into a temporary directory and converts a small
model (alpha 0.25, 128 x 128, random weights) to the same relative path there, so every file
reference resolves without touching (or leaving behind) a model in the working tree.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from . import ios_checks as checks

TEST_ALPHA, TEST_RES = 0.25, 128


class CliFallbackWarning(RuntimeWarning):
    """The mnv1-coreml CLI is missing or failed; the test model was converted directly."""


# --------------------------------------------------------------------------------------------
# The test model
# --------------------------------------------------------------------------------------------


def cli_available() -> bool:
    return (
        importlib.util.find_spec("mnv1_coreml.cli") is not None
        and importlib.util.find_spec("mnv1_coreml.__main__") is not None
    )


def convert_with_cli(dest: Path) -> subprocess.CompletedProcess[str]:
    """What users run (see ios_demo/README.md), with the small test variant."""
    cmd = [
        sys.executable, "-m", "mnv1_coreml", "convert",
        "--alpha", str(TEST_ALPHA), "--res", str(TEST_RES), "--weights", "random",
        "--no-validate", "-o", str(dest), "--force",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)


def convert_directly(dest: Path) -> None:
    """The converter's contract, by hand: used only while the CLI is missing or broken."""
    import torch

    from mnv1_coreml.labels import imagenet_labels
    from mnv1_coreml.model import MobileNetConfig, MobileNetV1

    ct = checks.coremltools()
    net = MobileNetV1(MobileNetConfig(alpha=TEST_ALPHA, res=TEST_RES)).eval()

    class Probabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(x), dim=1)

    with torch.no_grad():
        traced = torch.jit.trace(Probabilities(net), torch.zeros(1, 3, TEST_RES, TEST_RES))
    mean, std = (0.485, 0.456, 0.406), 0.226
    mlmodel = ct.convert(
        traced,
        inputs=[
            ct.ImageType(
                name="image",
                shape=(1, 3, TEST_RES, TEST_RES),
                scale=1 / (255 * std),
                bias=[-m / std for m in mean],
                color_layout=ct.colorlayout.RGB,
            )
        ],
        classifier_config=ct.ClassifierConfig(list(imagenet_labels())),
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
        skip_model_load=True,
    )
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, "classLabel_probs", "classLabelProbs")
    mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)
    meta = {
        "com.apple.coreml.model.preview.type": "imageClassifier",
        "mnv1.alpha": repr(TEST_ALPHA),
        "mnv1.resolution": str(TEST_RES),
        "mnv1.weights": "random:0",
        "mnv1.weights_source": "random",
        "mnv1.precision": "fp16",
    }
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = value
    mlmodel.save(str(dest))


def convert_test_model(dest: Path) -> str:
    """Converts with the real CLI when it works; says which way it went."""
    if cli_available():
        proc = convert_with_cli(dest)
        if proc.returncode == 0 and dest.is_dir():
            return "cli"
        warnings.warn(
            CliFallbackWarning(
                f"mnv1-coreml convert failed (exit {proc.returncode}); converting directly. "
                f"stderr: {proc.stderr.strip()[-600:]}"
            ),
            stacklevel=2,
        )
    else:
        warnings.warn(
            CliFallbackWarning("mnv1_coreml.cli is not there yet; converting directly"),
            stacklevel=2,
        )
    if dest.exists():
        shutil.rmtree(dest)
    convert_directly(dest)
    return "fallback"


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ios_demo/ with a freshly converted model where the project expects it."""
    root = tmp_path_factory.mktemp("ios_demo")
    shutil.copytree(
        checks.IOS_DEMO,
        root,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("*.mlpackage", "xcuserdata", "build", "DerivedData"),
    )
    model = root / checks.MODEL_RELPATH.relative_to("ios_demo")
    convert_test_model(model)
    assert model.is_dir()
    return root


@pytest.fixture(scope="session")
def project(demo: Path) -> checks.Project:
    return checks.load_project(demo / checks.XCODEPROJ.name / "project.pbxproj")


@pytest.fixture(scope="session")
def trees() -> dict[str, object]:
    return checks.parse_all_swift(checks.swift_files())


@pytest.fixture(scope="session")
def spec(demo: Path) -> checks.ModelSpec:
    return checks.load_model_spec(demo / checks.MODEL_RELPATH.relative_to("ios_demo"))


def snippet(source: str) -> dict[str, object]:
    return {"Snippet.swift": checks.parse_swift(source)}


def mutated(project: checks.Project, tmp_path: Path, old: str, new: str, count: int = 1):
    """The project with `old` replaced by `new` in its text, read against the same files."""
    assert project.text.count(old) >= count, old
    path = tmp_path / checks.XCODEPROJ.name / "project.pbxproj"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(project.text.replace(old, new, count), "utf-8")
    return checks.load_project(path, source_root=project.source_root)


def app_dir(project: checks.Project) -> Path:
    return project.source_root / checks.APP_DIR.name


def object_block(text: str, comment: str) -> str:
    """The text of one multi-line object definition, e.g. `/* Sources */ = {...};`."""
    start = text.index(f" /* {comment} */ = {{\n")
    start = text.rindex("\n", 0, start) + 1
    end = text.index("\n\t\t};\n", start) + len("\n\t\t};\n")
    return text[start:end]


# --------------------------------------------------------------------------------------------
# Swift syntax
# --------------------------------------------------------------------------------------------

SWIFT_FILES = checks.swift_files()


def test_the_app_has_swift_sources() -> None:
    names = {p.name for p in SWIFT_FILES}
    assert {"MobileNetDemoApp.swift", "CameraController.swift", "Classifier.swift"} <= names


@pytest.mark.parametrize("path", SWIFT_FILES, ids=lambda p: p.name)
def test_swift_file_parses_without_errors(path: Path) -> None:
    assert checks.syntax_problems(checks.parse_swift(path.read_bytes())) == []


@pytest.mark.parametrize(
    "source",
    [
        "struct A { func f() { let x = [1, 2 }",  # unbalanced bracket
        "final class B { var x: Int = }",  # missing expression
        "func c() { if let x = y { print(x) }",  # missing closing brace
        "let d = VNCoreMLRequest(model: m) { request, error in ) }",
    ],
)
def test_syntax_checker_catches_broken_swift(source: str) -> None:
    assert checks.syntax_problems(checks.parse_swift(source))


# --------------------------------------------------------------------------------------------
# Swift policy, by tree-sitter query
# --------------------------------------------------------------------------------------------


def test_vision_center_crops(trees) -> None:
    assert checks.crop_option_problems(trees) == []


@pytest.mark.parametrize(
    "source",
    [
        "func f() { request.imageCropAndScaleOption = .scaleFill }",
        "func f() { request.imageCropAndScaleOption = VNImageCropAndScaleOption.scaleFit }",
        # Not set at all: Vision's default happens to be centerCrop, but the app must say so.
        "func f() { let request = VNCoreMLRequest(model: m) }",
    ],
)
def test_crop_checker_catches_other_options(source: str) -> None:
    assert checks.crop_option_problems(snippet(source))


def test_crop_checker_accepts_the_qualified_spelling() -> None:
    source = "func f() { r.imageCropAndScaleOption = VNImageCropAndScaleOption.centerCrop }"
    assert checks.crop_option_problems(snippet(source)) == []


def test_no_main_sync(trees) -> None:
    assert checks.main_sync_problems(trees) == []


def test_main_sync_checker_catches_it() -> None:
    source = """
    func f() {
        DispatchQueue.main.sync { label = "x" }
        DispatchQueue.main.sync(execute: work)
        DispatchQueue.main.async { label = "fine" }
    }
    """
    assert len(checks.main_sync_problems(snippet(source))) == 2


def test_capture_delegate_signature(trees) -> None:
    assert checks.capture_delegate_problems(trees) == []


@pytest.mark.parametrize(
    "source",
    [
        # Swift 3's name: compiles, and AVFoundation never calls it.
        """
        final class C: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate {
            func captureOutput(_ output: AVCaptureOutput,
                               didOutputSampleBuffer sampleBuffer: CMSampleBuffer,
                               from connection: AVCaptureConnection) {}
        }
        """,
        # Right signature, but the type does not adopt the delegate protocol.
        """
        final class C: NSObject {
            func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer,
                               from connection: AVCaptureConnection) {}
        }
        """,
        "final class C: NSObject {}",
    ],
)
def test_capture_delegate_checker_catches_wrong_signatures(source: str) -> None:
    assert checks.capture_delegate_problems(snippet(source))


def test_start_running_is_off_the_main_thread(trees) -> None:
    assert checks.start_running_problems(trees) == []


def test_start_running_checker_catches_main_thread_start() -> None:
    source = """
    final class C {
        func start() { session.startRunning() }
        func stop() { queue.async { self.session.stopRunning() } }
    }
    """
    assert checks.start_running_problems(snippet(source))


def test_one_request_in_flight_by_semaphore(trees) -> None:
    assert checks.in_flight_problems(trees) == []


def test_in_flight_checker_rejects_a_bool_flag() -> None:
    source = """
    final class Classifier {
        private var isBusy = false
        func classify() {
            guard !isBusy else { return }
            isBusy = true
        }
    }
    """
    assert len(checks.in_flight_problems(snippet(source))) == 2


def test_in_flight_checker_rejects_a_blocking_wait() -> None:
    source = """
    let inFlight = DispatchSemaphore(value: 1)
    func classify() { inFlight.wait() }
    """
    assert checks.in_flight_problems(snippet(source)) == [
        "nothing takes the semaphore with wait(timeout: .now()) to drop frames"
    ]


def test_capture_output_settings(trees) -> None:
    assert checks.capture_settings_problems(trees) == []


def test_capture_settings_checker_catches_queued_frames() -> None:
    source = """
    func configure() {
        output.alwaysDiscardsLateVideoFrames = false
        let format = kCVPixelFormatType_420YpCbCr8BiPlanarFullRange
        output.videoSettings = [kCVPixelBufferPixelFormatTypeKey as String: format]
    }
    """
    assert len(checks.capture_settings_problems(snippet(source))) == 2


def test_imported_types_are_declared_in_info_plist(trees) -> None:
    assert checks.imported_type_problems(trees, checks.APP_DIR / "Info.plist") == []


def test_imported_type_checker_catches_undeclared_types() -> None:
    source = 'let t = UTType(importedAs: "com.example.undeclared", conformingTo: .data)'
    problems = checks.imported_type_problems(snippet(source), checks.APP_DIR / "Info.plist")
    assert problems and "com.example.undeclared" in problems[0]


# --------------------------------------------------------------------------------------------
# The Xcode project
# --------------------------------------------------------------------------------------------


def test_object_ids_are_unique_and_resolve(project) -> None:
    assert checks.object_id_problems(project.text) == []
    raw = checks.raw_objects(project.text)
    assert len(raw.definitions) == len(project.pbx.objects.get_keys())


def test_id_checker_catches_a_duplicated_object(project) -> None:
    block = object_block(project.text, "Sources")
    text = project.text.replace(block, block + block)
    problems = checks.object_id_problems(text)
    assert len(problems) == 1 and "defined 2 times" in problems[0]


def test_id_checker_catches_dangling_and_malformed_ids(project) -> None:
    target = project.target(checks.TARGET).get_id()
    listed = f"\t\t\t\t{target} /* MobileNetDemo */,"
    text = project.text.replace(listed, "\t\t\t\t0123456789ABCDEF01234567,")
    assert any("refers to no object" in p for p in checks.object_id_problems(text))
    lower = project.text.replace(target, target.lower())
    assert any("24 uppercase hex" in p for p in checks.object_id_problems(lower))


def test_file_references_resolve_including_the_model(project) -> None:
    assert checks.file_reference_problems(project) == []
    model = checks.model_package_path(project, checks.MODEL_NAME)
    assert model == project.source_root / checks.MODEL_RELPATH.relative_to("ios_demo")
    assert model.is_dir()


def test_reference_checker_catches_a_missing_file(project, tmp_path: Path) -> None:
    broken = mutated(project, tmp_path, "path = Classifier.swift;", "path = Classifer.swift;")
    problems = checks.file_reference_problems(broken)
    assert len(problems) == 1 and "Classifer.swift" in problems[0]


def test_reference_checker_needs_the_generated_model() -> None:
    """The committed tree has no model: the project is unbuildable until it is converted."""
    pbxproj = checks.XCODEPROJ / "project.pbxproj"
    bare = checks.load_project(pbxproj, source_root=Path("/nonexistent"))
    problems = checks.file_reference_problems(bare)
    assert any("MobileNetV1.mlpackage" in p for p in problems)


def test_reference_checker_resolves_source_trees(project, tmp_path: Path) -> None:
    old = 'path = AppModel.swift; sourceTree = "<group>";'
    new = "path = MobileNetDemo/App/AppModel.swift; sourceTree = SOURCE_ROOT;"
    fine = mutated(project, tmp_path, old, new)
    assert checks.file_reference_problems(fine) == []
    wrong = mutated(project, tmp_path, old, "path = App/AppModel.swift; sourceTree = SOURCE_ROOT;")
    assert len(checks.file_reference_problems(wrong)) == 1
    group = mutated(project, tmp_path, "path = App;", "path = Application;")
    assert len(checks.file_reference_problems(group)) == 3  # the folder and its two files


def test_every_swift_file_is_compiled(project) -> None:
    assert checks.swift_source_problems(project, checks.TARGET, app_dir(project)) == []


def test_swift_source_checker_catches_a_file_left_out(project, tmp_path: Path) -> None:
    listed = "/* ModelStore.swift in Sources */,"
    line = next(ln for ln in project.text.splitlines() if listed in ln)
    broken = mutated(project, tmp_path, line + "\n", "")
    problems = checks.swift_source_problems(broken, checks.TARGET, app_dir(broken))
    assert len(problems) == 1 and "ModelStore.swift" in problems[0]


def test_model_package_is_a_source(project) -> None:
    assert checks.model_reference_problems(project, checks.TARGET, checks.MODEL_NAME) == []


def test_model_checker_catches_wrong_type_and_phase(project, tmp_path: Path) -> None:
    wrong_type = mutated(
        project, tmp_path, "lastKnownFileType = folder.mlpackage;", "lastKnownFileType = folder;"
    )
    assert checks.model_reference_problems(wrong_type, checks.TARGET, checks.MODEL_NAME)

    sources = object_block(project.text, "Sources")
    resources = object_block(project.text, "Resources")
    model_line = next(ln for ln in sources.splitlines() if "MobileNetV1.mlpackage in Sources" in ln)
    moved_text = project.text.replace(sources, sources.replace(model_line + "\n", ""))
    moved_text = moved_text.replace(
        resources, resources.replace("\t\t\tfiles = (\n", "\t\t\tfiles = (\n" + model_line + "\n")
    )
    path = tmp_path / "moved" / checks.XCODEPROJ.name / "project.pbxproj"
    path.parent.mkdir(parents=True)
    path.write_text(moved_text, "utf-8")
    moved = checks.load_project(path, source_root=project.source_root)
    problems = checks.model_reference_problems(moved, checks.TARGET, checks.MODEL_NAME)
    assert len(problems) == 2  # not a source, and copied as a resource


def test_privacy_strings_in_every_configuration(project) -> None:
    assert checks.info_plist_problems(project, checks.TARGET) == []
    settings = checks.effective_settings(project, checks.TARGET)
    assert set(settings) == {"Debug", "Release"}


def test_info_plist_checker_catches_a_missing_key(project, tmp_path: Path) -> None:
    key = "INFOPLIST_KEY_NSPhotoLibraryUsageDescription"
    line = next(ln for ln in project.text.splitlines() if key in ln)
    broken = mutated(project, tmp_path, line + "\n", "")  # only the first (one configuration)
    problems = checks.info_plist_problems(broken, checks.TARGET)
    assert len(problems) == 1 and key in problems[0]


def test_deployment_target_is_consistent_and_recent(project) -> None:
    assert checks.deployment_target_problems(project, checks.TARGET) == []


def test_deployment_target_checker_catches_drift(project, tmp_path: Path) -> None:
    setting = "IPHONEOS_DEPLOYMENT_TARGET = 17.0;"
    drift = mutated(project, tmp_path, setting, "IPHONEOS_DEPLOYMENT_TARGET = 16.4;")
    problems = checks.deployment_target_problems(drift, checks.TARGET)
    assert any("differs" in p for p in problems)
    old = mutated(project, tmp_path, setting, "IPHONEOS_DEPLOYMENT_TARGET = 16.0;", 4)
    assert any("below 17.0" in p for p in checks.deployment_target_problems(old, checks.TARGET))


def test_swift_5_mode(project) -> None:
    assert checks.swift_settings_problems(project, checks.TARGET) == []


def test_swift_settings_checker_catches_swift_6(project, tmp_path: Path) -> None:
    broken = mutated(project, tmp_path, "SWIFT_VERSION = 5.0;", "SWIFT_VERSION = 6.0;")
    assert len(checks.swift_settings_problems(broken, checks.TARGET)) == 1


def test_explicit_groups_not_synchronized_folders(project) -> None:
    assert "PBXFileSystemSynchronizedRootGroup" not in project.text
    assert project.section("PBXGroup")


def test_asset_catalog(project) -> None:
    assert checks.asset_catalog_problems(project, checks.TARGET) == []


def test_asset_checker_catches_a_missing_icon(project, tmp_path: Path) -> None:
    broken = mutated(project, tmp_path, "APPICON_NAME = AppIcon;", "APPICON_NAME = Icon;", 2)
    assert len(checks.asset_catalog_problems(broken, checks.TARGET)) == 2


def test_shared_scheme_points_at_the_app_target(project) -> None:
    assert checks.SCHEME.is_file()
    assert checks.scheme_problems(checks.SCHEME, project, checks.TARGET) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('BlueprintIdentifier = "', 'BlueprintIdentifier = "0'),
        ("container:MobileNetDemo.xcodeproj", "container:Other.xcodeproj"),
        ('BuildableName = "MobileNetDemo.app"', 'BuildableName = "MobileNet.app"'),
    ],
)
def test_scheme_checker_catches_wrong_references(
    project, tmp_path: Path, old: str, new: str
) -> None:
    scheme = tmp_path / "MobileNetDemo.xcscheme"
    scheme.write_text(checks.SCHEME.read_text("utf-8").replace(old, new, 1), "utf-8")
    assert len(checks.scheme_problems(scheme, project, checks.TARGET)) == 1


# --------------------------------------------------------------------------------------------
# The contract between the Swift code and the converted model
# --------------------------------------------------------------------------------------------


def test_converted_model_is_an_image_classifier(spec) -> None:
    assert checks.model_spec_problems(spec) == []
    assert spec.inputs == {"image": (TEST_RES, TEST_RES)}
    assert spec.model_type == "mlProgram"


def test_swift_code_matches_the_converted_model(trees, spec) -> None:
    assumptions = checks.model_assumptions(trees)
    assert assumptions.classes == {checks.MODEL_NAME}
    assert checks.contract_problems(assumptions, spec, checks.MODEL_NAME) == []


def test_class_name_is_the_package_name(project) -> None:
    model = checks.model_package_path(project, checks.MODEL_NAME)
    assert model is not None and model.stem == checks.MODEL_NAME


def test_contract_checker_catches_wrong_assumptions(spec) -> None:
    source = """
    func load(_ c: MLModelConfiguration) throws {
        let model = try MobileNetV2(configuration: c).model
        let input = model.modelDescription.inputDescriptionsByName["input_1"]
        let output = model.modelDescription.outputDescriptionsByName["classLabelProbs"]
        let probs = result.featureValue(for: "probabilities")
        let alpha = meta["mnv1.width"]
        let info = ModelInfo(name: "x", inputWidth: 224, inputHeight: 224)
    }
    """
    assumptions = checks.model_assumptions(snippet(source))
    problems = checks.contract_problems(assumptions, spec, checks.MODEL_NAME)
    joined = "\n".join(problems)
    for expected in (
        "never loads MobileNetV1(configuration:)",
        "MobileNetV2(configuration:) has no MobileNetV2.mlpackage",
        "'input_1'",
        "'probabilities'",
        "'mnv1.width'",
        "hard-codes size 224",
        "imageConstraint",
        "classLabels",
    ):
        assert expected in joined
    assert "classLabelProbs" not in joined  # that one exists


def test_contract_checker_catches_a_model_that_is_not_a_classifier(spec) -> None:
    broken = checks.ModelSpec(
        inputs={"image": (TEST_RES, TEST_RES), "mask": None},
        outputs={"var_123": "multiArrayType"},
        predicted_feature="",
        predicted_probabilities="",
        metadata={},
        model_type="mlProgram",
    )
    assert len(checks.model_spec_problems(broken)) == 4


def test_real_model_if_generated(trees) -> None:
    """The model a developer converted into the working tree (skipped when there is none)."""
    model = checks.REPO / checks.MODEL_RELPATH
    if not model.is_dir():
        pytest.skip(f"{checks.MODEL_RELPATH} not generated (see ios_demo/README.md)")
    real = checks.load_model_spec(model)
    assert checks.model_spec_problems(real) == []
    assumptions = checks.model_assumptions(trees)
    assert checks.contract_problems(assumptions, real, checks.MODEL_NAME) == []
