"""Linux checks of the iOS demo (ios_demo/): what would break the app, without Xcode.

Three things can break unnoticed when nobody on the project has a Mac at hand:

* a Swift file that no longer parses (tree-sitter-swift);
* the Swift code's assumptions about the model (the class Xcode generates, any feature name it
  spells out, reading the size and labels from the model) against what `convert` writes;
* the Xcode project: a file on disk that is not compiled or copied, a reference to a file that
  is gone, a duplicated object ID from a hand edit, Info.plist keys, the privacy manifest, the
  deployment target, the shared scheme.

Each checker returns a list of problems (empty: it holds) and takes parsed inputs or paths, so
that the tests can feed it broken ones. The pbxproj is read with the `pbxproj` package, never
written.
"""

from __future__ import annotations

import plistlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import tree_sitter as ts
import tree_sitter_swift as tss

REPO = Path(__file__).resolve().parents[1]
IOS_DEMO = REPO / "ios_demo"
XCODEPROJ = IOS_DEMO / "MobileNetDemo.xcodeproj"
APP_DIR = IOS_DEMO / "MobileNetDemo"
SCHEME = XCODEPROJ / "xcshareddata" / "xcschemes" / "MobileNetDemo.xcscheme"
TARGET = "MobileNetDemo"
MODEL_NAME = "MobileNetV1"
#: Where `mnv1-coreml convert ... -o` puts the model, relative to the repository root.
MODEL_RELPATH = Path("ios_demo/MobileNetDemo/MobileNetV1.mlpackage")
MIN_IOS = (17, 0)
#: Files under APP_DIR that must be copied into the app as they are.
RESOURCE_SUFFIXES = (".xcassets", ".xcprivacy")

# --------------------------------------------------------------------------------------------
# Swift
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _language() -> ts.Language:
    return ts.Language(tss.language())


def parse_swift(source: str | bytes) -> ts.Tree:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return ts.Parser(_language()).parse(data)


def swift_files(root: Path = APP_DIR) -> list[Path]:
    return sorted(root.rglob("*.swift"))


def parse_all_swift(root: Path = APP_DIR) -> dict[str, ts.Tree]:
    return {str(p.relative_to(root)): parse_swift(p.read_bytes()) for p in swift_files(root)}


def _text(node: ts.Node) -> str:
    return (node.text or b"").decode("utf-8")


def _where(name: str, node: ts.Node) -> str:
    return f"{name}:{node.start_point[0] + 1}"


def _walk(node: ts.Node) -> Iterator[ts.Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def syntax_problems(tree: ts.Tree) -> list[str]:
    """Every ERROR and MISSING node (tree-sitter recovers from errors, so look at all)."""
    problems = []
    for node in _walk(tree.root_node):
        if node.is_missing:
            problems.append(f"line {node.start_point[0] + 1}: missing {node.type!r}")
        elif node.type == "ERROR":
            near = _text(node).strip().split("\n")[0][:60]
            problems.append(f"line {node.start_point[0] + 1}: syntax error near {near!r}")
    if tree.root_node.has_error and not problems:
        problems.append("the tree has an error")
    return problems


@cache
def _query(pattern: str) -> ts.Query:
    return ts.Query(_language(), pattern)


def _matches(pattern: str, node: ts.Node) -> list[dict[str, list[ts.Node]]]:
    return [m for _, m in ts.QueryCursor(_query(pattern)).matches(node)]


def _string_value(node: ts.Node) -> str | None:
    """A plain string literal's text; None for interpolated ones."""
    if node.type != "line_string_literal":
        return None
    if any(c.type not in ("line_str_text", '"') for c in node.children):
        return None
    return "".join(_text(c) for c in node.children if c.type == "line_str_text")


# `X.urlOfModelInThisBundle`: a member only the class Xcode generates from a model has.
TYPE_MEMBER_QUERY = """
(navigation_expression
  target: (simple_identifier) @type
  suffix: (navigation_suffix suffix: (simple_identifier) @member))
"""
# `X(configuration: ...)`: the generated class's initializer (MLModel's take a URL).
CALL_QUERY = """
(call_expression (simple_identifier) @callee
  (call_suffix (value_arguments (value_argument
     name: (value_argument_label (simple_identifier) @label)))))
"""
# `description.inputDescriptionsByName["name"]`, `outputDescriptionsByName[...]`,
# `provider.featureValue(for: "name")`.
FEATURE_QUERY = """
(call_expression
  (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @accessor))
  (call_suffix (value_arguments (value_argument value: (line_string_literal) @name))))
"""
FEATURE_ACCESSORS = {
    "inputDescriptionsByName": "input",
    "outputDescriptionsByName": "output",
    "featureValue": "feature",
}
ASSIGNMENT_QUERY = """
(assignment
  target: (directly_assignable_expression
    (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @property)))
  result: (line_string_literal) @value)
"""


@dataclass
class ModelAssumptions:
    """What the Swift code takes for granted about the bundled model, and where."""

    classes: dict[str, str] = field(default_factory=dict)  # generated class -> where
    features: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, name, where)
    reads_image_constraint: bool = False
    reads_class_labels: bool = False


