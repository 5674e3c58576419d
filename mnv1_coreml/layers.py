"""``validate --layers``: where does a package leave PyTorch? Compare every layer's output.

The package side reads intermediate values: the reference interpreter can hand back any var of
the program, and the Core ML runtime (macOS) can be asked for them by re-exposing vars as outputs
(see :mod:`.backends`). Which var is which layer follows from the program's *structure*, never
from the names coremltools generated:

* the 27 ``conv`` ops in program order are the stem, then each block's depthwise conv
  (``groups`` == channels, 3x3) and pointwise conv (1x1, ``groups`` 1); their weight shapes are
  checked against MobileNet V1's at the model's alpha, and each conv's input must come from the
  previous layer (through casts, quantize/dequantize pairs and TF-SAME ``pad`` ops);
* after each conv, through casts and elementwise affine ops with constants (a BatchNorm that
  was not folded into the conv), comes its activation (``clip``/``relu``/``relu6``);
* the global pool is the ``reduce_mean`` or ``avg_pool`` that the last activation feeds;
* the classifier is the ``linear`` (or ``matmul`` [+ ``add``]) whose result feeds the softmax.

The value taken for a layer is its output after the activation, followed through casts and
quantize/dequantize ops to the value the next layer consumes: that is what the rest of the
network sees, so an fp16 rounding or activation quantization that belongs to this layer is
charged to it, not to the next one. Weights may be plain consts or constexpr ops (palettized,
int8); only their shapes matter here.

The PyTorch side is forward hooks on the model rebuilt from the golden's weights (its manifest
records the spec, SHA-256 and settings): the ``ConvBnAct`` modules' outputs (after BatchNorm and
the activation, which equals the folded conv), the pool and the classifier.

Per layer and image: max abs error, relative error (max abs over the layer's activation range,
the golden's max - min over all images), cosine and PSNR = 10 log10(range^2 / MSE); a row reports
the worst image. A layer is ``ok`` when its PSNR is above the kind's floor *and* the error it
adds itself is small: the step PSNR, 10 log10 of peak^2 over the growth of the normalised error
power since the previous layer (-10 log10(10^(-PSNR/10) - 10^(-PSNR_prev/10))). fp16 rounding
and palettes add a little error at every layer, so PSNR sinks slowly (and may fall by 15 dB at
the first layer whose palette is lossy, from 80 dB); a broken layer adds error at the level of
the signal, so its step PSNR is near its own PSNR, tens of dB below any healthy layer's. See
:data:`LAYER_THRESHOLDS` and ``benchmarks/layer_thresholds.py`` for the measurements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import UserError
from .golden import GoldenSet
from .images import Normalization
from .model import BLOCKS, MobileNetConfig, MobileNetV1

if TYPE_CHECKING:
    from .backends import Backend
    from .mil import ReferenceModel
    from .mil.loader import Operation, Var

#: Layer names, in network order, as in the PyTorch model's module names.
LAYER_NAMES: tuple[str, ...] = (
    "stem",
    *(f"blocks.{i}.{part}" for i in range(len(BLOCKS)) for part in ("dw", "pw")),
    "pool",
    "classifier",
)
N_CONVS = 1 + 2 * len(BLOCKS)

#: Ops that carry a value on unchanged up to rounding: followed in both directions.
PASS_THROUGH = frozenset({"cast", "quantize", "dequantize"})
#: Elementwise ops with a constant operand between a conv and its activation (unfolded BN).
AFFINE = frozenset({"add", "sub", "mul", "real_div", "batch_norm"})
ACTIVATIONS = frozenset({"relu", "relu6", "clip"})
POOLS = frozenset({"reduce_mean", "avg_pool"})
#: Shape-only ops between the pool and the classifier.
RESHAPES = frozenset({"reshape", "squeeze", "flatten2d"})
#: PSNR above which a layer counts as exact when judging per-layer drops (fp32 is ~130 dB).
PSNR_CAP = 150.0


@dataclass(frozen=True)
class LayerThreshold:
    """What a healthy layer of one model kind looks like (PSNR in dB, worst golden image).

    ``min_psnr`` is an absolute floor; ``min_step_psnr`` bounds the error one layer adds to
    what it inherited (see the module docstring): the drop from the previous layer, judged in
    noise power, so a fall from 80 to 65 dB is fine where a fall from 50 to 15 dB is not.
    """

    min_psnr: float
    min_step_psnr: float


#: Per model kind (see :func:`mnv1_coreml.metadata.model_kind`): the lowest PSNR and step PSNR
#: measured on healthy packages (random and Keras-fixture weights at 0.25-128 and 1.0-224,
#: worst layer and image; benchmarks/layer_thresholds.py) minus 5 dB, rounded down. Below
#: 4 bits nothing was measured; those palettes get a loose bound under the 4-bit one.
LAYER_THRESHOLDS: dict[str, LayerThreshold] = {
    "fp32": LayerThreshold(min_psnr=103.0, min_step_psnr=111.0),
    "fp16": LayerThreshold(min_psnr=36.0, min_step_psnr=44.0),
    "palettized-8": LayerThreshold(min_psnr=28.0, min_step_psnr=36.0),
    "int8": LayerThreshold(min_psnr=25.0, min_step_psnr=31.0),
    "palettized-6": LayerThreshold(min_psnr=16.0, min_step_psnr=25.0),
    "palettized-4": LayerThreshold(min_psnr=11.0, min_step_psnr=16.0),
    "palettized-low": LayerThreshold(min_psnr=3.0, min_step_psnr=6.0),
    "w8a8": LayerThreshold(min_psnr=13.0, min_step_psnr=20.0),
}


@dataclass(frozen=True)
class LayerTap:
    """Where one layer's output lives in the program: the var to read and its expected shape."""

    name: str
    var: str  # the var read (after activation and pass-through ops)
    op_type: str  # the layer's main op: conv, reduce_mean/avg_pool, linear/matmul
    op: str  # that op's name, for messages
    shape: tuple[int, ...]  # MobileNet V1's output shape for one image, batch dim included


