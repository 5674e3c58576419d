"""Static checks of the iOS demo app that run on Linux, without Xcode or a Swift toolchain.

* Swift: every file parses with tree-sitter-swift, and policy checks by tree-sitter *queries*
  (never regex): Vision's ``.centerCrop``, no ``DispatchQueue.main.sync``, the capture delegate's
  exact signature, ``startRunning`` only inside an ``async`` closure, a semaphore (not a Bool)
  guarding the in-flight request.
* The Xcode project: ``project.pbxproj`` read with the ``pbxproj`` package (read only) plus a
  small tokenizer over the raw text, because a dict loader hides duplicated object IDs.
* The shared scheme, the asset catalog and the partial Info.plist.
* The app's contract with a converted model, read with ``coremltools.utils.load_spec``.

Every checker returns a list of human-readable problems; an empty list means the check passed.
They take paths, sources or parsed objects, so the tests can feed them broken inputs too.
"""

from __future__ import annotations

import json
import plistlib
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
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
REQUIRED_INFOPLIST_KEYS = (
    "INFOPLIST_KEY_NSCameraUsageDescription",
    "INFOPLIST_KEY_NSPhotoLibraryUsageDescription",
)

# --------------------------------------------------------------------------------------------
# Swift: parsing and queries
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def swift_language() -> ts.Language:
    return ts.Language(tss.language())


def parse_swift(source: str | bytes) -> ts.Tree:
    data = source.encode("utf-8") if isinstance(source, str) else source
    return ts.Parser(swift_language()).parse(data)


def swift_files(root: Path = APP_DIR) -> list[Path]:
    return sorted(root.rglob("*.swift"))


def text(node: ts.Node) -> str:
    return (node.text or b"").decode("utf-8")


def _where(node: ts.Node) -> str:
    row, col = node.start_point
    return f"{row + 1}:{col + 1}"


def walk(node: ts.Node) -> Iterator[ts.Node]:
    cursor = node.walk()
    while True:
        yield cursor.node
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


def syntax_problems(tree: ts.Tree) -> list[str]:
    """Every ERROR and MISSING node; tree-sitter recovers from errors, so walk the whole tree."""
    problems = []
    for node in walk(tree.root_node):
        if node.is_missing:
            problems.append(f"{_where(node)} missing {node.type!r}")
        elif node.type == "ERROR":
            snippet = text(node).strip().splitlines()[0][:60] if text(node).strip() else ""
            problems.append(f"{_where(node)} syntax error near {snippet!r}")
    if tree.root_node.has_error and not problems:
        problems.append("the tree has an error that no ERROR or MISSING node shows")
    return problems


@lru_cache(maxsize=64)
def _query(pattern: str) -> ts.Query:
    return ts.Query(swift_language(), pattern)


def captures(pattern: str, node: ts.Node) -> dict[str, list[ts.Node]]:
    return ts.QueryCursor(_query(pattern)).captures(node)


def matches(pattern: str, node: ts.Node) -> list[dict[str, list[ts.Node]]]:
    return [m for _, m in ts.QueryCursor(_query(pattern)).matches(node)]


def string_literal_value(node: ts.Node) -> str | None:
    """The text of a plain string literal; None for interpolated or multi-line ones."""
    if node.type != "line_string_literal":
        return None
    parts = []
    for child in node.children:
        if child.type == "line_str_text":
            parts.append(text(child))
        elif child.type != '"':
            return None
    return "".join(parts)


def inside_macro(node: ts.Node, name: str) -> bool:
    """True inside `#name ...` (e.g. `#Preview`, whose sample data is not app behaviour)."""
    parent = node.parent
    while parent is not None:
        if parent.type == "macro_invocation":
            ident = next((c for c in parent.children if c.type == "simple_identifier"), None)
            if ident is not None and text(ident) == name:
                return True
        parent = parent.parent
    return False


ASSIGNMENT_QUERY = """
(assignment
  target: (directly_assignable_expression
    (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @property)))
  result: (_) @value)
"""


def assignments(tree: ts.Tree, prop: str) -> list[tuple[str, ts.Node]]:
    """`something.prop = value` statements: (value text, value node)."""
    found = []
    for m in matches(ASSIGNMENT_QUERY, tree.root_node):
        if text(m["property"][0]) == prop:
            value = m["value"][0]
            found.append((text(value), value))
    return found


def enum_case_name(node: ts.Node) -> str | None:
    """`.centerCrop` or `VNImageCropAndScaleOption.centerCrop` -> "centerCrop"."""
    if node.type == "prefix_expression":
        op = node.child_by_field_name("operation")
        target = node.child_by_field_name("target")
        if op is not None and text(op) == "." and target is not None:
            return text(target)
    if node.type == "navigation_expression":
        suffix = node.child_by_field_name("suffix")
        name = suffix.child_by_field_name("suffix") if suffix is not None else None
        return text(name) if name is not None else None
    return None