def model_assumptions(trees: dict[str, ts.Tree]) -> ModelAssumptions:
    """Every use of a generated model class and every feature name spelled out in Swift."""
    found = ModelAssumptions()
    for name, tree in trees.items():
        root = tree.root_node
        for m in _matches(TYPE_MEMBER_QUERY, root):
            cls, member = _text(m["type"][0]), _text(m["member"][0])
            if member == "urlOfModelInThisBundle":
                found.classes.setdefault(cls, _where(name, m["type"][0]))
        for m in _matches(CALL_QUERY, root):
            if _text(m["label"][0]) == "configuration" and _text(m["callee"][0])[:1].isupper():
                found.classes.setdefault(_text(m["callee"][0]), _where(name, m["callee"][0]))
        for m in _matches(FEATURE_QUERY, root):
            kind = FEATURE_ACCESSORS.get(_text(m["accessor"][0]))
            value = _string_value(m["name"][0])
            if kind and value is not None:
                found.features.append((kind, value, _where(name, m["name"][0])))
        for m in _matches(ASSIGNMENT_QUERY, root):
            value = _string_value(m["value"][0])
            if _text(m["property"][0]) == "inputImageFeatureName" and value is not None:
                found.features.append(("input", value, _where(name, m["value"][0])))
        for node in _walk(root):
            if node.type == "simple_identifier":
                found.reads_image_constraint |= _text(node) == "imageConstraint"
                found.reads_class_labels |= _text(node) == "classLabels"
    return found


@dataclass
class ModelSpec:
    """The parts of a Core ML model's description the app depends on."""

    inputs: dict[str, tuple[int, int] | None]  # name -> (width, height) for images
    outputs: dict[str, str]  # name -> feature type
    predicted_feature: str
    predicted_probabilities: str
    class_count: int


def load_model_spec(package: Path) -> ModelSpec:
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    desc = spec.description
    inputs: dict[str, tuple[int, int] | None] = {}
    for feature in desc.input:
        is_image = feature.type.WhichOneof("Type") == "imageType"
        image = feature.type.imageType
        inputs[feature.name] = (image.width, image.height) if is_image else None
    # An ML Program's labels are the `classes` of its `classify` op (a const, or inline).
    function = spec.mlProgram.functions["main"]
    operations = function.block_specializations[function.opset].operations
    consts = {op.outputs[0].name: op for op in operations if op.type == "const"}
    class_count = 0
    for op in operations:
        if op.type == "classify":
            arg = op.inputs["classes"].arguments[0]
            value = arg.value if arg.HasField("value") else consts[arg.name].attributes["val"]
            class_count = len(value.immediateValue.list.values)
    return ModelSpec(
        inputs=inputs,
        outputs={f.name: f.type.WhichOneof("Type") for f in desc.output},
        predicted_feature=desc.predictedFeatureName,
        predicted_probabilities=desc.predictedProbabilitiesName,
        class_count=class_count,
    )


def model_spec_problems(spec: ModelSpec) -> list[str]:
    """What Vision needs to return `VNClassificationObservation`s: one image input, a
    classifier with labels."""
    problems = []
    if len(spec.inputs) != 1 or None in spec.inputs.values():
        problems.append(f"expected exactly one image input, got {spec.inputs}")
    if spec.outputs.get(spec.predicted_feature) != "stringType":
        problems.append(f"no string class-label output ({spec.predicted_feature!r})")
    if spec.outputs.get(spec.predicted_probabilities) != "dictionaryType":
        problems.append(f"no class-probability output ({spec.predicted_probabilities!r})")
    if spec.class_count < 1:
        problems.append("the model has no class labels")
    return problems