@dataclass
class LayerRow:
    name: str
    max_abs: float
    rel_err: float
    cosine: float
    psnr: float
    ok: bool
    step_psnr: float = math.inf  # PSNR of the error added since the previous layer (dB)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "step_psnr"}


@dataclass
class LayerReport:
    model: str
    golden: str
    backend: str
    kind: str
    threshold: LayerThreshold
    rows: list[LayerRow] = field(default_factory=list)
    compute_units: str | None = None

    @property
    def first_divergent_layer(self) -> str | None:
        return next((r.name for r in self.rows if not r.ok), None)

    def verdict_line(self) -> str:
        first = self.first_divergent_layer
        worst = min(self.rows, key=lambda r: r.psnr) if self.rows else None
        where = f" ({self.compute_units})" if self.compute_units else ""
        t = self.threshold
        head = (f"layers: {self.backend}{where} backend, {self.kind} (PSNR >= {t.min_psnr:g} dB, "
                f"step PSNR >= {t.min_step_psnr:g} dB)")
        if first is None:
            low = f", lowest PSNR {worst.psnr:.1f} dB at {worst.name}" if worst else ""
            return f"{head}: every layer within what {self.kind} explains{low}"
        row = next(r for r in self.rows if r.name == first)
        return (f"{head}: first divergent layer {first} (PSNR {row.psnr:.1f} dB, "
                f"step PSNR {row.step_psnr:.1f} dB, rel err {row.rel_err:.3g})")

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": [r.to_json() for r in self.rows],
            "first_divergent_layer": self.first_divergent_layer,
            "layer_backend": self.backend,
            "layer_compute_units": self.compute_units,
            "layer_threshold": asdict(self.threshold),
        }


# ------------------------------------------------------------------------------------------
# package side: map program vars to layers from the program's structure