def crop_option_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """Vision must center-crop: the app relies on it and the preview outlines that square."""
    problems, seen = [], 0
    for name, tree in trees.items():
        for value, node in assignments(tree, "imageCropAndScaleOption"):
            seen += 1
            if enum_case_name(node) != "centerCrop":
                problems.append(f"{name}:{_where(node)} imageCropAndScaleOption = {value}")
    if not seen:
        problems.append("no VNCoreMLRequest sets imageCropAndScaleOption = .centerCrop")
    return problems


MAIN_SYNC_QUERY = """
(call_expression
  (navigation_expression
    target: (navigation_expression
      target: (simple_identifier) @receiver
      suffix: (navigation_suffix suffix: (simple_identifier) @queue))
    suffix: (navigation_suffix suffix: (simple_identifier) @method))
  (#eq? @receiver "DispatchQueue")
  (#eq? @queue "main")
  (#match? @method "^(sync|syncSafe|asyncAndWait)$")) @call
"""


def main_sync_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """`DispatchQueue.main.sync` deadlocks when called on main and stalls capture otherwise."""
    return [
        f"{name}:{_where(node)} {text(node).splitlines()[0][:60]}"
        for name, tree in trees.items()
        for node in captures(MAIN_SYNC_QUERY, tree.root_node).get("call", [])
    ]


FUNCTION_QUERY = """
(function_declaration name: (simple_identifier) @name) @function
"""


def selector(function: ts.Node) -> str:
    """`captureOutput(_:didOutput:from:)` for a function declaration node."""
    name = text(function.child_by_field_name("name"))
    labels = []
    for child in function.children:
        if child.type != "parameter":
            continue
        external = child.child_by_field_name("external_name")
        internal = child.children_by_field_name("name")
        labels.append(text(external) if external is not None else text(internal[0]))
    return f"{name}({''.join(label + ':' for label in labels)})"


def enclosing_type_conformances(node: ts.Node) -> list[str]:
    """Names a function's enclosing class, struct or extension conforms to."""
    parent = node.parent
    while parent is not None and parent.type not in ("class_declaration", "protocol_declaration"):
        parent = parent.parent
    if parent is None:
        return []
    return [
        text(spec.child_by_field_name("inherits_from"))
        for spec in parent.children
        if spec.type == "inheritance_specifier"
        and spec.child_by_field_name("inherits_from") is not None
    ]


CAPTURE_DELEGATE = "AVCaptureVideoDataOutputSampleBufferDelegate"
CAPTURE_SELECTOR = "captureOutput(_:didOutput:from:)"


def capture_delegate_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """The frame callback must be exactly `captureOutput(_:didOutput:from:)` in a conforming type.

    A near miss (Swift 3's `didOutputSampleBuffer:`, a typo) compiles as a plain method that
    AVFoundation never calls: the app would show the preview and never classify.
    """
    problems, good = [], 0
    for name, tree in trees.items():
        for m in matches(FUNCTION_QUERY, tree.root_node):
            if text(m["name"][0]) != "captureOutput":
                continue
            function = m["function"][0]
            sel = selector(function)
            conforms = CAPTURE_DELEGATE in enclosing_type_conformances(function)
            if sel == CAPTURE_SELECTOR and conforms:
                good += 1
            elif sel == CAPTURE_SELECTOR:
                problems.append(f"{name}:{_where(function)} {sel} is not in a {CAPTURE_DELEGATE}")
            elif "didDrop" not in sel:
                problems.append(f"{name}:{_where(function)} {sel} is not {CAPTURE_SELECTOR}")
    if not good:
        problems.append(f"no {CAPTURE_DELEGATE} implements {CAPTURE_SELECTOR}")
    return problems


METHOD_CALL_QUERY = """
(call_expression
  (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @method))) @call
"""


def calls_to(tree: ts.Tree, method: str) -> list[ts.Node]:
    return [
        m["call"][0]
        for m in matches(METHOD_CALL_QUERY, tree.root_node)
        if text(m["method"][0]) == method
    ]


def _called_method(call: ts.Node) -> str | None:
    callee = call.children[0] if call.children else None
    if callee is None or callee.type != "navigation_expression":
        return None
    suffix = callee.child_by_field_name("suffix")
    name = suffix.child_by_field_name("suffix") if suffix is not None else None
    return text(name) if name is not None else None


def start_running_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """`startRunning()` blocks; it must run inside a closure given to some queue's `async`."""
    problems, seen = [], 0
    for name, tree in trees.items():
        for call in calls_to(tree, "startRunning"):
            seen += 1
            node, dispatched = call.parent, False
            while node is not None and not dispatched:
                if node.type == "lambda_literal":
                    owner = node.parent.parent if node.parent is not None else None
                    dispatched = owner is not None and _called_method(owner) == "async"
                node = node.parent
            if not dispatched:
                problems.append(f"{name}:{_where(call)} startRunning() outside a queue's async")
    if not seen:
        problems.append("nothing calls AVCaptureSession.startRunning()")
    return problems