def contract_problems(assumptions: ModelAssumptions, spec: ModelSpec, package: str) -> list[str]:
    """The Swift code's assumptions hold for this converted model."""
    problems = []
    if package not in assumptions.classes:
        problems.append(
            f"the Swift code never uses {package}, the class Xcode generates from "
            f"{package}.mlpackage (it uses {sorted(assumptions.classes)})"
        )
    for cls, where in sorted(assumptions.classes.items()):
        if cls != package:
            problems.append(f"{where}: {cls} is not generated: the app has no {cls}.mlpackage")
    for kind, name, where in assumptions.features:
        names = {"input": spec.inputs, "output": spec.outputs}.get(
            kind, {**spec.inputs, **spec.outputs}
        )
        if name not in names:
            problems.append(f"{where}: {kind} {name!r} is not in the model ({sorted(names)})")
    if not assumptions.reads_image_constraint:
        problems.append("the app does not read the input size from imageConstraint")
    if not assumptions.reads_class_labels:
        problems.append("the app does not read the labels from the model's classLabels")
    return problems


# --------------------------------------------------------------------------------------------
# The Xcode project
# --------------------------------------------------------------------------------------------

_DEFINITION = re.compile(r"^\t\t([0-9A-Za-z]+) (?:/\*.*?\*/ )?= \{", re.MULTILINE)
_ID = re.compile(r"\b[0-9A-F]{24}\b")


def object_id_problems(text: str) -> list[str]:
    """Object IDs are defined once and every ID used is defined.

    The pbxproj loader keeps the last of two objects with one ID, silently, and Xcode's
    behaviour is undefined: a hand edit that pastes a block twice must be caught in the text.
    """
    defined = Counter(_DEFINITION.findall(text))
    problems = [f"object {oid} is defined {n} times" for oid, n in defined.items() if n > 1]
    problems += [
        f"object ID {oid} is not 24 uppercase hex digits"
        for oid in defined
        if not _ID.fullmatch(oid)
    ]
    problems += [
        f"{oid} refers to no object" for oid in sorted(set(_ID.findall(text)) - set(defined))
    ]
    return problems


@dataclass
class Project:
    """A project.pbxproj, read only, and the directory holding the .xcodeproj (SOURCE_ROOT)."""

    text: str
    source_root: Path
    pbx: Any  # pbxproj.XcodeProject

    def obj(self, oid: Any) -> Any:
        return self.pbx.objects[str(oid)]

    def section(self, isa: str) -> list[Any]:
        return list(self.pbx.objects.get_objects_in_section(isa))

    def target(self, name: str = TARGET) -> Any:
        root = self.obj(self.pbx.rootObject)
        return next(self.obj(t) for t in root.targets if self.obj(t).name == name)


def load_project(pbxproj: Path, source_root: Path | None = None) -> Project:
    from pbxproj import XcodeProject

    root = source_root if source_root is not None else pbxproj.parent.parent
    return Project(pbxproj.read_text("utf-8"), root, XcodeProject.load(str(pbxproj)))


def _get(obj: Any, key: str) -> Any:
    return obj[key] if obj is not None and key in obj.get_keys() else None


def resolved_paths(project: Project) -> dict[str, Path | None]:
    """Path on disk of every group and file reference, as Xcode resolves `<group>` and
    `SOURCE_ROOT` paths; None for built products."""
    parent: dict[str, str] = {}
    for group in project.section("PBXGroup"):
        for child in _get(group, "children") or []:
            parent[str(child)] = group.get_id()
    cache: dict[str, Path | None] = {}

    def resolve(oid: str) -> Path | None:
        if oid not in cache:
            obj = project.obj(oid)
            tree, path = _get(obj, "sourceTree"), _get(obj, "path")
            if tree == "SOURCE_ROOT":
                base: Path | None = project.source_root
            elif tree == "<group>":
                base = resolve(parent[oid]) if oid in parent else project.source_root
            else:
                base = None
            cache[oid] = (base / path if path else base) if base is not None else None
        return cache[oid]

    return {
        obj.get_id(): resolve(obj.get_id())
        for isa in ("PBXGroup", "PBXFileReference")
        for obj in project.section(isa)
    }


def file_reference_problems(project: Project) -> list[str]:
    """Every file reference (and group folder) points at something on disk."""
    paths = resolved_paths(project)
    problems = []
    for isa in ("PBXGroup", "PBXFileReference"):
        for obj in project.section(isa):
            path = paths[obj.get_id()]
            if path is not None and _get(obj, "path") and not path.exists():
                problems.append(f"{_get(obj, 'path')} -> {path} does not exist")
    return problems


