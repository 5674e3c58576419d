"""Broken packages: every way an ``.mlpackage`` can be damaged is one clear error, never a crash.

The contract (README, Commands): bad input is one line ``mnv1-coreml: error: ...`` on stderr,
exit code 2, no traceback and nothing written; the Python API raises the project's own errors
(``InterpreterError``, a ``UserError``) with the same message. A well-formed package whose
numbers are wrong is a verdict instead: ``validate`` exits 1.

One fp16 0.25-128 package is converted per session; each case damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mnv1_coreml.cli import main
from mnv1_coreml.coreml import ct
from mnv1_coreml.errors import UserError
from mnv1_coreml.mil import InterpreterError, ReferenceModel

from .conftest import assert_one_line

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "golden" / "random-0_0.25_128"
SPEC = Path("Data/com.apple.CoreML/model.mlmodel")
WEIGHTS = Path("Data/com.apple.CoreML/weights/weight.bin")
FP32 = 65568  # ArrayFeatureType.FLOAT32


@pytest.fixture(scope="session")
def base_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fp16 0.25-128 random-weight package (not validated at birth: the tests do that)."""
    from mnv1_coreml.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("broken_base") / "MobileNetV1.mlpackage"
    convert(ConvertOptions(alpha=0.25, res=128, weights="random", precision="fp16",
                           output=out, validate=False))
    return out


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder for ``evaluate`` (class folder ``tabby``) whose image ``predict`` reads."""
    from mnv1_coreml.images import packaged_image_dir

    root = tmp_path_factory.mktemp("broken_data")
    (root / "tabby").mkdir()
    shutil.copy(packaged_image_dir() / "chelsea.png", root / "tabby" / "chelsea.png")
    return root


# --------------------------------------------------------------------------------------------
# damage, one function per kind


def _edit_spec(pkg: Path, edit: Callable[[object], None]) -> None:
    spec = ct.utils.load_spec(str(pkg))
    edit(spec)
    (pkg / SPEC).write_bytes(spec.SerializeToString())


def _block(spec):
    fn = spec.mlProgram.functions["main"]
    return fn.block_specializations[fn.opset]


def _blobs(spec) -> list:
    """(const op, its val) of every blob-stored const, in program order."""
    return [(op, op.attributes["val"]) for op in _block(spec).operations
            if op.type == "const" and op.attributes["val"].HasField("blobFileValue")]


def _blob_header(pkg: Path) -> int:
    return _blobs(ct.utils.load_spec(str(pkg)))[0][1].blobFileValue.offset


def _patch_weights(field: int, fmt: str, value: int) -> Callable[[Path], None]:
    """Overwrite one field of the first blob's 64-byte header (sentinel, dtype, size, offset)."""
    def damage(pkg: Path) -> None:
        path = pkg / WEIGHTS
        data = bytearray(path.read_bytes())
        struct.pack_into(fmt, data, _blob_header(pkg) + field, value)
        path.write_bytes(bytes(data))
    return damage


def _write(rel: Path | str, data: bytes) -> Callable[[Path], None]:
    return lambda pkg: (pkg / rel).write_bytes(data)