SEMAPHORE_QUERY = """
(call_expression
  (simple_identifier) @type
  (call_suffix (value_arguments
    (value_argument
      name: (value_argument_label (simple_identifier) @label)
      value: (integer_literal) @count)))
  (#eq? @type "DispatchSemaphore")
  (#eq? @label "value"))
"""

NONBLOCKING_WAIT_QUERY = """
(call_expression
  (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @method))
  (call_suffix (value_arguments
    (value_argument
      name: (value_argument_label (simple_identifier) @label)
      value: (call_expression (prefix_expression target: (simple_identifier) @now)))))
  (#eq? @method "wait")
  (#eq? @label "timeout")
  (#eq? @now "now")) @call
"""


def in_flight_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """At most one request in flight: a `DispatchSemaphore(value: 1)` taken with
    `wait(timeout: .now())`, so a busy classifier drops frames instead of queueing them."""
    semaphores = [
        node
        for tree in trees.values()
        for m in matches(SEMAPHORE_QUERY, tree.root_node)
        for node in m["count"]
        if text(node) == "1"
    ]
    waits = [
        node
        for tree in trees.values()
        for node in captures(NONBLOCKING_WAIT_QUERY, tree.root_node).get("call", [])
    ]
    problems = []
    if not semaphores:
        problems.append("no DispatchSemaphore(value: 1) guards the request in flight")
    if not waits:
        problems.append("nothing takes the semaphore with wait(timeout: .now()) to drop frames")
    return problems


def capture_settings_problems(trees: dict[str, ts.Tree]) -> list[str]:
    """The video output drops late frames and delivers BGRA."""
    problems = []
    values = [
        value
        for tree in trees.values()
        for value, _ in assignments(tree, "alwaysDiscardsLateVideoFrames")
    ]
    if values != ["true"]:
        problems.append(f"alwaysDiscardsLateVideoFrames assignments: {values or 'none'}")
    bgra = [
        n
        for tree in trees.values()
        for n in walk(tree.root_node)
        if n.type == "simple_identifier" and text(n) == "kCVPixelFormatType_32BGRA"
    ]
    if not bgra:
        problems.append("the video output does not ask for kCVPixelFormatType_32BGRA")
    return problems


# --------------------------------------------------------------------------------------------
# Swift: the contract with the model
# --------------------------------------------------------------------------------------------

CALL_QUERY = """
(call_expression (simple_identifier) @callee (call_suffix (value_arguments) @arguments)) @call
"""


def _arguments(arguments: ts.Node) -> list[tuple[str | None, ts.Node]]:
    result = []
    for arg in arguments.children:
        if arg.type != "value_argument":
            continue
        label = arg.child_by_field_name("name")
        value = arg.child_by_field_name("value")
        result.append((text(label) if label is not None else None, value))
    return result


def call_arguments(call: ts.Node) -> list[tuple[str | None, ts.Node]]:
    """(label, value) of each argument of a call expression."""
    for suffix in call.children:
        if suffix.type == "call_suffix":
            for child in suffix.children:
                if child.type == "value_arguments":
                    return _arguments(child)
    return []


def generated_model_classes(trees: dict[str, ts.Tree]) -> set[str]:
    """Classes instantiated as `X(configuration: ...)` and nothing else: Xcode-generated model
    classes (MLModel's own initializers take a URL first)."""
    names = set()
    for tree in trees.values():
        for m in matches(CALL_QUERY, tree.root_node):
            args = _arguments(m["arguments"][0])
            if len(args) == 1 and args[0][0] == "configuration":
                names.add(text(m["callee"][0]))
    return names


SUBSCRIPT_QUERY = """
(call_expression
  (navigation_expression suffix: (navigation_suffix suffix: (simple_identifier) @collection))
  (call_suffix (value_arguments (value_argument value: (line_string_literal) @key))))
"""

FEATURE_COLLECTIONS = {
    "inputDescriptionsByName": "input",
    "outputDescriptionsByName": "output",
}


@dataclass
class ModelAssumptions:
    """What the Swift code takes for granted about the bundled model, with where it does."""

    classes: set[str] = field(default_factory=set)
    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    features: list[tuple[str, str]] = field(default_factory=list)
    metadata_keys: list[tuple[str, str]] = field(default_factory=list)
    sizes: list[tuple[int, str]] = field(default_factory=list)
    reads_image_constraint: bool = False
    reads_class_labels: bool = False


SIZE_LABELS = {"pixelsWide", "pixelsHigh", "inputWidth", "inputHeight"}
METADATA_KEY = re.compile(r"^mnv1\.[A-Za-z0-9_.]+$")