def phase_paths(project: Project, isa: str, target: str = TARGET) -> set[Path]:
    """Files in the target's build phase of type `isa` (Sources, Resources)."""
    paths = resolved_paths(project)
    found = set()
    for phase_id in project.target(target).buildPhases:
        phase = project.obj(phase_id)
        if phase.isa == isa:
            for build_file in phase.files:
                path = paths.get(str(_get(project.obj(build_file), "fileRef")))
                if path is not None:
                    found.add(path)
    return found


def membership_problems(project: Project, app_dir: Path, model_name: str = MODEL_NAME) -> list[str]:
    """Every Swift file is compiled, the model is a source (Xcode compiles it and generates its
    class), and the resources (assets, privacy manifest) are copied."""
    sources = phase_paths(project, "PBXSourcesBuildPhase")
    resources = phase_paths(project, "PBXResourcesBuildPhase")
    problems = [
        f"{p.relative_to(app_dir)} is not compiled"
        for p in swift_files(app_dir)
        if p not in sources
    ]
    model = app_dir / f"{model_name}.mlpackage"
    if model not in sources:
        problems.append(f"{model.name} is not in the Sources phase")
    if model in resources:
        problems.append(f"{model.name} is copied as a resource: Xcode would not compile it")
    for path in sorted(app_dir.iterdir()):
        if path.suffix in RESOURCE_SUFFIXES and path not in resources:
            problems.append(f"{path.name} is not in the Resources phase")
    return problems


def build_settings(project: Project, target: str = TARGET) -> dict[str, dict[str, Any]]:
    """Target settings over project settings, per configuration."""

    def configs(list_id: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for config_id in project.obj(list_id).buildConfigurations:
            config = project.obj(config_id)
            settings = config.buildSettings
            out[str(config.name)] = {k: settings[k] for k in settings.get_keys()}
        return out

    root = project.obj(project.pbx.rootObject)
    base = configs(root.buildConfigurationList)
    return {
        name: {**base.get(name, {}), **settings}
        for name, settings in configs(project.target(target).buildConfigurationList).items()
    }


#: Keys the app needs in its Info.plist, from the file or from INFOPLIST_KEY_ build settings.
REQUIRED_INFO_KEYS = {
    "NSCameraUsageDescription": "the camera prompt (without it iOS kills the app)",
    "UIFileSharingEnabled": "the app's folder in Finder and Files, for model imports",
    "LSSupportsOpeningDocumentsInPlace": "the app's folder in Files",
}
#: Keys the app must not have: PhotosPicker runs out of process and needs no library access.
FORBIDDEN_INFO_KEYS = ("NSPhotoLibraryUsageDescription",)
# `UTType(importedAs: "...")`
UTTYPE_QUERY = """
(call_expression (simple_identifier) @type
  (call_suffix (value_arguments (value_argument
    name: (value_argument_label (simple_identifier) @label)
    value: (line_string_literal) @identifier))))
"""


def info_plist_problems(
    project: Project, trees: dict[str, ts.Tree], target: str = TARGET
) -> list[str]:
    """Each configuration's Info.plist (the file merged with the generated keys) has what the
    app needs, and declares every type the Swift code imports with `UTType(importedAs:)`."""
    imported = {
        _string_value(m["identifier"][0])
        for tree in trees.values()
        for m in _matches(UTTYPE_QUERY, tree.root_node)
        if _text(m["type"][0]) == "UTType" and _text(m["label"][0]) == "importedAs"
    }
    problems = []
    for name, settings in build_settings(project, target).items():
        info: dict[str, Any] = {}
        if settings.get("INFOPLIST_FILE"):
            path = project.source_root / str(settings["INFOPLIST_FILE"])
            try:
                info = plistlib.loads(path.read_bytes())
            except (OSError, plistlib.InvalidFileException) as exc:
                problems.append(f"{name}: Info.plist {path} cannot be read: {exc}")
        if settings.get("GENERATE_INFOPLIST_FILE") == "YES":
            prefix = "INFOPLIST_KEY_"
            info.update({k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)})
        for key, why in REQUIRED_INFO_KEYS.items():
            if info.get(key) in (None, "", False, "NO"):
                problems.append(f"{name}: Info.plist has no {key} ({why})")
        problems += [f"{name}: Info.plist has {key}" for key in FORBIDDEN_INFO_KEYS if key in info]
        declared = {d.get("UTTypeIdentifier") for d in info.get("UTImportedTypeDeclarations", [])}
        problems += [
            f"{name}: UTType(importedAs: {uti!r}) is not declared in UTImportedTypeDeclarations"
            for uti in sorted(imported - declared)
        ]
    return problems