def _refuse(msg: str) -> UserError:
    return UserError(f"not MobileNet V1's program structure: {msg}")


def _is_const(var: Var) -> bool:
    op = var.op
    return op is not None and (op.op_type == "const" or op.op_type.startswith("constexpr_"))


def _only_consumer(var: Var) -> Operation | None:
    children = list(var.child_ops)
    return children[0] if len(children) == 1 else None


def _main_input(op: Operation) -> Var | None:
    """The one non-constant tensor operand of an elementwise or pass-through op
    (``quantize``/``dequantize`` call it ``input``)."""
    cands = [v for k, v in op.inputs.items() if k in ("x", "y", "input") and not _is_const(v)]
    return cands[0] if len(cands) == 1 else None


def _forward(var: Var, through: frozenset[str]) -> Var:
    """Follow ``var`` through its sole consumer while that is a ``through`` op."""
    while (op := _only_consumer(var)) is not None and op.op_type in through and (
        _main_input(op) is var
    ):
        var = op.outputs[0]
    return var


def _back(var: Var, through: frozenset[str]) -> Var:
    """Follow ``var`` back to the value it was made from through ``through`` ops."""
    while var.op is not None and var.op.op_type in through:
        src = _main_input(var.op)
        if src is None:
            break
        var = src
    return var


def _int(var: Var | None) -> int | None:
    if var is None or var.val is None:
        return None
    return int(np.ravel(var.val)[0])


def _expected_shapes(cfg: MobileNetConfig) -> dict[str, tuple[int, ...]]:
    chans, size = cfg.channels, cfg.res // 2
    shapes = {"stem": (1, chans[0], size, size)}
    for i, (stride, _) in enumerate(BLOCKS):
        size //= stride
        shapes[f"blocks.{i}.dw"] = (1, chans[i], size, size)
        shapes[f"blocks.{i}.pw"] = (1, chans[i + 1], size, size)
    shapes["pool"] = (1, chans[-1])
    shapes["classifier"] = (1, cfg.num_classes)
    return shapes