def model_assumptions(trees: dict[str, ts.Tree]) -> ModelAssumptions:
    """Everything in the Swift sources that names a model feature, a metadata key or a size.

    `#Preview` blocks are sample data for Xcode's canvas and are left out.
    """
    found = ModelAssumptions(classes=generated_model_classes(trees))
    for name, tree in trees.items():
        root = tree.root_node
        for m in matches(SUBSCRIPT_QUERY, root):
            kind = FEATURE_COLLECTIONS.get(text(m["collection"][0]))
            value = string_literal_value(m["key"][0])
            if kind and value is not None and not inside_macro(m["key"][0], "Preview"):
                where = f"{name}:{_where(m['key'][0])}"
                (found.inputs if kind == "input" else found.outputs).append((value, where))
        for call in calls_to(tree, "featureValue"):
            for label, value in call_arguments(call):
                literal = string_literal_value(value) if value is not None else None
                if label == "for" and literal is not None and not inside_macro(call, "Preview"):
                    found.features.append((literal, f"{name}:{_where(call)}"))
        for _, node in assignments(tree, "inputImageFeatureName"):
            literal = string_literal_value(node)
            if literal is not None:
                found.inputs.append((literal, f"{name}:{_where(node)}"))
        for node in walk(root):
            if node.type == "line_string_literal":
                literal = string_literal_value(node)
                if literal and METADATA_KEY.match(literal):
                    found.metadata_keys.append((literal, f"{name}:{_where(node)}"))
            elif node.type == "value_argument":
                label = node.child_by_field_name("name")
                value = node.child_by_field_name("value")
                if (
                    label is not None
                    and text(label) in SIZE_LABELS
                    and value is not None
                    and value.type == "integer_literal"
                    and not inside_macro(node, "Preview")
                ):
                    found.sizes.append((int(text(value)), f"{name}:{_where(node)}"))
            elif node.type == "simple_identifier" and node.parent is not None:
                if text(node) == "imageConstraint":
                    found.reads_image_constraint = True
                elif text(node) == "classLabels" and node.parent.type == "navigation_suffix":
                    found.reads_class_labels = True
        for value, node in assignments(tree, "pixelsWide") + assignments(tree, "pixelsHigh"):
            if node.type == "integer_literal":
                found.sizes.append((int(value), f"{name}:{_where(node)}"))
    return found


@dataclass
class ModelSpec:
    """The parts of a Core ML model's description the app depends on."""

    inputs: dict[str, tuple[int, int] | None]
    outputs: dict[str, str]
    predicted_feature: str
    predicted_probabilities: str
    metadata: dict[str, str]
    model_type: str


def coremltools() -> Any:
    """coremltools, through the project's quiet import when it is there."""
    try:
        from mnv1_coreml.coreml import ct
    except ImportError:  # pragma: no cover - the package is installed for these tests
        import coremltools as ct
    return ct


def load_model_spec(package: Path) -> ModelSpec:
    spec = coremltools().utils.load_spec(str(package))
    desc = spec.description
    inputs: dict[str, tuple[int, int] | None] = {}
    for feature in desc.input:
        kind = feature.type.WhichOneof("Type")
        image = feature.type.imageType
        inputs[feature.name] = (image.width, image.height) if kind == "imageType" else None
    outputs = {feature.name: feature.type.WhichOneof("Type") for feature in desc.output}
    return ModelSpec(
        inputs=inputs,
        outputs=outputs,
        predicted_feature=desc.predictedFeatureName,
        predicted_probabilities=desc.predictedProbabilitiesName,
        metadata=dict(desc.metadata.userDefined),
        model_type=spec.WhichOneof("Type"),
    )


def model_spec_problems(spec: ModelSpec) -> list[str]:
    """What the app (and Vision) need from any model it bundles: one RGB image input and a
    classifier, so that `VNCoreMLRequest` returns `VNClassificationObservation`s."""
    problems = []
    images = [name for name, size in spec.inputs.items() if size is not None]
    if len(images) != 1 or len(spec.inputs) != 1:
        problems.append(f"expected exactly one image input, got {spec.inputs}")
    if not spec.predicted_feature or spec.outputs.get(spec.predicted_feature) != "stringType":
        problems.append(
            f"no string class-label output (predictedFeatureName {spec.predicted_feature!r})"
        )
    if (
        not spec.predicted_probabilities
        or spec.outputs.get(spec.predicted_probabilities) != "dictionaryType"
    ):
        problems.append(
            f"no class-probability dictionary output "
            f"(predictedProbabilitiesName {spec.predicted_probabilities!r})"
        )
    if spec.metadata.get("com.apple.coreml.model.preview.type") != "imageClassifier":
        problems.append("metadata com.apple.coreml.model.preview.type is not imageClassifier")
    return problems


