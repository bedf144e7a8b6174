"""Search spaces: string round trips and clear errors for bad architectures."""

from __future__ import annotations

import pytest

from subspaces.nas.space import CELL_OPS, CellSpace, MacroSpace


def test_cell_space_round_trips_every_architecture() -> None:
    space = CellSpace()
    archs = list(space)
    assert len(archs) == len(space) == 625 == len(set(archs))
    for arch in archs:
        assert space.parse(space.to_string(arch)) == arch


def test_cell_string_format_matches_nas_bench_201() -> None:
    text = "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~2|"
    assert CellSpace().parse(text) == (3, 1, 2, 4)
    assert CellSpace(ops=("none", "nor_conv_3x3")).parse(
        "|none~0|+|nor_conv_3x3~0|none~1|+|none~2|"
    ) == (0, 1, 0, 0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("|conv_7x7~0|+|none~0|none~1|+|none~2|", "unknown operation 'conv_7x7'"),
        ("|none~0|+|none~0|none~1|", "has 2 nodes, expected 3"),
        ("|none~0|+|none~0|+|none~2|", "has 1 edges, expected 2"),
        ("|none~1|+|none~0|none~1|+|none~2|", "must be 'op~0'"),
        ("none~0+|none~0|none~1|+|none~2|", "must be written"),
    ],
)
def test_cell_parse_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CellSpace().parse(text)


def test_cell_validate_errors() -> None:
    space = CellSpace()
    with pytest.raises(ValueError, match="has 3 edges, expected 4"):
        space.validate((0, 1, 2))
    with pytest.raises(ValueError, match=r"out of range \[0, 5\)"):
        space.validate((0, 1, 2, 5))
    with pytest.raises(TypeError, match="string or a sequence of ints"):
        space.validate((0.0, 1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown operation"):
        CellSpace(ops=("skip_connect", "sep_conv"))
    with pytest.raises(ValueError, match="empty ops"):
        CellSpace(ops=())
    with pytest.raises(ValueError, match="must not repeat"):
        CellSpace(ops=("none", "none"))
    assert CELL_OPS[0] == "none"


def test_macro_space() -> None:
    space = MacroSpace(kernels=(1, 3), widths=(4,), layers=3)
    assert len(space) == len(list(space)) == 8
    assert space.parse("k3w4-k1w4-k3w4") == ((3, 4), (1, 4), (3, 4))
    with pytest.raises(ValueError, match="has 2 layers, expected 3"):
        space.parse("k3w4-k1w4")
    with pytest.raises(ValueError, match="not in kernels"):
        space.parse("k5w4-k1w4-k3w4")
    with pytest.raises(ValueError, match="k<kernel>w<width>"):
        space.parse("3x4-k1w4-k3w4")
    with pytest.raises(ValueError, match="positive odd"):
        MacroSpace(kernels=(2,))
    with pytest.raises(ValueError, match="at least one kernel"):
        MacroSpace(widths=())
    with pytest.raises(ValueError, match="layers must be"):
        MacroSpace(layers=0)