def _check_conv(op: Operation, index: int, cfg: MobileNetConfig) -> None:
    chans = cfg.channels
    weight = op.inputs["weight"]
    groups = _int(op.inputs.get("groups")) or 1
    if index == 0:
        want, want_groups = (chans[0], 3, 3, 3), 1
    elif index % 2:
        c = chans[(index - 1) // 2]
        want, want_groups = (c, 1, 3, 3), c
    else:
        i = (index - 2) // 2
        want, want_groups = (chans[i + 1], chans[i], 1, 1), 1
    got = tuple(int(d) for d in weight.shape)
    if got != want or groups != want_groups:
        raise _refuse(
            f"conv {index + 1} of {N_CONVS} ({LAYER_NAMES[index]}, op {op.name!r}) has weight "
            f"{got} groups {groups}; alpha {cfg.alpha} expects {want} groups {want_groups}"
        )


def map_layers(model: ReferenceModel, cfg: MobileNetConfig) -> list[LayerTap]:
    """One :class:`LayerTap` per layer of :data:`LAYER_NAMES`, found from the program structure.

    Raises a one-line :class:`UserError` when the program is not MobileNet V1 at ``cfg``'s
    alpha, resolution and class count.
    """
    fn = model.package.main
    ops = [op for op in fn.operations if op.op_type != "const" and not _is_const(op.outputs[0])]
    convs = [op for op in ops if op.op_type == "conv"]
    if len(convs) != N_CONVS:
        raise _refuse(f"{len(convs)} conv ops, expected {N_CONVS} (stem + 13 x dw/pw)")
    shapes = _expected_shapes(cfg)
    taps: list[LayerTap] = []
    chain: set[Var] = set()  # the previous layer's value, from its activation to its tap
    tap: Var | None = None
    for index, conv in enumerate(convs):
        name = LAYER_NAMES[index]
        _check_conv(conv, index, cfg)
        if index > 0 and _back(conv.inputs["x"], PASS_THROUGH | {"pad"}) not in chain:
            raise _refuse(f"{name} (op {conv.name!r}) does not take the previous layer's output")
        act = _only_consumer(_forward(conv.outputs[0], PASS_THROUGH | AFFINE))
        if act is None or act.op_type not in ACTIVATIONS:
            raise _refuse(f"{name} (op {conv.name!r}) is not followed by an activation")
        tap = _forward(act.outputs[0], PASS_THROUGH)
        chain = _chain(act.outputs[0], tap)
        taps.append(_tap(name, tap, conv, shapes[name]))
    assert tap is not None
    pool = _only_consumer(tap)
    if pool is None or pool.op_type not in POOLS:
        raise _refuse("the last pointwise layer does not feed a global reduce_mean/avg_pool")
    tap = _forward(pool.outputs[0], PASS_THROUGH | RESHAPES)
    chain = _chain(pool.outputs[0], tap)
    taps.append(_tap("pool", tap, pool, shapes["pool"]))

    logits_name = model.logits_name
    logits = next((v for op in ops for v in op.outputs if v.name == logits_name), None)
    if logits is None:
        raise _refuse("no softmax over the classifier's output")
    fc = _back(logits, PASS_THROUGH).op
    if fc is not None and fc.op_type == "add" and (src := _main_input(fc)) is not None:
        fc = src.op if src.op is not None and src.op.op_type == "matmul" else None
    if fc is None or fc.op_type not in ("linear", "matmul"):
        raise _refuse("the softmax is not fed by a linear/matmul classifier")
    if _back(fc.inputs["x"], PASS_THROUGH | RESHAPES) not in chain:
        raise _refuse(f"the classifier (op {fc.name!r}) does not take the pool's output")
    taps.append(_tap("classifier", logits, fc, shapes["classifier"]))
    return taps


def _chain(start: Var, end: Var) -> set[Var]:
    """Vars from ``start`` forward to ``end`` along sole consumers."""
    chain, var = {start}, start
    while var is not end and (op := _only_consumer(var)) is not None:
        var = op.outputs[0]
        chain.add(var)
    return chain


def _tap(name: str, var: Var, op: Operation, shape: tuple[int, ...]) -> LayerTap:
    got = tuple(int(d) for d in var.shape)
    if int(np.prod(got)) != int(np.prod(shape)) or (len(got) == 4 and got != shape):
        raise _refuse(f"{name} output {var.name!r} has shape {got}, MobileNet V1 has {shape}")
    return LayerTap(name, var.name, op.op_type, op.name, shape)


# ------------------------------------------------------------------------------------------
# PyTorch side: the model the golden was made from, and its layer outputs


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def golden_model(golden: GoldenSet, golden_dir: Path | None = None) -> tuple[MobileNetV1,
                                                                             Normalization]:
    """Rebuild the PyTorch model and normalisation a golden was made from, by its manifest.

    The weights spec is the one ``golden`` recorded (``random:SEED``, ``imagenet``, ``timm`` or
    a path, tried as given, then beside the golden's root and the source tree), pinned to the
    recorded SHA-256; padding, activation, BN eps and normalisation are the recorded ones.
    """
    m = golden.manifest
    key = json.dumps([m.get(k) for k in _MODEL_KEYS] + [str(golden_dir), golden.logits.shape[1]])
    if key not in _MODELS:
        _MODELS.clear()  # one model at a time: a 1.0-224 model holds 17 MB of weights
        _MODELS[key] = _build_golden_model(golden, golden_dir)
    return _MODELS[key]


#: Manifest entries that define the golden's model, and the last model rebuilt from them
#: (random weights take seconds to calibrate; tests and benchmarks compare many packages).
_MODEL_KEYS = ("weights", "weights_sha256", "alpha", "res", "normalization", "padding",
               "activation", "bn_eps")
_MODELS: dict[str, tuple[MobileNetV1, Normalization]] = {}


def _build_golden_model(golden: GoldenSet, golden_dir: Path | None
                        ) -> tuple[MobileNetV1, Normalization]:
    from .weights import build_model, load_weights

    m = golden.manifest
    try:
        spec, sha = str(m["weights"]), m.get("weights_sha256")
        norm = Normalization(tuple(m["normalization"]["mean"]), tuple(m["normalization"]["std"]))
        overrides = {"padding": m["padding"], "activation": m["activation"],
                     "bn_eps": float(m["bn_eps"]), "normalization": norm}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"golden manifest lacks the weights settings ({exc}); regenerate it") \
            from None
    seed = 0
    if spec.startswith("random:"):
        spec, seed = "random", int(spec.split(":", 1)[1])
    elif spec not in ("imagenet", "timm"):
        roots = [Path.cwd()] + ([golden_dir.resolve().parent.parent] if golden_dir else [])
        found = next((r / spec for r in [*roots, _repo_root()] if (r / spec).is_file()), None)
        if found is None:
            raise UserError(
                f"the golden's weights file {spec} is not found (needed to compare layers); "
                "run from the directory the golden was made in"
            )
        spec = str(found)
    classes = golden.logits.shape[1]
    weights = load_weights(spec, golden.alpha, golden.res, seed=seed, overrides=overrides,
                           sha256=sha, num_classes=classes if spec == "random" else None)
    model = build_model(golden.alpha, golden.res, weights, num_classes=classes)
    return model, norm


