"""Compression configs, one small class per technique (coremltools ``optimize.coreml`` style).

A config says what to do to the weights; :func:`mnv1_coreml.compress.compress` does it. Each
config also knows the deployment target it needs, the tolerance kind ``validate`` applies to
its models, and how it is written into (and read back from) the ``mnv1.compression`` metadata
key as JSON. This module imports neither torch nor coremltools, so parsing options is cheap.

Adding a technique: subclass :class:`CompressionConfig`, decorate it with :func:`register`, and
register its pass in :mod:`mnv1_coreml.compress.api` with ``@compression_pass(YourConfig)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import UserError

Granularity = Literal["per-tensor", "per-grouped-channel"]
GRANULARITIES: tuple[str, ...] = ("per-tensor", "per-grouped-channel")
Method = Literal["optimal", "coremltools"]
METHODS: tuple[str, ...] = ("optimal", "coremltools")
#: LUT sizes Core ML supports; 3 bits (8 entries) only from iOS18 on.
PALETTE_BITS: tuple[int, ...] = (8, 6, 4, 3, 2, 1)
#: The palette sizes the README documents tolerances for; smaller ones share a loose bound.
DOCUMENTED_PALETTE_BITS: tuple[int, ...] = (8, 6, 4)
#: Output channels per palette in ``per-grouped-channel`` mode, unless asked otherwise.
DEFAULT_GROUP_SIZE = 16
#: ``mnv1.compression`` of an uncompressed model.
NO_COMPRESSION: dict[str, Any] = {"mode": "none"}


class CompressionConfig:
    """Base of the configs. Subclasses are frozen dataclasses with a unique ``mode``."""

    mode: ClassVar[str]
    #: Compute precisions (``--precision``) the technique works with.
    precisions: ClassVar[tuple[str, ...]] = ("fp16", "fp32")

    def required_target(self) -> str:
        """Oldest deployment target (``"iOS16"``...) whose Core ML runs the compressed model."""
        raise NotImplementedError

    def kind(self) -> str:
        """The model kind ``validate`` picks tolerances by (``"palettized-8"``, ``"int8"``...)."""
        raise NotImplementedError

    def describe(self) -> dict[str, str]:
        """The human-readable ``palettization`` and ``quantization`` metadata values."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The machine-readable ``mnv1.compression`` value; ``from_json`` reads it back."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CompressionConfig:
        raise NotImplementedError


CONFIGS: dict[str, type[CompressionConfig]] = {}


def register(cls: type[CompressionConfig]) -> type[CompressionConfig]:
    """Make a config readable from metadata (by its ``mode``)."""
    CONFIGS[cls.mode] = cls
    return cls


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"mnv1.compression: {key} must be an integer, got {value!r}")
    return value