def contract_problems(
    assumptions: ModelAssumptions, spec: ModelSpec, package_name: str
) -> list[str]:
    """The Swift code's assumptions about the bundled model hold for this converted model."""
    problems = []
    if package_name not in assumptions.classes:
        problems.append(
            f"the Swift code never loads {package_name}(configuration:), the class Xcode "
            f"generates from {package_name}.mlpackage (it uses {sorted(assumptions.classes)})"
        )
    for cls in sorted(assumptions.classes - {package_name}):
        problems.append(f"{cls}(configuration:) has no {cls}.mlpackage in the app")
    for name, where in assumptions.inputs:
        if name not in spec.inputs:
            problems.append(f"{where} input {name!r} is not in the model ({sorted(spec.inputs)})")
    for name, where in assumptions.outputs:
        if name not in spec.outputs:
            problems.append(f"{where} output {name!r} is not in the model ({sorted(spec.outputs)})")
    for name, where in assumptions.features:
        if name not in spec.inputs and name not in spec.outputs:
            problems.append(f"{where} feature {name!r} is not in the model")
    for key, where in assumptions.metadata_keys:
        if key not in spec.metadata:
            problems.append(f"{where} metadata key {key!r} is not in the model")
    sizes = {size for size in spec.inputs.values() if size is not None}
    for value, where in assumptions.sizes:
        if not any(value in size for size in sizes):
            problems.append(f"{where} hard-codes size {value}; the model's input is {sizes}")
    if not assumptions.reads_image_constraint:
        problems.append("the app does not read the input size from imageConstraint")
    if not assumptions.reads_class_labels:
        problems.append("the app does not read the labels from the model's classLabels")
    return problems


UTTYPE_QUERY = """
(call_expression
  (simple_identifier) @type
  (call_suffix (value_arguments
    (value_argument
      name: (value_argument_label (simple_identifier) @label)
      value: (line_string_literal) @identifier)))
  (#eq? @type "UTType")
  (#eq? @label "importedAs"))
"""


def imported_type_problems(trees: dict[str, ts.Tree], info_plist: Path) -> list[str]:
    """`UTType(importedAs:)` needs the type declared in Info.plist, or Files cannot pick it."""
    used = {
        string_literal_value(node)
        for tree in trees.values()
        for node in captures(UTTYPE_QUERY, tree.root_node).get("identifier", [])
    }
    if not info_plist.is_file():
        return [f"{info_plist} does not exist"] if used else []
    with info_plist.open("rb") as fh:
        plist = plistlib.load(fh)
    declared = {d.get("UTTypeIdentifier") for d in plist.get("UTImportedTypeDeclarations", [])}
    return [
        f"UTType(importedAs: {uti!r}) is not in {info_plist.name} UTImportedTypeDeclarations"
        for uti in sorted(u for u in used if u is not None)
        if uti not in declared
    ]


