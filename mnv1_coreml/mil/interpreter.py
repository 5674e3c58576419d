"""Run an ML Program's ``main`` function op by op: the reference for validation on Linux.

Core ML cannot predict off macOS, so validation needs another way to execute *the package*
(not the PyTorch model it came from): every op the converter wrote, with the weights it stored
and the dtypes it chose. :class:`ReferenceModel` does that with the kernels in :mod:`.ops`.

Batching: image programs have a batch dim of 1. N images run in one pass when a load-time
analysis (:class:`BatchPlan`) finds a leading dim 1 on every value computed from the inputs,
so that dim can carry the N samples. Each op then either takes all N in one kernel call, when
its registration's batch rule says that gives the same bits (elementwise IEEE arithmetic,
clamps, max pooling, data movement, a softmax over the last axis, a ``reshape`` keeping the
leading 1, ...), or runs sample by sample on slices of dim 0 (the default: convs, matmuls,
sums, transcendental functions, and anything whose rule refuses, e.g. a softmax over axis 0).
Otherwise (a value without a leading 1) whole samples run one at a time. Either way every
op's output shape is checked against the program's declared shape (with N for the batch dim),
so a kernel that disagrees with coremltools' type inference is caught.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import (  # noqa: F401 (all but ops and features register kernels on import)
    features,
    ops,
    ops_elementwise,
    ops_image,
    ops_index,
    ops_math,
    ops_tensor,
)
from .errors import InterpreterError, UnsupportedOpError
from .loader import (
    ImageInput,
    LoadedPackage,
    Operation,
    Program,
    Var,
    corrupt_message,
    from_program,
    is_symbolic,
    load_package,
    types,
)
from .ops import OPS, KernelSpec, OpArgs, conform, materialize_constexpr, numpy_dtype, to_tensor


def _var_dtype(var: Var) -> Any | None:
    """MIL primitive dtype of a tensor or numeric scalar var; None for str, dict and lists."""
    try:
        sym_type = var.sym_type
    except ValueError:
        return None
    if types.is_tensor(sym_type):
        return sym_type.get_primitive()
    if types.is_scalar(sym_type) and sym_type in ops._TORCH_STORAGE:
        return sym_type
    return None


def _static_shape(var: Var) -> tuple[Any, ...] | None:
    try:
        sym_type = var.sym_type
    except ValueError:
        return None
    if types.is_tensor(sym_type):
        return tuple(var.shape)
    if types.is_scalar(sym_type) and sym_type in ops._TORCH_STORAGE:
        return ()
    return None


def _input_vars(op: Operation) -> list[tuple[str, Var]]:
    pairs = []
    for param, val in op.inputs.items():
        if isinstance(val, (list, tuple)):
            pairs += [(param, v) for v in val]
        elif val is not None:
            pairs.append((param, val))
    return pairs


@dataclass(frozen=True)
class Preprocessing:
    """What the program does to raw pixels first: ``x = scale * pixel + bias[c]``.

    Read from the ops coremltools inserts for an ImageType (``<input>__scaled__`` mul and
    ``<input>__biased__`` add); ``bias`` is per channel in the program's channel order (which
    is ``color_layout``: B, G, R for a BGR model). ``channel_scale`` is a per-channel ``mul``
    by a constant right after them (possibly behind a cast to fp16), which a per-channel std
    needs since an ImageType has only one scale; None if the program has none.
    """

    input_name: str
    color_layout: str
    scale: float
    bias: tuple[float, ...]
    channel_scale: tuple[float, ...] | None = None
    scale_op: str | None = None
    bias_op: str | None = None
    channel_scale_op: str | None = None


@dataclass(frozen=True)
class BatchPlan:
    """Whether N inputs can run as one batch through this batch-1 program, and if not, why."""

    vectorised: bool
    reason: str = ""


@dataclass
class _Step:
    op: Operation
    spec: KernelSpec
    outputs: list[Var]
    dtypes: list[Any | None]
    shapes: list[tuple[Any, ...] | None]
    rounds: bool  # conform outputs; False when exact for these dtypes (KernelSpec.exact)
    on_batch: bool  # consumes values computed from the inputs
    frees: list[Var]  # values last used by this step
    inputs: dict[str, Any]  # op.inputs, read once (coremltools rebuilds it on every access)
    input_vars: list[Var]  # every input var, variadic ones flattened
    cache: dict[tuple[str, str], Any]  # constant parameters parsed by OpArgs, kept across runs
    vectorised: bool = False  # in a batched run: one kernel call for all N samples


class ReferenceModel:
    """A loaded ML Program that runs on any OS, op by op, with torch kernels.

    Use :meth:`load` for an ``.mlpackage`` and :meth:`predict` for uint8 RGB images; :meth:`run`
    feeds raw program inputs (multi-arrays) and is what op-level tests use.
    """

    def __init__(self, package: LoadedPackage, *, exact_batch: bool = True) -> None:
        self.package = package
        #: True: a batch gives the same bits as single runs. False: convs, FC, BN and means
        #: also take whole batches, on channels-last activations (faster; last-bit
        #: differences from summation order).
        self.exact_batch = exact_batch
        self.path = package.path
        fn = package.main
        #: iOS18 state inputs are not fed: :meth:`make_state` gives their values (see run()).
        self._states: dict[str, Var] = {
            k: v for k, v in fn.inputs.items() if types.is_state(v.sym_type)}
        self._inputs: dict[str, Var] = {
            k: v for k, v in fn.inputs.items() if k not in self._states}
        self._outputs: list[Var] = list(fn.outputs)
        # Values are keyed by Var, not name: coremltools' loader can create a const whose
        # generated name repeats one in the file (e.g. classify's classes as "const_0").
        self._vars: dict[str, Var] = {**self._inputs, **self._states}  # name lookup for callers
        self._consts: dict[Var, Any] = {}  # const var -> NumPy / Python value
        self._const_env: dict[Var, Any] = {}  # const var -> storage value (tensor, str, list)
        self._steps: list[_Step] = []
        self._variable_names: list[str] = []
        self._compile(fn.operations)
        self._dependent = self._input_dependent()
        self.batch_plan = self._plan_batch()
        self._image = self._find_image_input()
        self.preprocessing = self._find_preprocessing()

    # ----------------------------------------------------------------------------------------
    # construction

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, exact_batch: bool = True) -> ReferenceModel:
        """Load an ``.mlpackage``; raises :class:`UnsupportedOpError` for ops without kernels.

        ``exact_batch=False`` trades bit-identity between batched and single runs for speed
        (see :attr:`exact_batch`): for accuracy statistics, never for validation.

        Any problem with the package is an :class:`InterpreterError` (one line): the loader
        checks the package, and a program that loads but cannot be prepared (a constexpr
        whose data does not fit its shape, ...) is reported as corrupt, never as a raw
        NumPy/torch exception."""
        package = load_package(path)
        try:
            return cls(package, exact_batch=exact_batch)
        except InterpreterError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure here is the package's
            raise InterpreterError(corrupt_message(package.path or Path(path), exc)) from None

    @classmethod
    def from_program(cls, program: Program) -> ReferenceModel:
        """Wrap an in-memory PyMIL program (no model description: :meth:`run` only)."""
        return cls(from_program(program))

    def _compile(self, operations: Sequence[Operation]) -> None:
        materialized: dict[Var, np.ndarray] = {}
        for op in operations:
            for var in op.outputs:
                self._vars.setdefault(var.name, var)
            if op.op_type == "const":
                var = op.outputs[0]
                self._add_const(var, var.val if var.val is not None else var.sym_val)
                continue
            if op.op_type.startswith("constexpr_"):
                for var, value in zip(
                    op.outputs, materialize_constexpr(op, materialized), strict=True
                ):
                    materialized[var] = value
                    self._add_const(var, value)
                continue
            spec = OPS.get(op.op_type)
            if spec is None:
                raise UnsupportedOpError(op.op_type, op.name)
            if op.blocks:
                raise UnsupportedOpError(op.op_type, op.name, "ops with nested blocks")
            if spec.check is not None:
                spec.check(op)
            dtypes = [_var_dtype(v) for v in op.outputs]
            in_dtypes = {_var_dtype(v) for _, v in _input_vars(op) if _var_dtype(v) in
                         (types.fp16, types.fp32)}
            exact = spec.exact and all(in_dtypes <= {d} for d in dtypes if d is not None)
            self._steps.append(
                _Step(op, spec, list(op.outputs), dtypes,
                      [_static_shape(v) for v in op.outputs], rounds=not exact,
                      on_batch=False, frees=[], inputs=dict(op.inputs),
                      input_vars=[v for _, v in _input_vars(op)], cache={})
            )
            self._variable_names += [v.name for v in op.outputs]
        # Free each computed value after its last use (peak memory of a 1.0-224 batch).
        last_use: dict[Var, int] = {}
        for i, step in enumerate(self._steps):
            for _, var in _input_vars(step.op):
                if var not in self._consts:
                    last_use[var] = i
        for var, i in last_use.items():
            self._steps[i].frees.append(var)

    def _add_const(self, var: Var, value: Any) -> None:
        self._consts[var] = value
        dtype = _var_dtype(var)
        # Sub-byte and other storage-only dtypes (uint4 palette indices, ...) only feed
        # constexpr ops, which read ``_consts``; no kernel takes them as tensors.
        storable = dtype is not None and ops.storage_dtype(dtype) is not None
        self._const_env[var] = to_tensor(value, dtype) if storable else value

    def _input_dependent(self) -> set[Var]:
        dependent = set(self._inputs.values())
        for step in self._steps:
            step.on_batch = any(v in dependent for _, v in _input_vars(step.op))
            if step.on_batch:
                dependent.update(step.outputs)
        return dependent

    def _plan_batch(self) -> BatchPlan:
        """Batch if every value computed from the inputs has a leading dim 1; per op, one
        call for all samples where its batch rule allows (setting ``_Step.vectorised``)."""
        for name, var in self._inputs.items():
            shape = _static_shape(var)
            if not shape or shape[0] != 1:
                return BatchPlan(False, f"input {name!r} has shape {shape}, no leading batch dim 1")
        for step in self._steps:
            if not step.on_batch:
                continue
            op = step.op
            batched = [(p, v) for p, v in _input_vars(op) if v in self._dependent]
            for param, var in batched:
                shape = _static_shape(var)
                if not shape or shape[0] != 1:
                    return BatchPlan(False, f"{op.op_type} {op.name!r}: input {param!r} has "
                                            f"shape {shape}, no leading batch dim 1")
            for var, shape in zip(step.outputs, step.shapes, strict=True):
                if shape is not None and (not shape or shape[0] != 1):
                    return BatchPlan(False, f"{op.op_type} {op.name!r}: output {var.name!r} "
                                            f"has shape {shape}, no leading batch dim 1")
            spec = step.spec
            rule = spec.batch if self.exact_batch else (spec.fast_batch or spec.batch)
            step.vectorised = rule is not None and not rule(op, batched)
        return BatchPlan(True)

    # ----------------------------------------------------------------------------------------
    # description

    @property
    def input_name(self) -> str:
        """The image input if the model has one, else the program's first input."""
        return self._image.name if self._image else next(iter(self._inputs))

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of the image input, None for a model without one."""
        return (self._image.height, self._image.width) if self._image else None

    @property
    def color_layout(self) -> str | None:
        return self._image.color_layout if self._image else None

    @property
    def output_names(self) -> list[str]:
        """The model's outputs, in description order."""
        return list(self.package.output_names)

    @property
    def variable_names(self) -> list[str]:
        """Output vars of every (non-const) op, in program order; any can be asked for."""
        return list(self._variable_names)

    @property
    def operations(self) -> list[tuple[str, str]]:
        """(op type, op name) of every op that runs, in program order (consts excluded)."""
        return [(step.op.op_type, step.op.name) for step in self._steps]

    @property
    def class_labels(self) -> list[str] | list[int] | None:
        """Labels of the ``classify`` op, in probability order; None if not a classifier."""
        op = self._classify_op()
        return None if op is None else list(self._consts[op.inputs["classes"]])

    @property
    def logits_name(self) -> str | None:
        """The var feeding the softmax whose result (possibly via casts) is the probabilities.

        That is the classifier's ``classify`` input, or failing that, a model output.
        """
        op = self._classify_op()
        candidates = [op.inputs["probabilities"]] if op is not None else list(self._outputs)
        for var in candidates:
            while var.op is not None and var.op.op_type == "cast":
                var = var.op.inputs["x"]
            if var.op is not None and var.op.op_type == "softmax":
                return var.op.inputs["x"].name
        return None

    def _classify_op(self) -> Operation | None:
        for step in self._steps:
            if step.op.op_type == "classify":
                return step.op
        return None

    def _find_image_input(self) -> ImageInput | None:
        for name, image in self.package.image_inputs.items():
            if name in self._inputs:
                return image
        return None

    def _find_preprocessing(self) -> Preprocessing | None:
        if self._image is None:
            return None
        var = self._inputs[self._image.name]
        channels = 1 if self._image.color_layout.startswith("GRAYSCALE") else 3
        scale, bias = 1.0, (0.0,) * channels
        scale_op = bias_op = cs_op = None
        channel_scale = None
        name = self._image.name
        op = _only_consumer(var)
        const = None if op is None else self._const_operand(op, var)
        if op is not None and op.name == f"{name}__scaled__" and const is not None:
            scale = float(np.asarray(const).reshape(-1)[0])
            scale_op, var = op.name, op.outputs[0]
            op = _only_consumer(var)
        const = None if op is None else self._const_operand(op, var)
        if op is not None and op.name == f"{name}__biased__" and const is not None:
            values = np.asarray(const, dtype=np.float64).reshape(-1)
            bias = tuple(float(v) for v in np.broadcast_to(values, (channels,)))
            bias_op, var = op.name, op.outputs[0]
            op = _only_consumer(var)
        if op is not None and op.op_type == "cast":
            var = op.outputs[0]
            op = _only_consumer(var)
        if op is not None and op.op_type == "mul":
            const = self._const_operand(op, var)
            if const is not None and np.size(const) == channels and np.ndim(const) >= 3:
                channel_scale = tuple(float(v) for v in np.asarray(const).reshape(-1))
                cs_op = op.name
        return Preprocessing(
            self._image.name, self._image.color_layout, scale, bias,
            channel_scale, scale_op, bias_op, cs_op,
        )

    def _const_operand(self, op: Operation, var: Var) -> Any:
        for param in ("x", "y"):
            other = op.inputs.get(param)
            if other is not None and other is not var and other in self._consts:
                return self._consts[other]
        return None

    # ----------------------------------------------------------------------------------------
    # execution

    def make_state(self) -> dict[str, np.ndarray]:
        """Fresh values for the model's state inputs (zeros, as Core ML's ``make_state``), to
        pass to :meth:`run` / :meth:`predict` as ``state=``; they are updated in place."""
        out = {}
        for name, var in self._states.items():
            tensor_type = var.sym_type.wrapped_type()
            dtype = numpy_dtype(tensor_type.get_primitive())
            out[name] = np.zeros([int(d) for d in tensor_type.get_shape()], dtype)
        return out

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None,
        state: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Run the program on raw inputs (program layout and units, e.g. 0..255 floats).

        A stateful model (iOS18) needs ``state``, from :meth:`make_state`: ``read_state`` sees
        its values, and ``coreml_update_state`` writes them back when the run ends.

        Each input has the program's declared shape, or carries N samples: ``(N, *shape[1:])``
        for a batch-1 input, or ``(N, *shape)``. Returns ``{name: value}`` for ``outputs``
        (default: the model outputs): arrays in the var's program dtype (fp16 vars come back
        as float16), N along dim 0; ``classify`` gives a list of labels and an (N, C) array.
        """
        names = list(outputs) if outputs is not None else self._default_outputs()
        for name in names:
            if name not in self._vars:
                raise InterpreterError(f"no variable named {name!r} in the program")
        wanted = [self._vars[name] for name in names]
        arrays, n, mode = self._check_feeds(feeds)
        if self._states:
            if state is None or sorted(state) != sorted(self._states):
                raise InterpreterError(f"a stateful model: pass state=make_state() (states "
                                       f"{sorted(self._states)})")
            if n != 1:
                raise InterpreterError("a stateful model runs one sample at a time")
        if mode == "batch" and (self.batch_plan.vectorised or n == 1):
            batched = self.batch_plan.vectorised
            values = self._execute(arrays, wanted, batched, state)
            pairs = zip(names, wanted, strict=True)
            return {name: _to_numpy(values[var], var) for name, var in pairs}
        # One sample at a time ("stacked" inputs lack the batch dim, or the plan forbids it).
        parts = []
        for i in range(n):
            sample = {k: (v[i] if mode == "stacked" else v[i : i + 1]) for k, v in arrays.items()}
            parts.append(self._execute(sample, wanted, False))
        return {
            name: self._join([_to_numpy(p[var], var) for p in parts], var, mode)
            for name, var in zip(names, wanted, strict=True)
        }

    def predict(
        self,
        images: np.ndarray | Sequence[np.ndarray] | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        outputs: Sequence[str] | None = None,
        state: dict[str, np.ndarray] | None = None,
    ) -> Any:
        """Run uint8 RGB images, (H, W, 3) or (N, H, W, 3), as Core ML would; see :meth:`run`
        for ``outputs`` and the result.

        Given a dict (or a list of dicts) instead, this is coremltools' ``MLModel.predict``:
        ``{input name: PIL image or array}`` in, ``{output name: array, label or
        {label: probability}}`` out, so code written for the Core ML runtime runs here
        unchanged (:mod:`.features`).

        Pixels enter the program as 0..255 floats in the model's colour order: channels are
        reversed for a BGR model, and a GRAYSCALE model gets PIL's ``convert("L")`` luma
        (``(19595 R + 38470 G + 7471 B + 32768) >> 16``), or takes (H, W) / (N, H, W) gray
        images directly. Images must already have the model's size (see
        ``mnv1_coreml.images.prepare_image``).
        """
        if features.is_feature_dict(images):
            if outputs is not None:
                raise InterpreterError("outputs= is for image arrays; a dict input returns the "
                                       "model's outputs, as coremltools does")
            return features.predict_features(self, images, state)  # type: ignore[arg-type]
        if self._image is None:
            raise InterpreterError("the model has no image input; use run() with arrays")
        # An input without a batch dim, (C, H, W), gets one image per run (see run()).
        return self.run({self._image.name: self.image_array(images)}, outputs)

    def image_array(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """uint8 images -> the float32 (N, C, H, W) pixel array the program's input receives."""
        if self._image is None:
            raise InterpreterError("the model has no image input")
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise InterpreterError(f"images must be uint8, got {arr.dtype}")
        h, w = self._image.height, self._image.width
        gray = self._image.color_layout.startswith("GRAYSCALE")
        if arr.ndim >= 3 and arr.shape[-3:] == (h, w, 3):
            arr = arr.reshape(-1, h, w, 3)
            if gray:
                rgb = arr.astype(np.uint32)
                luma = (19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768)
                x = (luma >> 16).astype(np.float32)[:, None]
            else:
                x = arr.transpose(0, 3, 1, 2).astype(np.float32)
                if self._image.color_layout == "BGR":
                    x = x[:, ::-1]
        elif gray and arr.ndim >= 2 and arr.shape[-2:] == (h, w):
            x = arr.reshape(-1, 1, h, w).astype(np.float32)
        else:
            want = f"({h}, {w}, 3) or (N, {h}, {w}, 3)" + (" or gray (N, H, W)" if gray else "")
            raise InterpreterError(
                f"images of shape {arr.shape} do not fit input {self._image.name!r}: expected "
                f"{want}; resize first (mnv1_coreml.images.prepare_image)"
            )
        return np.ascontiguousarray(x)

    def _default_outputs(self) -> list[str]:
        names = []
        for i, name in enumerate(self.package.output_names):
            if name in self._vars:
                names.append(name)
            elif i < len(self._outputs):  # description and block disagree: go by position
                names.append(self._outputs[i].name)
        return names

    def _check_feeds(
        self, feeds: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], int, str]:
        missing = [k for k in self._inputs if k not in feeds]
        extra = [k for k in feeds if k not in self._inputs]
        if missing or extra:
            raise InterpreterError(
                f"inputs {sorted(self._inputs)} expected; missing {missing}, unknown {extra}"
            )
        arrays, sizes, modes = {}, set(), set()
        for name, var in self._inputs.items():
            arr = np.asarray(feeds[name])
            shape = _static_shape(var)
            if shape is None:
                raise InterpreterError(f"input {name!r}: not a tensor input")
            if any(is_symbolic(d) for d in shape):
                # a flexible input (RangeDim / EnumeratedShapes): one sample of any size in
                # the symbolic dims; kernels work from the runtime shapes
                if arr.ndim != len(shape) or any(
                    not is_symbolic(d) and int(d) != s for d, s in zip(shape, arr.shape,
                                                                       strict=True)):
                    raise InterpreterError(f"input {name!r}: shape {arr.shape} does not fit "
                                           f"the program's {shape}")
                n, mode = 1, "batch"
            elif arr.shape == shape:
                n, mode = 1, "batch"
            elif shape and shape[0] == 1 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]:
                n, mode = arr.shape[0], "batch"
            elif arr.shape[1:] == shape and arr.ndim == len(shape) + 1:
                n, mode = arr.shape[0], "stacked"
            else:
                raise InterpreterError(
                    f"input {name!r}: shape {arr.shape} does not match the program's {shape}"
                )
            arrays[name] = arr
            sizes.add(n)
            modes.add(mode)
        if len(sizes) > 1 or len(modes) > 1:
            raise InterpreterError(f"inputs disagree on the number of samples: {sorted(sizes)}")
        if sizes and min(sizes) < 1:
            raise InterpreterError("no samples given")
        return arrays, sizes.pop() if sizes else 1, modes.pop() if modes else "batch"

    @torch.inference_mode()
    def _execute(
        self, arrays: Mapping[str, np.ndarray], wanted: Sequence[Var], batched: bool,
        state: dict[str, np.ndarray] | None = None,
    ) -> dict[Var, Any]:
        env: dict[Var, Any] = dict(self._const_env)
        for name, arr in arrays.items():
            var = self._inputs[name]
            dtype = _var_dtype(var)
            env[var] = to_tensor(np.asarray(arr, dtype=numpy_dtype(dtype)), dtype)
        cells = {}
        for name, var in self._states.items():
            dtype = var.sym_type.wrapped_type().get_primitive()
            cells[name] = env[var] = ops_tensor.StateCell(to_tensor(state[name], dtype))
        n = next(iter(arrays.values())).shape[0] if batched and arrays else 1
        keep = set(wanted)
        for step in self._steps:
            try:
                if n > 1 and step.on_batch and not step.vectorised:
                    result = self._per_sample(step, env, n)
                else:
                    result = step.spec.fn(OpArgs(
                        step.op, env, self._consts, n if batched and step.on_batch else 0,
                        step.inputs, step.cache))
            except InterpreterError:
                raise
            except Exception as exc:  # a kernel failing is a model/interpreter mismatch
                raise InterpreterError(
                    f"{step.op.op_type} {step.op.name!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
            values = result if isinstance(result, tuple) else (result,)
            for var, dtype, shape, value in zip(
                step.outputs, step.dtypes, step.shapes, values, strict=True
            ):
                if isinstance(value, torch.Tensor) and dtype is not None:
                    if step.rounds or value.dtype != ops.storage_dtype(dtype):
                        value = conform(value, dtype)
                    _check_shape(step, var, shape, value, n if step.on_batch else 1)
                    # One layout everywhere (a transpose's view, a conv's channels-last output
                    # would change how later kernels sum, and so the last bit, between runs).
                    # Without exact_batch, 4-D values are kept channels-last, where oneDNN's
                    # depthwise and 1x1 convs run up to 20x faster (same values, other sums).
                    if value.dim() == 4 and not self.exact_batch:
                        value = value.contiguous(memory_format=torch.channels_last)
                    else:
                        value = value.contiguous()
                env[var] = value
            for var in step.frees:
                if var not in keep:
                    del env[var]
        for name, cell in cells.items():  # the run succeeded: the state takes the updates
            state[name][...] = cell.value.numpy().astype(state[name].dtype)
        return {var: env[var] for var in wanted}

    def _per_sample(self, step: _Step, env: dict[Var, Any], n: int) -> tuple[Any, ...]:
        """Run ``step`` once per sample on dim-0 slices of its batch-carrying inputs and join
        the results on dim 0 (lists, e.g. classify's labels, are concatenated)."""
        full = {v: env[v] for v in step.input_vars if v in self._dependent}
        args = OpArgs(step.op, env, self._consts, 0, step.inputs, step.cache)
        parts = []
        try:  # the batch-carrying inputs are swapped for one sample's slice, then restored
            for i in range(n):
                for var, value in full.items():
                    env[var] = _sample(value, i)
                result = step.spec.fn(args)
                parts.append(result if isinstance(result, tuple) else (result,))
        finally:
            env.update(full)
        joined = []
        for values in zip(*parts, strict=True):
            if isinstance(values[0], torch.Tensor):
                joined.append(torch.cat(values))
            else:
                joined.append([item for part in values for item in part])
        return tuple(joined)

    def _join(self, parts: list[Any], var: Var, mode: str) -> Any:
        """Combine one-sample results: along the batch dim if the var has one, else stacked."""
        if var not in self._dependent:
            return parts[0]  # a constant: the same for every sample
        if isinstance(parts[0], list):
            return [item for part in parts for item in part]
        shape = _static_shape(var)
        op = self._classify_op()
        if (op is not None and var is op.outputs[1]) or (
            mode == "batch" and shape and shape[0] == 1
        ):
            return np.concatenate(parts)
        return np.stack(parts)


def _to_numpy(value: Any, var: Var) -> Any:
    """A stored value as handed to callers: NumPy in the var's program dtype (fp16 stays fp16)."""
    if not isinstance(value, torch.Tensor):
        return list(value) if isinstance(value, list) else value
    arr = value.numpy()
    dtype = numpy_dtype(_var_dtype(var)) if _var_dtype(var) is not None else None
    return arr.astype(dtype) if dtype is not None else arr.copy()


def _sample(t: torch.Tensor, i: int) -> torch.Tensor:
    """Sample ``i`` of a batch, 64-byte aligned like a fresh tensor: oneDNN picks kernels by
    pointer alignment, so a misaligned view can change a conv's last bit (measured on a 1x1
    conv over 47 channels)."""
    part = t[i : i + 1]
    return part if part.data_ptr() % 64 == 0 else part.clone()


def _only_consumer(var: Var) -> Operation | None:
    children = list(var.child_ops)
    return children[0] if len(children) == 1 else None


def _check_shape(step: _Step, var: Var, shape: tuple[Any, ...] | None, value: torch.Tensor,
                 n: int) -> None:
    """Compare a kernel's output with the program's declared shape (batch dim: N)."""
    if shape is None:
        return
    want = list(shape)
    if n != 1 and want:
        want[0] = n
    got = list(value.shape)
    if len(got) != len(want) or any(
        not is_symbolic(w) and int(w) != g for w, g in zip(want, got, strict=True)
    ):
        raise InterpreterError(
            f"{step.op.op_type} {step.op.name!r} produced {var.name!r} with shape {tuple(got)}, "
            f"the program declares {tuple(want)}"
        )