#: Required-reason APIs the app's Swift could call, by category, with Apple's reason codes.
REQUIRED_REASON_APIS = {
    "NSPrivacyAccessedAPICategoryFileTimestamp": (
        {
            "contentModificationDateKey",
            "creationDateKey",
            "modificationDate",
            "creationDate",
            "contentAccessDateKey",
            "attributesOfItem",
        },
        {"DDA9.1", "C617.1", "3B52.1", "0A2A.1"},
    ),
    "NSPrivacyAccessedAPICategorySystemBootTime": (
        {"systemUptime", "mach_absolute_time"},
        {"35F9.1", "8FFB.1", "3D61.1"},
    ),
    "NSPrivacyAccessedAPICategoryDiskSpace": (
        {
            "volumeAvailableCapacityKey",
            "volumeAvailableCapacityForImportantUsageKey",
            "systemFreeSize",
            "systemSize",
        },
        {"85F4.1", "E174.1", "7D9E.1", "B728.1"},
    ),
    "NSPrivacyAccessedAPICategoryUserDefaults": (
        {"UserDefaults", "AppStorage"},
        {"CA92.1", "1C8F.1", "C56D.1", "AC6B.1"},
    ),
}


def privacy_manifest_problems(manifest: Path, trees: dict[str, ts.Tree]) -> list[str]:
    """The manifest parses, and declares, with a documented reason, every required-reason API
    category the Swift code uses (App Store Connect rejects the upload otherwise)."""
    try:
        data = plistlib.loads(manifest.read_bytes())
    except (OSError, plistlib.InvalidFileException) as exc:
        return [f"{manifest.name} cannot be read: {exc}"]
    declared = {
        entry.get("NSPrivacyAccessedAPIType"): set(entry.get("NSPrivacyAccessedAPITypeReasons", []))
        for entry in data.get("NSPrivacyAccessedAPITypes", [])
    }
    problems = []
    if data.get("NSPrivacyTracking") is not False:
        problems.append(f"{manifest.name}: NSPrivacyTracking is not false")
    identifiers = {
        _text(node)
        for tree in trees.values()
        for node in _walk(tree.root_node)
        if node.type in ("simple_identifier", "type_identifier")
    }
    for category, (apis, reasons) in REQUIRED_REASON_APIS.items():
        used = sorted(apis & identifiers)
        if used and not declared.get(category):
            problems.append(f"the app uses {', '.join(used)} but {manifest.name} has no {category}")
        unknown = sorted(declared.get(category, set()) - reasons)
        if unknown:
            problems.append(
                f"{category}: reasons {unknown} are not Apple's codes ({sorted(reasons)})"
            )
    return problems


def deployment_target_problems(project: Project, minimum: tuple[int, int] = MIN_IOS) -> list[str]:
    """One IPHONEOS_DEPLOYMENT_TARGET everywhere, at least iOS 17 (Observation, the rotation
    coordinator)."""
    values = {
        str(_get(config.buildSettings, "IPHONEOS_DEPLOYMENT_TARGET"))
        for config in project.section("XCBuildConfiguration")
        if _get(config.buildSettings, "IPHONEOS_DEPLOYMENT_TARGET") is not None
    }
    if len(values) != 1:
        return [f"IPHONEOS_DEPLOYMENT_TARGET differs or is missing: {sorted(values)}"]
    value = values.pop()
    if tuple(int(p) for p in value.split(".")) < minimum:
        return [f"IPHONEOS_DEPLOYMENT_TARGET {value} is below {'.'.join(map(str, minimum))}"]
    return []


def scheme_problems(scheme: Path, project: Project, target: str = TARGET) -> list[str]:
    """The shared scheme (what `xcodebuild -scheme` uses) builds this project's app target."""
    try:
        refs = ET.parse(scheme).getroot().findall(".//BuildableReference")
    except (OSError, ET.ParseError) as exc:
        return [f"{scheme.name}: {exc}"]
    app = project.target(target)
    expected = {
        "BlueprintIdentifier": app.get_id(),
        "BuildableName": str(_get(project.obj(app.productReference), "path")),
        "ReferencedContainer": f"container:{XCODEPROJ.name}",
    }
    if not refs:
        return [f"{scheme.name} builds nothing"]
    return [
        f"{scheme.name}: {attr} is {ref.get(attr)!r}, expected {want!r}"
        for ref in refs
        for attr, want in expected.items()
        if ref.get(attr) != want
    ]