def torch_layer_outputs(model: MobileNetV1, norm: Normalization, images: np.ndarray
                        ) -> dict[str, np.ndarray]:
    """Every layer's fp32 output for uint8 (N, R, R, 3) RGB images, flattened to (N, -1)."""
    modules: dict[str, torch.nn.Module] = {"stem": model.stem}
    for i, block in enumerate(model.blocks):
        modules[f"blocks.{i}.dw"] = block.dw
        modules[f"blocks.{i}.pw"] = block.pw
    modules["pool"] = model.pool
    modules["classifier"] = model.classifier
    values: dict[str, np.ndarray] = {}

    def hook(name: str) -> Any:
        def store(_m: torch.nn.Module, _i: Any, out: torch.Tensor) -> None:
            values[name] = out.detach().reshape(out.shape[0], -1).numpy().copy()
        return store

    handles = [mod.register_forward_hook(hook(name)) for name, mod in modules.items()]
    try:
        with torch.no_grad():
            model.eval()(norm.apply(images))
    finally:
        for h in handles:
            h.remove()
    return values


# ------------------------------------------------------------------------------------------
# comparison


def layer_metrics(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    """(max abs, rel err, cosine, PSNR) of one layer, worst image; arrays are (N, -1).

    The peak for relative error and PSNR is the layer's activation range over all images, so an
    image on which a layer is (nearly) dead does not turn rounding noise into a divergence.
    Differences are taken in float32 (exact for values this close) and summed in float64.
    """
    p, r = np.asarray(pred, np.float32), np.asarray(ref, np.float32)
    diff = p - r
    span = float(r.max() - r.min()) if r.size else 0.0
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0

    def rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", a, b, dtype=np.float64)

    mse = rowdot(diff, diff) / max(diff.shape[1], 1)
    with np.errstate(divide="ignore"):
        psnr_img = np.where(mse > 0, 10 * np.log10(max(span, 1e-30) ** 2 / np.maximum(mse, 1e-300)),
                            math.inf)
    norms = np.sqrt(rowdot(p, p) * rowdot(r, r))
    cos = rowdot(p, r) / np.where(norms > 0, norms, 1.0)
    for i in np.flatnonzero(norms == 0):  # an all-zero image: equal or not, nothing in between
        cos[i] = 1.0 if np.allclose(p[i], r[i]) else 0.0
    rel = max_abs / span if span > 0 else (0.0 if max_abs == 0 else math.inf)
    return max_abs, rel, float(cos.min()), float(psnr_img.min())


def step_psnr(prev: float | None, psnr: float) -> float:
    """PSNR of the error a layer added to the one it inherited (inf if it added none).

    Errors are compared as noise power relative to each layer's own peak, so this assumes a
    layer passes its input's relative error on unchanged; healthy layers measured close to that.
    """
    if prev is None:
        return psnr
    # An exact layer has infinite PSNR; judge steps below a cap that no format reaches.
    p, q = min(prev, PSNR_CAP), min(psnr, PSNR_CAP)
    added = 10 ** (-q / 10) - 10 ** (-p / 10)
    return math.inf if added <= 0 else -10 * math.log10(added)


def compare_layers(package: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                   threshold: LayerThreshold) -> list[LayerRow]:
    """One row per layer; ``ok`` by the kind's PSNR floor and step PSNR floor."""
    rows: list[LayerRow] = []
    prev: float | None = None
    for name in LAYER_NAMES:
        p, r = package[name], reference[name]
        if p.shape != r.shape:
            raise UserError(f"layer {name}: package gives {p.shape}, PyTorch {r.shape}")
        max_abs, rel, cos, psnr = layer_metrics(p, r)
        step = step_psnr(prev, psnr)
        ok = psnr >= threshold.min_psnr and step >= threshold.min_step_psnr
        rows.append(LayerRow(name, max_abs, rel, cos, psnr, ok, step))
        prev = psnr
    return rows


def _package_cfg(contract_meta: dict[str, str], golden: GoldenSet, res: int | None
                 ) -> MobileNetConfig:
    alpha = contract_meta.get("mnv1.alpha")
    a = float(alpha) if alpha is not None else golden.alpha
    if not math.isclose(a, golden.alpha):
        raise UserError(f"model alpha {a} and golden alpha {golden.alpha} differ; "
                        "layers can only be compared between the same variant")
    if res is not None and res != golden.res:
        raise UserError(f"model input is {res}x{res}, golden is {golden.res}x{golden.res}")
    return MobileNetConfig(alpha=a, res=golden.res, num_classes=golden.logits.shape[1])


def _layer_setup(model_path: Path, golden: GoldenSet, backend: str, compute_units: str,
                 runner: Backend | None) -> tuple[Backend, list[LayerTap], str]:
    """The backend, the layer map (from the program, read by the interpreter whichever backend
    runs it) and the model kind; one-line UserErrors for anything unusable."""
    from .backends import ReferenceBackend, make_backend
    from .metadata import model_kind
    from .mil import ReferenceModel
    from .mil.errors import InterpreterError
    from .modelspec import read_contract

    contract = read_contract(model_path)
    kind = model_kind(contract.metadata)
    try:
        if runner is None:
            runner = make_backend(backend, model_path, compute_units)  # type: ignore[arg-type]
        ref = runner.model if isinstance(runner, ReferenceBackend) else ReferenceModel.load(
            model_path)
    except InterpreterError as exc:  # name the package once (the loader's messages do)
        raise UserError(str(exc) if str(model_path) in str(exc) else f"{model_path}: {exc}") \
            from None
    cfg = _package_cfg(contract.metadata, golden, ref.image_size[0] if ref.image_size else None)
    return runner, map_layers(ref, cfg), kind


def layer_backend(model_path: Path, golden: GoldenSet, backend: str = "reference",
                  compute_units: str = "all") -> Backend:
    """A backend for ``validate`` that, on the reference interpreter, also keeps every layer's
    value from the same pass over the golden images; :func:`validate_layers` then reuses them
    instead of running the program a second time."""
    from .backends import ReferenceBackend

    runner, taps, _ = _layer_setup(Path(model_path), golden, backend, compute_units, None)
    if isinstance(runner, ReferenceBackend):
        runner.watch = [t.var for t in taps]
    return runner


def validate_layers(
    model_path: Path,
    golden: GoldenSet,
    *,
    golden_dir: Path | None = None,
    backend: str = "reference",
    compute_units: str = "all",
    runner: Backend | None = None,
    threshold: LayerThreshold | None = None,
    golden_label: str = "(in memory)",
    batch: int = 6,
) -> LayerReport:
    """Compare every layer of the package with the PyTorch model the golden was made from.

    ``backend`` is ``reference`` (any OS), ``coreml`` (the Core ML runtime on macOS) or
    ``auto``, unless ``runner`` (e.g. from :func:`layer_backend`) is given. PyTorch runs
    ``batch`` images at a time.
    """
    model_path = Path(model_path)
    runner, taps, kind = _layer_setup(model_path, golden, backend, compute_units, runner)
    th = threshold or LAYER_THRESHOLDS.get(kind)
    if th is None:
        raise UserError(f"no layer thresholds for model kind {kind!r} "
                        f"(known: {', '.join(LAYER_THRESHOLDS)})")
    torch_model, norm = golden_model(golden, golden_dir)
    n = len(golden.images)
    values = runner.intermediates(golden.images, [t.var for t in taps])
    pkg = {t.name: np.asarray(values[t.var], np.float32).reshape(n, -1) for t in taps}
    del values
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in taps}
    for start in range(0, n, batch):
        outs = torch_layer_outputs(torch_model, norm, golden.images[start:start + batch])
        for name, v in outs.items():
            parts[name].append(v)
    ref_vals = {k: np.concatenate(v) for k, v in parts.items()}
    drift = float(np.abs(ref_vals["classifier"] - golden.logits).max())
    if drift > 1e-3 * max(1.0, float(np.abs(golden.logits).max())):
        raise UserError(
            f"the model rebuilt from the golden's manifest does not reproduce its logits "
            f"(max abs {drift:.3g}); regenerate the golden"
        )
    report = LayerReport(str(model_path), golden_label, runner.name, kind, th,
                         compute_units=compute_units if runner.name == "coreml" else None)
    report.rows = compare_layers(pkg, ref_vals, th)
    return report