@register
@dataclass(frozen=True)
class Palettize(CompressionConfig):
    """k-means palettization of every conv and FC weight to a ``2**bits``-entry LUT.

    ``granularity="per-grouped-channel"`` makes one palette per ``group_size`` output channels
    (iOS18). ``method`` picks the clustering: ``"optimal"`` (exact 1-D k-means, ours) or
    ``"coremltools"`` (its own k-means, kept for comparison).
    """

    bits: int
    granularity: Granularity = "per-tensor"
    group_size: int = DEFAULT_GROUP_SIZE
    method: Method = "optimal"
    mode: ClassVar[str] = "palettize"

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or self.bits not in PALETTE_BITS:
            raise UserError(
                f"palettization takes 8, 6, 4 (or 3, 2, 1) bits, got {self.bits!r}"
            )
        if self.granularity not in GRANULARITIES:
            raise UserError(
                f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if isinstance(self.group_size, bool) or not (
            isinstance(self.group_size, int) and self.group_size >= 1
        ):
            raise UserError(f"group size must be an integer >= 1, got {self.group_size!r}")
        if self.method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def required_target(self) -> str:
        # per-tensor LUTs of 2..256 entries arrived with iOS16; grouped LUTs and 8 entries iOS18
        if self.granularity == "per-grouped-channel" or self.bits == 3:
            return "iOS18"
        return "iOS16"

    def kind(self) -> str:
        return f"palettized-{self.bits}" if self.bits in DOCUMENTED_PALETTE_BITS else (
            "palettized-low"
        )

    def describe(self) -> dict[str, str]:
        text = f"{self.bits}-bit {self.granularity}"
        if self.granularity == "per-grouped-channel":
            text += f" group_size={self.group_size}"
        return {"palettization": f"{text} kmeans-{self.method}", "quantization": "none"}

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "bits": self.bits, "granularity": self.granularity,
            "group_size": self.group_size if self.granularity == "per-grouped-channel" else None,
            "method": self.method,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Palettize:
        granularity = data.get("granularity")
        group_size = (
            DEFAULT_GROUP_SIZE if granularity == "per-tensor" else _int(data, "group_size")
        )
        return cls(_int(data, "bits"), granularity, group_size, data.get("method", "optimal"))


@register
@dataclass(frozen=True)
class QuantizeInt8(CompressionConfig):
    """int8 linear symmetric weight quantization, one scale per output channel (iOS16)."""

    mode: ClassVar[str] = "int8"

    def required_target(self) -> str:
        return "iOS16"

    def kind(self) -> str:
        return "int8"

    def describe(self) -> dict[str, str]:
        return {"palettization": "none", "quantization": "int8 linear-symmetric per-channel"}

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "bits": 8, "granularity": "per-channel",
                "scheme": "linear-symmetric"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuantizeInt8:
        if data.get("bits", 8) != 8:
            raise UserError(f"mnv1.compression: int8 with bits {data.get('bits')!r}")
        return cls()


@register
@dataclass(frozen=True)
class QuantizeW8A8(QuantizeInt8):
    """W8A8: the int8 weights of :class:`QuantizeInt8` plus int8 activations (iOS17).

    coremltools' activation passes put ``quantize``/``dequantize`` pairs around conv, linear,
    add and pooling ops, with scales from ranges that the reference interpreter measures on
    ``calibration`` (a directory of photos, prepared as for the golden) or, by default, on the
    packaged photos and probes (see :mod:`mnv1_coreml.compress.w8a8`). Only the directory's
    name goes into the metadata.
    """

    calibration: str | None = None
    mode: ClassVar[str] = "w8a8"
    # coremltools' suffix pass writes fp16 scales, which an fp32 program's quantize rejects
    precisions: ClassVar[tuple[str, ...]] = ("fp16",)

    def __post_init__(self) -> None:
        if self.calibration is not None and not isinstance(self.calibration, str):
            object.__setattr__(self, "calibration", str(self.calibration))  # a Path

    def required_target(self) -> str:
        return "iOS17"  # activation quantize/dequantize ops arrived with iOS17

    def kind(self) -> str:
        return "w8a8"

    def describe(self) -> dict[str, str]:
        return {
            "palettization": "none",
            "quantization": "w8a8 int8 linear-symmetric per-channel weights, int8 "
            "linear-symmetric per-tensor activations (calibrated)",
        }

    def to_json(self) -> dict[str, Any]:
        name = None if self.calibration is None else self.calibration.rstrip("/\\")
        if name is not None:
            name = name.replace("\\", "/").rsplit("/", 1)[-1] or name
        return {"mode": self.mode, "bits": 8, "granularity": "per-channel",
                "scheme": "linear-symmetric", "activations": "int8 linear-symmetric per-tensor",
                "calibration": name}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QuantizeW8A8:
        if data.get("bits", 8) != 8:
            raise UserError(f"mnv1.compression: w8a8 with bits {data.get('bits')!r}")
        calibration = data.get("calibration")
        if calibration is not None and not isinstance(calibration, str):
            raise UserError(f"mnv1.compression: calibration must be a name, got {calibration!r}")
        return cls(calibration)


#: ``--quantize`` values; the CLI passes ``--calibration`` to those that take it (W8A8).
QUANTIZERS: dict[str, type[CompressionConfig]] = {"int8": QuantizeInt8, "w8a8": QuantizeW8A8}


def describe(config: CompressionConfig | None) -> dict[str, str]:
    """Human-readable ``palettization``/``quantization`` values, ``none`` when uncompressed."""
    return {"palettization": "none", "quantization": "none"} if config is None else (
        config.describe()
    )


def to_metadata(config: CompressionConfig | None) -> str:
    """The ``mnv1.compression`` metadata value (compact JSON)."""
    data = NO_COMPRESSION if config is None else config.to_json()
    return json.dumps(data, separators=(",", ":"))


def from_metadata(text: str) -> CompressionConfig | None:
    """Parse ``mnv1.compression``; ``None`` means uncompressed. Anything else: a UserError."""
    try:
        data = json.loads(text)
    except ValueError:
        raise UserError(f"mnv1.compression is not JSON: {text[:80]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("mode"), str):
        raise UserError(f"mnv1.compression has no mode: {text[:80]!r}")
    mode = data["mode"]
    if mode == "none":
        return None
    if mode not in CONFIGS:
        raise UserError(
            f"mnv1.compression mode {mode!r} is unknown to this version (known: none, "
            f"{', '.join(CONFIGS)}); upgrade mnv1-coreml or re-convert the model"
        )
    try:
        return CONFIGS[mode].from_json(data)
    except UserError as exc:
        raise UserError(f"mnv1.compression {text[:80]!r}: {exc}") from None