# --------------------------------------------------------------------------------------------
# The Xcode project
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>//[^\n]*|/\*.*?\*/)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<punct>[{}();=,])
    | (?P<word>[^\s{}();=,"]+)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(source: str) -> Iterator[tuple[str, str, int]]:
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise ValueError(f"unexpected character {source[pos]!r} at offset {pos}")
        kind = m.lastgroup
        if kind not in ("ws", "comment"):
            yield kind, m.group(), source.count("\n", 0, pos) + 1
        pos = m.end()


@dataclass
class RawObjects:
    """Object IDs as they appear in the text: definitions (with line numbers, duplicates kept)
    and every 24-hex-digit word used as a value."""

    definitions: list[tuple[str, int]]
    references: list[tuple[str, int]]
    root_object: str | None


HEX24 = re.compile(r"^[0-9A-F]{24}$")


def raw_objects(pbxproj_text: str) -> RawObjects:
    """Scans the old-style plist: keys of the `objects` dictionary are the object IDs."""
    definitions: list[tuple[str, int]] = []
    references: list[tuple[str, int]] = []
    root_object = None
    stack: list[str] = []  # "{" or "("
    path: list[str | None] = []  # key of each open dictionary
    key: str | None = None
    expecting_value = False
    for kind, token, line in _tokens(pbxproj_text):
        if token in ("{", "("):
            if token == "{":
                path.append(key if expecting_value else None)
                if len(path) == 3 and path[1] == "objects" and key is not None:
                    definitions.append((key, line))
            stack.append(token)
            key, expecting_value = None, False
        elif token in ("}", ")"):
            if stack and stack.pop() == "{":
                path.pop()
            key, expecting_value = None, False
        elif token == "=":
            expecting_value = True
        elif token in (";", ","):
            key, expecting_value = None, False
        else:
            word = token.strip('"') if kind == "string" else token
            if expecting_value or (stack and stack[-1] == "("):
                if HEX24.match(word.upper()) and len(path) >= 3:
                    references.append((word, line))
                if len(path) == 1 and key == "rootObject":
                    root_object = word
                if stack and stack[-1] != "(":
                    expecting_value = False
            else:
                key = word
    return RawObjects(definitions, references, root_object)


def object_id_problems(pbxproj_text: str) -> list[str]:
    """Unique, well-formed IDs; every ID used as a value is defined.

    The pbxproj loader keeps the last of two objects with the same ID, silently; Xcode's own
    behaviour with duplicates is undefined. Hence a scan of the text itself.
    """
    raw = raw_objects(pbxproj_text)
    problems = []
    counts = Counter(oid for oid, _ in raw.definitions)
    for oid, count in sorted(counts.items()):
        if count > 1:
            lines = [str(line) for o, line in raw.definitions if o == oid]
            problems.append(f"object ID {oid} is defined {count} times (lines {', '.join(lines)})")
    for oid, line in raw.definitions:
        if not HEX24.match(oid):
            problems.append(f"line {line}: object ID {oid!r} is not 24 uppercase hex digits")
    defined = set(counts)
    for oid, line in raw.references:
        if oid not in defined:
            problems.append(f"line {line}: {oid} refers to no object")
    if raw.root_object not in defined:
        problems.append(f"rootObject {raw.root_object} is not defined")
    return problems


@dataclass
class Project:
    """A loaded project.pbxproj and the directory its `<group>` paths start from."""

    pbxproj: Path
    source_root: Path
    text: str
    pbx: Any  # pbxproj.XcodeProject

    @property
    def xcodeproj_name(self) -> str:
        return self.pbxproj.parent.name

    def obj(self, oid: str) -> Any:
        return self.pbx.objects[str(oid)]

    def section(self, isa: str) -> list[Any]:
        return list(self.pbx.objects.get_objects_in_section(isa))

    @property
    def root(self) -> Any:
        return self.obj(self.pbx.rootObject)

    def target(self, name: str) -> Any:
        for oid in self.root.targets:
            target = self.obj(oid)
            if target is not None and target.name == name:
                return target
        raise LookupError(f"no target {name!r}")


def load_project(pbxproj: Path, source_root: Path | None = None) -> Project:
    """Reads (never writes) a project.pbxproj. `source_root` is the directory that holds the
    .xcodeproj (SOURCE_ROOT); tests pass it to check a mutated copy against the real files."""
    from pbxproj import XcodeProject

    text_ = pbxproj.read_text("utf-8")
    root = source_root if source_root is not None else pbxproj.parent.parent
    return Project(pbxproj, root, text_, XcodeProject.load(str(pbxproj)))


GROUP_ISAS = ("PBXGroup", "PBXVariantGroup", "XCVersionGroup")
#: Source trees outside the repository: built products and SDK/toolchain files.
EXTERNAL_TREES = {"BUILT_PRODUCTS_DIR", "SDKROOT", "DEVELOPER_DIR", "PLATFORM_DIR"}


def _get(obj: Any, key: str) -> Any:
    return obj[key] if key in obj.get_keys() else None


def resolve_paths(project: Project) -> tuple[dict[str, Path | None], list[str]]:
    """Filesystem path of every group and file reference, as Xcode resolves it.

    `<group>` paths are relative to the parent group's directory (a group with only a name
    adds nothing), `SOURCE_ROOT` to the directory holding the .xcodeproj, `<absolute>` stands
    alone. References into BUILT_PRODUCTS_DIR or an SDK map to None: nothing to check.
    """
    parents: dict[str, str] = {}
    problems = []
    for isa in GROUP_ISAS:
        for group in project.section(isa):
            for child in _get(group, "children") or []:
                if str(child) in parents:
                    problems.append(f"{child} is a child of two groups")
                parents[str(child)] = group.get_id()
    main_group = str(project.root.mainGroup)
    resolved: dict[str, Path | None] = {}

    def resolve(oid: str, depth: int = 0) -> Path | None:
        if oid in resolved:
            return resolved[oid]
        if depth > 64:
            raise ValueError(f"group cycle at {oid}")
        obj = project.obj(oid)
        tree = _get(obj, "sourceTree") or "<group>"
        path = _get(obj, "path")
        if tree in EXTERNAL_TREES:
            result = None
        elif tree == "<absolute>":
            result = Path(path) if path else None
        elif tree == "SOURCE_ROOT":
            result = project.source_root / path if path else project.source_root
        elif tree == "<group>":
            if oid == main_group:
                base: Path | None = project.source_root
            elif oid in parents:
                base = resolve(parents[oid], depth + 1)
            else:
                problems.append(f"{oid} ({path}) is in no group")
                base = project.source_root
            result = (base / path if path else base) if base is not None else None
        else:
            problems.append(f"{oid} ({path}) has unsupported sourceTree {tree!r}")
            result = None
        resolved[oid] = result
        return result

    for isa in (*GROUP_ISAS, "PBXFileReference"):
        for obj in project.section(isa):
            resolve(obj.get_id())
    return resolved, problems


def file_reference_problems(project: Project) -> list[str]:
    """Every group folder and file reference resolves to something on disk."""
    resolved, problems = resolve_paths(project)
    for isa in (*GROUP_ISAS, "PBXFileReference"):
        for obj in project.section(isa):
            path = resolved.get(obj.get_id())
            if path is None:
                continue
            if isa != "PBXFileReference" and _get(obj, "path") is None:
                continue  # a name-only group is not a folder
            if not path.exists():
                shown = _get(obj, "path") or _get(obj, "name")
                problems.append(f"{isa} {obj.get_id()} ({shown}) -> {path} does not exist")
    if project.section("PBXFileSystemSynchronizedRootGroup"):
        problems.append("synchronized folders are used; this project lists every file explicitly")
    return problems


def build_phase_files(project: Project, target_name: str, isa: str) -> list[Any]:
    """File references in a target's build phase of type `isa`."""
    refs = []
    for phase_id in project.target(target_name).buildPhases:
        phase = project.obj(phase_id)
        if phase is None or phase.isa != isa:
            continue
        for build_file_id in phase.files:
            build_file = project.obj(build_file_id)
            file_ref = _get(build_file, "fileRef") if build_file is not None else None
            ref = project.obj(file_ref) if file_ref is not None else None
            if ref is not None:
                refs.append(ref)
    return refs


def swift_source_problems(project: Project, target_name: str, app_dir: Path) -> list[str]:
    """Every .swift file in the app folder is compiled, and only those."""
    resolved, _ = resolve_paths(project)
    compiled = {
        resolved[ref.get_id()]
        for ref in build_phase_files(project, target_name, "PBXSourcesBuildPhase")
        if _get(ref, "lastKnownFileType") == "sourcecode.swift"
    }
    on_disk = set(swift_files(app_dir))
    problems = [f"{p} is not in the Sources phase" for p in sorted(on_disk - compiled)]
    problems += [f"{p} is compiled but is not in {app_dir}" for p in sorted(compiled - on_disk)]
    return problems


def model_reference_problems(project: Project, target_name: str, model_name: str) -> list[str]:
    """The .mlpackage is a source (Xcode compiles it and generates the class), not a resource."""
    problems = []
    package = f"{model_name}.mlpackage"
    refs = [
        r for r in project.section("PBXFileReference") if Path(str(_get(r, "path"))).name == package
    ]
    if len(refs) != 1:
        return [f"expected one file reference to {package}, found {len(refs)}"]
    ref = refs[0]
    if _get(ref, "lastKnownFileType") != "folder.mlpackage":
        problems.append(f"{package} has lastKnownFileType {_get(ref, 'lastKnownFileType')!r}")
    sources = build_phase_files(project, target_name, "PBXSourcesBuildPhase")
    if ref.get_id() not in {r.get_id() for r in sources}:
        problems.append(f"{package} is not in the {target_name} Sources build phase")
    resources = build_phase_files(project, target_name, "PBXResourcesBuildPhase")
    if ref.get_id() in {r.get_id() for r in resources}:
        problems.append(f"{package} is copied as a resource; Xcode would not compile it")
    return problems


def model_package_path(project: Project, model_name: str) -> Path | None:
    resolved, _ = resolve_paths(project)
    for ref in project.section("PBXFileReference"):
        if Path(str(_get(ref, "path"))).name == f"{model_name}.mlpackage":
            return resolved.get(ref.get_id())
    return None


def _settings(config: Any) -> dict[str, Any]:
    bs = config.buildSettings
    return {k: bs[k] for k in bs.get_keys()}


def configurations(project: Project, list_id: str) -> dict[str, dict[str, Any]]:
    config_list = project.obj(list_id)
    return {
        str(project.obj(c).name): _settings(project.obj(c)) for c in config_list.buildConfigurations
    }


def effective_settings(project: Project, target_name: str) -> dict[str, dict[str, Any]]:
    """Target settings over project settings of the same configuration (no xcconfig files)."""
    project_level = configurations(project, project.root.buildConfigurationList)
    target_level = configurations(project, project.target(target_name).buildConfigurationList)
    return {
        name: {**project_level.get(name, {}), **settings}
        for name, settings in target_level.items()
    }


def info_plist_problems(
    project: Project, target_name: str, required: Iterable[str] = REQUIRED_INFOPLIST_KEYS
) -> list[str]:
    """Generated Info.plist with the privacy strings in every configuration."""
    problems = []
    for name, settings in effective_settings(project, target_name).items():
        if settings.get("GENERATE_INFOPLIST_FILE") != "YES":
            problems.append(f"{name}: GENERATE_INFOPLIST_FILE is not YES")
        for key in required:
            if not str(settings.get(key, "")).strip():
                problems.append(f"{name}: {key} is not set")
        partial = settings.get("INFOPLIST_FILE")
        if partial:
            path = project.source_root / str(partial)
            try:
                with path.open("rb") as fh:
                    plistlib.load(fh)
            except (OSError, plistlib.InvalidFileException) as exc:
                problems.append(f"{name}: INFOPLIST_FILE {partial} cannot be read: {exc}")
    return problems


def _version(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split("."))


def deployment_target_problems(
    project: Project, target_name: str, minimum: tuple[int, int] = MIN_IOS
) -> list[str]:
    """The same IPHONEOS_DEPLOYMENT_TARGET wherever it is set, and at least `minimum`."""
    problems = []
    found = {}
    for config in project.section("XCBuildConfiguration"):
        value = _settings(config).get("IPHONEOS_DEPLOYMENT_TARGET")
        if value is not None:
            found[f"{config.get_id()} ({config.name})"] = str(value)
    if len(set(found.values())) > 1:
        problems.append(f"IPHONEOS_DEPLOYMENT_TARGET differs between configurations: {found}")
    for name, settings in effective_settings(project, target_name).items():
        value = settings.get("IPHONEOS_DEPLOYMENT_TARGET")
        if value is None:
            problems.append(f"{name}: IPHONEOS_DEPLOYMENT_TARGET is not set")
            continue
        try:
            too_low = _version(str(value)) < minimum
        except ValueError:
            problems.append(f"{name}: IPHONEOS_DEPLOYMENT_TARGET {value!r} is not a version")
            continue
        if too_low:
            floor = ".".join(map(str, minimum))
            problems.append(f"{name}: IPHONEOS_DEPLOYMENT_TARGET {value} is below {floor}")
    return problems


def swift_settings_problems(project: Project, target_name: str) -> list[str]:
    """Swift 5 language mode and an iOS SDK in every configuration."""
    problems = []
    for name, settings in effective_settings(project, target_name).items():
        if str(settings.get("SWIFT_VERSION")) not in ("5", "5.0"):
            problems.append(f"{name}: SWIFT_VERSION is {settings.get('SWIFT_VERSION')!r}, not 5.0")
        if settings.get("SDKROOT") != "iphoneos":
            problems.append(f"{name}: SDKROOT is {settings.get('SDKROOT')!r}")
    return problems


def asset_catalog_problems(project: Project, target_name: str) -> list[str]:
    """Asset catalogs in the Resources phase parse, their images exist, and the app icon and
    accent color named in the build settings are in them."""
    resolved, _ = resolve_paths(project)
    catalogs = [
        resolved[ref.get_id()]
        for ref in build_phase_files(project, target_name, "PBXResourcesBuildPhase")
        if _get(ref, "lastKnownFileType") == "folder.assetcatalog"
    ]
    problems = []
    sets: set[str] = set()
    for catalog in catalogs:
        if catalog is None or not catalog.is_dir():
            problems.append(f"asset catalog {catalog} does not exist")
            continue
        for contents in sorted(catalog.rglob("Contents.json")):
            try:
                data = json.loads(contents.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{contents}: {exc}")
                continue
            sets.add(contents.parent.name)
            for image in data.get("images", []):
                name = image.get("filename")
                if name and not (contents.parent / name).is_file():
                    problems.append(f"{contents} names {name}, which does not exist")
    for name, settings in effective_settings(project, target_name).items():
        icon = settings.get("ASSETCATALOG_COMPILER_APPICON_NAME")
        if icon and f"{icon}.appiconset" not in sets:
            problems.append(f"{name}: app icon {icon} is in no asset catalog")
        accent = settings.get("ASSETCATALOG_COMPILER_GLOBAL_ACCENT_COLOR_NAME")
        if accent and f"{accent}.colorset" not in sets:
            problems.append(f"{name}: accent color {accent} is in no asset catalog")
    return problems


def scheme_problems(scheme: Path, project: Project, target_name: str) -> list[str]:
    """The shared scheme builds and runs the app target of this project."""
    try:
        root = ET.parse(scheme).getroot()
    except (OSError, ET.ParseError) as exc:
        return [f"{scheme}: {exc}"]
    target = project.target(target_name)
    product = project.obj(target.productReference)
    expected = {
        "BuildableIdentifier": "primary",
        "BlueprintIdentifier": target.get_id(),
        "BuildableName": str(_get(product, "path")),
        "BlueprintName": target_name,
        "ReferencedContainer": f"container:{project.xcodeproj_name}",
    }
    problems = []
    refs = root.findall(".//BuildableReference")
    if not refs:
        problems.append(f"{scheme.name} has no BuildableReference")
    for ref in refs:
        for attr, want in expected.items():
            if ref.get(attr) != want:
                problems.append(f"{scheme.name}: {attr} is {ref.get(attr)!r}, expected {want!r}")
    running = [
        e for e in root.findall("./BuildAction/BuildActionEntries/BuildActionEntry")
        if e.get("buildForRunning") == "YES"
    ]
    if not running:
        problems.append(f"{scheme.name}: no BuildActionEntry builds for running")
    if root.find("./LaunchAction/BuildableProductRunnable/BuildableReference") is None:
        problems.append(f"{scheme.name}: the LaunchAction runs nothing")
    return problems


def parse_all_swift(files: Iterable[Path], base: Path = IOS_DEMO) -> dict[str, ts.Tree]:
    return {str(p.relative_to(base)): parse_swift(p.read_bytes()) for p in files}