# ------------------------------------------------------------------------------------------
# output


def plot_layers(report: LayerReport, path: Path) -> None:
    """PSNR per layer with the kind's floor, the first divergent layer marked; atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from .fsutil import atomic_path

    names = [r.name for r in report.rows]
    psnr = [min(r.psnr, 200.0) for r in report.rows]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    try:
        ax.plot(range(len(names)), psnr, marker="o", label="PSNR (worst image)")
        ax.axhline(report.threshold.min_psnr, color="tab:red", linestyle="--",
                   label=f"{report.kind} floor {report.threshold.min_psnr:g} dB")
        steps = [(i, r.step_psnr) for i, r in enumerate(report.rows)
                 if math.isfinite(r.step_psnr) and r.step_psnr < 200.0]
        if steps:
            ax.scatter(*zip(*steps, strict=True), marker="x", color="tab:gray",
                       label="step PSNR (error the layer adds)")
        ax.axhline(report.threshold.min_step_psnr, color="tab:gray", linestyle=":",
                   label=f"step floor {report.threshold.min_step_psnr:g} dB")
        bad = [i for i, r in enumerate(report.rows) if not r.ok]
        if bad:
            ax.scatter(bad, [psnr[i] for i in bad], color="tab:red", zorder=3, label="not ok")
            ax.axvline(bad[0], color="tab:red", alpha=0.3)
        ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
        ax.set_ylabel("PSNR (dB)")
        first = report.first_divergent_layer
        ax.set_title(f"{Path(report.model).name}: {report.kind}, first divergent layer: {first}")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        with atomic_path(path, force=True) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


def write_json(data: dict[str, Any], path: Path) -> None:
    """``data`` as JSON at ``path`` (temp file, then rename)."""
    from .fsutil import atomic_path

    with atomic_path(path, force=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")


def table_rows(report: LayerReport) -> Sequence[tuple[str, ...]]:
    """The text table's rows: name, max abs, rel err, cosine, PSNR, step PSNR, status."""
    first = report.first_divergent_layer
    return [
        (r.name, f"{r.max_abs:.3g}", f"{r.rel_err:.3g}", f"{r.cosine:.6f}", f"{r.psnr:.1f}",
         f"{r.step_psnr:.1f}", "ok" if r.ok else "DIVERGES" if r.name == first else "no")
        for r in report.rows
    ]


