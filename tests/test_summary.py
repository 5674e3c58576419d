"""The paper's Tables 6 and 7 and the per-layer counts must come out of our model exactly."""

from __future__ import annotations

import json

import pytest

from mnv1_coreml.cli import main
from mnv1_coreml.model import BLOCKS, MobileNetConfig, MobileNetV1, scaled_channels, weight_keys
from mnv1_coreml.summary import (
    PAPER_TABLE6,
    PAPER_TABLE7,
    paper_macs_millions,
    summarize,
    variants_markdown,
)
from tests.conftest import REPO


@pytest.mark.parametrize("alpha", sorted(PAPER_TABLE6))
def test_table6_width_multiplier(alpha: float) -> None:
    macs_m, params_m = PAPER_TABLE6[alpha]
    s = summarize(MobileNetConfig(alpha=alpha, res=224))
    assert round(s.macs / 1e6) == macs_m
    assert round(s.params / 1e6, 1) == params_m
    assert paper_macs_millions(alpha, 224) == macs_m


@pytest.mark.parametrize("res", sorted(PAPER_TABLE7))
def test_table7_resolution(res: int) -> None:
    # The paper scaled the 224 count by (r/224)^2; at 160 the exact count is 290.68M.
    assert paper_macs_millions(1.0, res) == PAPER_TABLE7[res]
    exact = summarize(MobileNetConfig(alpha=1.0, res=res)).macs
    assert abs(exact / 1e6 - PAPER_TABLE7[res]) < 1.0


def test_per_layer_counts_1_0_224() -> None:
    s = summarize(MobileNetConfig(alpha=1.0, res=224))
    by_name = {r.name: r for r in s.layers}
    assert by_name["stem"].macs == 10_838_016
    assert by_name["blocks.0.dw"].macs == 3_612_672
    assert by_name["blocks.0.pw"].macs == 25_690_112
    assert s.macs == 568_740_352
    assert s.params == 4_231_976
    # the last depthwise layer is stride 1 at 7x7 (the paper's Table 1 typo says s2)
    last_dw = by_name["blocks.12.dw"]
    assert last_dw.stride == 1 and last_dw.input_shape == (1024, 7, 7)
    assert by_name["classifier"].macs == 1024 * 1000
    assert [r.type for r in s.layers].count("conv dw") == 13


def test_params_match_torch_parameter_count() -> None:
    for alpha in (1.0, 0.75, 0.5, 0.25, 0.1, 1.3):
        model = MobileNetV1(MobileNetConfig(alpha=alpha, res=224))
        assert summarize(model.cfg).params == sum(p.numel() for p in model.parameters())


def test_channel_rule() -> None:
    assert scaled_channels(32, 0.75) == 24
    assert scaled_channels(1024, 0.75) == 768
    assert scaled_channels(32, 0.1) == 8  # the floor of 8
    assert scaled_channels(1024, 1.3) == 1331
    assert len(BLOCKS) == 13


def test_state_dict_names_are_clean() -> None:
    keys = weight_keys(MobileNetV1(MobileNetConfig(alpha=0.25, res=128)))
    assert "stem.conv.weight" in keys and "blocks.12.pw.bn.running_var" in keys
    assert keys["classifier.weight"] == (1000, 256)
    assert not any("num_batches_tracked" in k for k in keys)
    assert len(keys) == 1 + 4 + 13 * 2 * 5 + 2


def test_tf_padding_shapes_match_torch_padding() -> None:
    import torch

    for padding in ("torch", "tf"):
        m = MobileNetV1(MobileNetConfig(alpha=0.25, res=96, padding=padding)).eval()
        assert m(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)


def test_summary_json_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--alpha", "1.0", "--res", "224", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == 568_740_352 and data["params"] == 4_231_976
    assert data["layers"][0]["macs"] == 10_838_016


def test_summary_table_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--alpha", "0.5", "--res", "160"]) == 0
    text = capsys.readouterr().out
    assert "76,524,800" in text and "1,331,592" in text


def test_readme_variants_table_is_generated() -> None:
    readme = (REPO / "README.md").read_text()
    assert variants_markdown() in readme, "README's variant table differs: paste `summary --all`"