def _truncate(rel: Path | str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(pkg: Path) -> None:
        path = pkg / rel
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return damage


def _remove(rel: Path | str) -> Callable[[Path], None]:
    def damage(pkg: Path) -> None:
        path = pkg / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _manifest(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(pkg: Path) -> None:
        doc = json.loads((pkg / "Manifest.json").read_text())
        edit(doc)
        (pkg / "Manifest.json").write_text(json.dumps(doc))
    return damage


def _root_entry(doc: dict) -> dict:
    return doc["itemInfoEntries"][doc["rootModelIdentifier"]]


def _spec(edit: Callable[[object], None]) -> Callable[[Path], None]:
    return lambda pkg: _edit_spec(pkg, edit)


def _retype(kind: str) -> Callable[[Path], None]:
    """Keep the description, make the model a ``neuralNetwork`` or a ``pipeline``."""
    def damage(pkg: Path) -> None:
        spec = ct.utils.load_spec(str(pkg))
        other = ct.proto.Model_pb2.Model()
        other.specificationVersion = spec.specificationVersion
        other.description.CopyFrom(spec.description)
        if kind == "pipeline":
            other.pipeline.models.add().CopyFrom(spec)
        else:
            other.neuralNetwork.SetInParent()
        (pkg / SPEC).write_bytes(other.SerializeToString())
    return damage


def _first_conv(spec):
    return next(op for op in _block(spec).operations if op.type == "conv")


def _undefined_input(spec) -> None:
    _first_conv(spec).inputs["x"].arguments[0].name = "no_such_var"


def _conv_output_shape(spec) -> None:
    _first_conv(spec).outputs[0].type.tensorType.dimensions[2].constant.size += 3


def _weight_shape(spec) -> None:
    op, val = _blobs(spec)[0]  # the blob holds half of what the declared shape needs
    for dims in (op.outputs[0].type.tensorType.dimensions, val.type.tensorType.dimensions):
        dims[0].constant.size *= 2


def _blob_offset(offset: int | None = None, shift: int = 0) -> Callable[[object], None]:
    def edit(spec) -> None:
        value = _blobs(spec)[0][1].blobFileValue
        value.offset = value.offset + shift if offset is None else offset
    return edit


def _blob_file(spec) -> None:
    _blobs(spec)[0][1].blobFileValue.fileName = "@model_path/weights/other.bin"


def _blob_dtype(spec) -> None:
    op, val = _blobs(spec)[0]  # says fp32 where the blob holds fp16
    fp32 = ct.proto.MIL_pb2.DataType.Value("FLOAT32")
    val.type.tensorType.dataType = fp32
    op.outputs[0].type.tensorType.dataType = fp32


def _opset(name: str, move_block: bool) -> Callable[[object], None]:
    def edit(spec) -> None:
        fn = spec.mlProgram.functions["main"]
        if move_block:
            fn.block_specializations[name].CopyFrom(fn.block_specializations[fn.opset])
            del fn.block_specializations[fn.opset]
        fn.opset = name
    return edit


def _rename_main(spec) -> None:
    fns = spec.mlProgram.functions
    fns["other"].CopyFrom(fns["main"])
    del fns["main"]


def _classes(spec):
    block = _block(spec)
    op = next(op for op in block.operations if op.type == "classify")
    return op.inputs["classes"].arguments[0].value


def _drop_label(spec) -> None:
    value = _classes(spec)
    del value.immediateValue.list.values[-1]
    value.type.listType.length.constant.size -= 1


def _drop_all_labels(spec) -> None:
    value = _classes(spec)
    del value.immediateValue.list.values[:]
    value.type.listType.length.constant.size = 0


def _rename_probs(spec) -> None:
    desc = spec.description
    next(o for o in desc.output if o.name == desc.predictedProbabilitiesName).name = "renamed"
    desc.predictedProbabilitiesName = "renamed"


def _extra_output(spec) -> None:
    extra = spec.description.output.add()
    extra.CopyFrom(spec.description.output[0])
    extra.name = "extra"


def _image_size(spec) -> None:
    image = spec.description.input[0].type.imageType
    image.width = image.height = 96


def _symlink_loop(rel: Path | str) -> Callable[[Path], None]:
    def damage(pkg: Path) -> None:
        path = pkg / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.symlink(path.name, path)
    return damage


def _spec_is_dir(pkg: Path) -> None:
    (pkg / SPEC).unlink()
    (pkg / SPEC).mkdir()


#: case -> (damage, words the one-line error must contain). Each is exit 2 on every command.
BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "manifest_missing": (_remove("Manifest.json"), ("has no Manifest.json",)),
    "manifest_empty": (_write("Manifest.json", b""), ("Manifest.json is unreadable",)),
    "manifest_garbage": (_write("Manifest.json", b"{not json"), ("Manifest.json is unreadable",)),
    "manifest_binary": (_write("Manifest.json", b"\xff\xfe\x00garbage"), ("unreadable",)),
    "manifest_list": (_write("Manifest.json", b"[1, 2]"), ("Manifest.json is malformed",)),
    "manifest_no_entries": (_manifest(lambda d: d.pop("itemInfoEntries")), ("malformed",)),
    "manifest_root_id_wrong": (
        _manifest(lambda d: d.update(rootModelIdentifier="0000-dead")),
        ("rootModelIdentifier '0000-dead' is not one of its items",)),
    "manifest_points_nowhere": (
        _manifest(lambda d: _root_entry(d).update(path="com.apple.CoreML/nope.mlmodel")),
        ("Data/com.apple.CoreML/nope.mlmodel, is missing",)),
    "manifest_points_outside": (
        _manifest(lambda d: _root_entry(d).update(path="../../../../etc/no/such")),
        ("is missing",)),
    "manifest_points_at_dir": (
        _manifest(lambda d: _root_entry(d).update(path="com.apple.CoreML/weights")),
        ("is not a file",)),
    "manifest_format_version": (
        _manifest(lambda d: d.update(fileFormatVersion="9.0.0")),
        ("not a readable Core ML model", "9.0.0")),
    "spec_missing": (_remove(SPEC), ("model spec", "model.mlmodel, is missing")),
    "spec_zero_length": (_write(SPEC, b""), ("holds no model",)),
    "spec_truncated": (_truncate(SPEC), ("not a readable Core ML model",)),
    "spec_garbage": (_write(SPEC, b"\x07not a protobuf" * 10), ("not a readable Core ML model",)),
    "spec_is_dir": (_spec_is_dir, ("is not a file",)),
    "spec_neural_network": (_retype("neuralNetwork"), ("neuralNetwork model", "ML Program")),
    "spec_pipeline": (_retype("pipeline"), ("pipeline model", "only ML Programs")),
    "spec_version_unknown": (_spec(lambda s: setattr(s, "specificationVersion", 99)),
                             ("specification version 99",)),
    "program_version_unknown": (_spec(lambda s: setattr(s.mlProgram, "version", 99)),
                                ("format version 99",)),
    "opset_unknown": (_spec(_opset("CoreML99", move_block=True)), ("opset 'CoreML99'",)),
    "opset_without_block": (_spec(_opset("CoreML7", move_block=False)),
                            ("no program for its opset 'CoreML7'",)),
    "no_main_function": (_spec(_rename_main), ("no 'main' function", "other")),
    "no_functions": (_spec(lambda s: s.mlProgram.functions.clear()), ("no 'main' function",)),
    "undefined_var": (_spec(_undefined_input), ("is corrupt", "no_such_var")),
    "undefined_output": (_spec(lambda s: _block(s).outputs.__setitem__(0, "no_such_output")),
                         ("described outputs", "no_such_output")),
    "weight_shape_vs_blob": (_spec(_weight_shape), ("is corrupt", "cannot reshape")),
    "op_output_shape": (_spec(_conv_output_shape), ("is corrupt", "Mismatch between var types")),
    "input_renamed": (_spec(lambda s: setattr(s.description.input[0], "name", "img")),
                      ("described inputs ['img']", "['image']")),
    "no_described_inputs": (_spec(lambda s: s.description.ClearField("input")),
                            ("describes no inputs",)),
    "image_size_vs_program": (_spec(_image_size), ("described as 96x96", "takes 128x128")),
    "colour_space_unknown": (
        _spec(lambda s: setattr(s.description.input[0].type.imageType, "colorSpace", 77)),
        ("colour space 77",)),
    "output_renamed": (_spec(_rename_probs), ("described outputs", "renamed")),
    "output_extra": (_spec(_extra_output), ("described outputs", "extra")),
    "predicted_feature_unknown": (
        _spec(lambda s: setattr(s.description, "predictedFeatureName", "nope")),
        ("predictedFeatureName 'nope'",)),
    "labels_count_vs_program": (_spec(_drop_label), ("is corrupt", "number of classes")),
    "labels_empty": (_spec(_drop_all_labels), ("is corrupt", "empty list")),
    "weights_dir_missing": (_remove("Data/com.apple.CoreML/weights"), ("'weights'", "missing")),
    "weights_dir_symlink_loop": (_symlink_loop("Data/com.apple.CoreML/weights"),
                                 ("looping symbolic link",)),
    "weights_missing": (_remove(WEIGHTS), ("is corrupt", "Could not open", "weight.bin")),
    "weights_symlink_loop": (_symlink_loop(WEIGHTS), ("is corrupt", "weight.bin")),
    "weights_zero_length": (_write(WEIGHTS, b""), ("is corrupt", "weight.bin")),
    "weights_truncated": (_truncate(WEIGHTS), ("is corrupt", "index out of bounds")),
    "weights_truncated_to_header": (_truncate(WEIGHTS, 0.0001), ("is corrupt", "out of bounds")),
    "weights_garbage": (_write(WEIGHTS, b"\x01garbage" * 1000), ("is corrupt", "version 2")),
    "weights_file_version": (lambda p: _patch(p / WEIGHTS, 4, "<I", 7), ("is corrupt", "version")),
    "blob_bad_sentinel": (_patch_weights(0, "<I", 0x12345678), ("is corrupt", "sentinel")),
    "blob_wrong_dtype": (_patch_weights(4, "<I", 2), ("is corrupt", "data type")),
    "blob_unknown_dtype": (_patch_weights(4, "<I", 99), ("is corrupt", "data type")),
    "blob_size_huge": (_patch_weights(8, "<Q", 2**40), ("is corrupt", "out of bounds")),
    "blob_data_offset_huge": (_patch_weights(16, "<Q", 2**40), ("is corrupt", "out of bounds")),
    "spec_blob_offset_out_of_range": (_spec(_blob_offset(10**9)), ("is corrupt", "out of bounds")),
    "spec_blob_offset_misaligned": (_spec(_blob_offset(shift=8)), ("is corrupt", "sentinel")),
    "spec_blob_offset_zero": (_spec(_blob_offset(0)), ("is corrupt", "sentinel")),
    "spec_blob_other_file": (_spec(_blob_file), ("is corrupt", "other.bin")),
    "spec_blob_dtype": (_spec(_blob_dtype), ("is corrupt", "data type")),
}


def _patch(path: Path, offset: int, fmt: str, value: int) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


def _damaged(base: Path, tmp_path: Path, case: str) -> tuple[Path, tuple[str, ...]]:
    pkg = tmp_path / f"input {case} ✓.mlpackage"  # spaces and non-ASCII in every path
    shutil.copytree(base, pkg, symlinks=True)
    damage, needles = BROKEN[case]
    damage(pkg)
    return pkg, needles


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_cli_error(code: int, err: str, *needles: str) -> str:
    """Exit 2 and exactly one non-empty stderr line: the error, no traceback, no progress."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("mnv1-coreml: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------------------
# the matrix


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_api_raises_one_line_interpreter_error(base_package: Path, tmp_path: Path,
                                               case: str) -> None:
    pkg, needles = _damaged(base_package, tmp_path, case)
    with pytest.raises(InterpreterError) as exc:
        ReferenceModel.load(pkg).predict(np.zeros((128, 128, 3), np.uint8))
    assert_one_line(exc, str(pkg), *needles)
    assert "convert" in str(exc.value) or "pass" in str(exc.value)  # says what to do


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_is_one_line_exit_2(base_package: Path, tmp_path: Path, capsys,
                                     case: str) -> None:
    pkg, needles = _damaged(base_package, tmp_path, case)
    report = tmp_path / "report.json"
    code, _, err = cli(["validate", str(pkg), "--golden", str(GOLDEN), "--json", str(report)],
                       capsys)
    assert_cli_error(code, err, str(pkg), *needles)
    assert not report.exists()  # nothing half-written


#: One case per class of damage, through every other command that reads a package.
ACROSS_COMMANDS = ["manifest_root_id_wrong", "spec_garbage", "spec_neural_network",
                   "opset_without_block", "output_renamed", "labels_empty", "weights_truncated",
                   "blob_bad_sentinel", "op_output_shape"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "layers"])
@pytest.mark.parametrize("case", ACROSS_COMMANDS)
def test_other_commands_are_one_line_exit_2(base_package: Path, image_dir: Path,
                                            tmp_path: Path, capsys, case: str,
                                            command: str) -> None:
    pkg, needles = _damaged(base_package, tmp_path, case)
    out = tmp_path / "out.json"
    args = {
        "predict": ["predict", str(pkg), str(image_dir), "--json", str(out)],
        "evaluate": ["evaluate", str(pkg), "--data", str(image_dir), "--no-pytorch",
                     "--jobs", "0", "--json", str(out)],
        "layers": ["validate", str(pkg), "--golden", str(GOLDEN), "--layers", "--json",
                   str(out)],
    }[command]
    code, _, err = cli(args, capsys)
    line = assert_cli_error(code, err, *needles)
    assert line.count(str(pkg)) == 1, line  # the package is named once
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# paths that are not packages


def _not_a_package(tmp_path: Path, base: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.mlpackage"
    if kind == "empty_dir":
        path.mkdir()
    elif kind == "junk_dir":
        path.mkdir()
        (path / "readme.txt").write_text("hello")
    elif kind == "file":
        path.write_bytes(b"not a directory")
    elif kind == "mlmodel_file":
        path = tmp_path / "model.mlmodel"
        path.write_bytes(ct.utils.load_spec(str(base)).SerializeToString())
    elif kind == "symlink_loop":
        os.symlink(path.name, path)
    elif kind == "dangling_symlink":
        os.symlink(tmp_path / "gone", path)
    return path


PATHS = {
    "missing": ("no such model package",),
    "empty_dir": ("has no Manifest.json",),
    "junk_dir": ("has no Manifest.json",),
    "file": ("not an .mlpackage directory",),
    "mlmodel_file": (".mlmodel file", "only ML Programs"),
    "symlink_loop": ("symbolic link", "loops"),
    "dangling_symlink": ("symbolic link", "does not exist"),
}


@pytest.mark.parametrize("kind", sorted(PATHS))
def test_paths_that_are_not_packages(base_package: Path, image_dir: Path, tmp_path: Path,
                                     capsys, kind: str) -> None:
    path = _not_a_package(tmp_path, base_package, kind)
    with pytest.raises(InterpreterError) as exc:
        ReferenceModel.load(path)
    assert_one_line(exc, str(path), *PATHS[kind])
    for args in (["validate", str(path), "--golden", str(GOLDEN)],
                 ["predict", str(path), str(image_dir)]):
        code, _, err = cli(args, capsys)
        assert_cli_error(code, err, str(path), *PATHS[kind])


def test_unreadable_package(base_package: Path, tmp_path: Path, capsys,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod cannot be tested as root (CI containers): refuse access the way the OS would
    pkg = tmp_path / "locked.mlpackage"
    shutil.copytree(base_package, pkg)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != pkg and real(p, mode))
    with pytest.raises(InterpreterError) as exc:
        ReferenceModel.load(pkg)
    assert_one_line(exc, str(pkg), "permission denied", "chmod")
    code, _, err = cli(["validate", str(pkg), "--golden", str(GOLDEN)], capsys)
    assert_cli_error(code, err, str(pkg), "readable")  # typer's check or ours: both say so


def test_unreadable_weights(base_package: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "locked.mlpackage"
    shutil.copytree(base_package, pkg)
    real = os.access
    weights = pkg / "Data/com.apple.CoreML/weights"
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != weights and real(p, mode))
    with pytest.raises(InterpreterError) as exc:
        ReferenceModel.load(pkg)
    assert_one_line(exc, "weights cannot be read (permission denied)")


# --------------------------------------------------------------------------------------------
# well-formed packages: verdicts, not errors


def test_good_package_under_unicode_path_with_spaces_passes(base_package: Path,
                                                            tmp_path: Path, capsys) -> None:
    folder = tmp_path / "ünï cödé dir"
    folder.mkdir()
    pkg = folder / "mödel 1 ✓.mlpackage"
    shutil.copytree(base_package, pkg)
    os.symlink(pkg, tmp_path / "link.mlpackage")  # a symlink to a package is that package
    code, out, _ = cli(["validate", str(tmp_path / "link.mlpackage"), "--golden", str(GOLDEN)],
                       capsys)
    assert code == 0 and "validate PASS" in out, out


def test_wrong_numbers_are_a_failed_validation(base_package: Path, tmp_path: Path,
                                               capsys) -> None:
    pkg = tmp_path / "scaled.mlpackage"
    shutil.copytree(base_package, pkg)
    header = _blob_header(pkg)  # the first conv's weights, x3: well-formed, wrong
    data = bytearray((pkg / WEIGHTS).read_bytes())
    _, dtype, size, offset = struct.unpack_from("<IIQQ", data, header)
    assert dtype == 1  # fp16
    arr = np.frombuffer(bytes(data[offset:offset + size]), np.float16)
    data[offset:offset + size] = (arr * 3).astype(np.float16).tobytes()
    (pkg / WEIGHTS).write_bytes(bytes(data))
    code, out, err = cli(["validate", str(pkg), "--golden", str(GOLDEN)], capsys)
    assert code == 1 and "validate FAIL" in out and "max abs error" in out, out + err
    assert "Traceback" not in err


def test_package_without_labels_is_a_failed_contract(base_package: Path, tmp_path: Path,
                                                     capsys) -> None:
    pkg = tmp_path / "nolabels.mlpackage"
    shutil.copytree(base_package, pkg)

    def drop_classifier(spec) -> None:  # softmax probabilities as the only output
        block = _block(spec)
        classify = next(op for op in block.operations if op.type == "classify")
        probs = classify.inputs["probabilities"].arguments[0].name
        kept = [op for op in block.operations if op.type != "classify"]
        del block.operations[:]
        block.operations.extend(kept)
        del block.outputs[:]
        block.outputs.append(probs)
        desc = spec.description
        out = ct.proto.Model_pb2.FeatureDescription()
        out.name = probs
        out.type.multiArrayType.shape.extend([1, 1000])
        out.type.multiArrayType.dataType = FP32
        del desc.output[:]
        desc.output.append(out)
        desc.predictedFeatureName = desc.predictedProbabilitiesName = ""

    _edit_spec(pkg, drop_classifier)
    for extra in ([], ["--layers"]):
        code, out, err = cli(["validate", str(pkg), "--golden", str(GOLDEN), *extra], capsys)
        assert code == 1, out + err
        assert "validate FAIL" in out and "not a classifier" in out


def test_library_errors_are_user_errors(base_package: Path, tmp_path: Path) -> None:
    from mnv1_coreml.predict import ImageClassifier
    from mnv1_coreml.validation import validate

    pkg, needles = _damaged(base_package, tmp_path, "weights_truncated")
    for call in (lambda: ImageClassifier(pkg), lambda: validate(pkg, GOLDEN)):
        with pytest.raises(UserError) as exc:
            call()
        assert_one_line(exc, str(pkg), *needles)


@pytest.fixture(scope="session")
def plain_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny non-MobileNet image classifier from plain ``ct.convert`` (5 classes, 32x32)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(torch.relu(self.conv(x)).mean((2, 3))), 1)

    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32)
    traced = torch.jit.trace(Net().eval(), x)
    model = ct.convert(traced, inputs=[ct.ImageType(name="image", shape=x.shape, scale=1 / 255)],
                       classifier_config=ct.ClassifierConfig(list("abcde")),
                       convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15)
    out = tmp_path_factory.mktemp("plain") / "Plain.mlpackage"
    model.save(str(out))
    return out


@pytest.mark.parametrize("case", [None, "weights_truncated", "blob_bad_sentinel",
                                  "output_renamed", "spec_garbage", "undefined_var"])
def test_predict_on_a_plain_coremltools_package(plain_package: Path, image_dir: Path,
                                                tmp_path: Path, capsys, case: str | None) -> None:
    if case is None:
        code, out, err = cli(["predict", str(plain_package), str(image_dir)], capsys)
        assert code == 0 and "image input 32x32, classify output" in out, out + err
        return
    pkg, needles = _damaged(plain_package, tmp_path, case)
    code, _, err = cli(["predict", str(pkg), str(image_dir)], capsys)
    assert_cli_error(code, err, str(pkg), *needles)
    with pytest.raises(InterpreterError) as exc:
        ReferenceModel.load(pkg)
    assert_one_line(exc, str(pkg), *needles)