# ------------------------------------------------------------------------------------------
# fault injection: how the tests and benchmarks/layer_thresholds.py break exactly one layer

#: MIL blob storage: each blob's 64-byte header starts with this sentinel, then the dtype code,
#: the payload size and the payload's absolute offset (coremltools' ``BlobReader`` layout).
_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_DTYPES = {1: np.float16, 2: np.float32}
#: Where the magnitude of a compressed weight lives: the palette, or the quantization scale.
_MAGNITUDE_PARAMS = ("lut", "scale")


def scale_stored_weight(package: Path, layer: str, factor: float) -> str:
    """Multiply one layer's stored weight by ``factor`` in the package's ``weight.bin``, in place.

    No reconversion: the layer's main op comes from :func:`map_layers`, its weight's const op
    (or, for a compressed weight, the constexpr op's palette or scale) gives the blob offset,
    and the blob's payload is scaled. Returns the name of the blob-backed const that changed.
    """
    import struct

    from .coreml import ct
    from .mil import ReferenceModel
    from .mil.loader import WEIGHTS_SUBDIR

    ref = ReferenceModel.load(package)
    cfg = MobileNetConfig(alpha=_alpha_of(ref), res=(ref.image_size or (0,))[0],
                          num_classes=len(ref.class_labels or []) or 1000)
    tap = next((t for t in map_layers(ref, cfg) if t.name == layer), None)
    if tap is None or tap.name == "pool":
        raise UserError(f"{layer!r} is not a layer with weights; use one of {LAYER_NAMES}")
    op = next(o for o in ref.package.main.operations if o.name == tap.op)
    weight_name = op.inputs["weight"].name
    spec = ct.utils.load_spec(str(package))
    fn = spec.mlProgram.functions["main"]
    producers = {o.outputs[0].name: o for o in fn.block_specializations[fn.opset].operations}
    src, value = producers[weight_name], None
    if src.type.startswith("constexpr_"):
        value = next((src.attributes[p] for p in _MAGNITUDE_PARAMS if p in src.attributes), None)
        if value is None:  # iOS18 constexpr ops take their parameters from const ops
            arg = next((src.inputs[p].arguments[0].name for p in _MAGNITUDE_PARAMS
                        if p in src.inputs), None)
            if arg is None:
                raise UserError(f"{layer}: cannot find the palette or scale of {src.type}")
            src, weight_name = producers[arg], arg
    if src.type == "const":
        value = src.attributes["val"]
    if value is None or not value.HasField("blobFileValue"):
        raise UserError(f"{layer}: weight {weight_name!r} is not stored in weight.bin")
    offset = value.blobFileValue.offset
    path = Path(package) / WEIGHTS_SUBDIR / Path(value.blobFileValue.fileName).name
    data = bytearray(path.read_bytes())
    sentinel, dtype_code, size, payload = struct.unpack_from("<IIQQ", data, offset)
    if sentinel != _BLOB_SENTINEL or dtype_code not in _BLOB_DTYPES:
        raise UserError(f"{layer}: blob at offset {offset} is not a float weight")
    dtype = _BLOB_DTYPES[dtype_code]
    arr = np.frombuffer(bytes(data[payload:payload + size]), dtype=dtype)
    data[payload:payload + size] = (arr.astype(np.float64) * factor).astype(dtype).tobytes()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(path)
    return weight_name


def _alpha_of(ref: ReferenceModel) -> float:
    meta = ref.package.spec.description.metadata.userDefined if ref.package.spec else {}
    if "mnv1.alpha" not in meta:
        raise UserError(f"{ref.path} has no mnv1.alpha metadata")
    return float(meta["mnv1.alpha"])
