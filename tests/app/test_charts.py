"""The app's chart specs."""
from __future__ import annotations


def test_charts_carry_their_data_inside_the_layers():
    """charts.show moves a spec's top-level data into its layers: Streamlit would convert it to pandas and Arrow."""
    from app_ui.charts.bars import inline_data

    rows = [{"x": 1}]
    spec = {"title": "t", "data": {"values": rows},
            "layer": [{"mark": "bar"}, {"mark": "text", "data": {"values": [{"x": 2}]}}]}
    out = inline_data(spec)
    assert "data" not in out and out["layer"][0]["data"] == {"values": rows}
    assert out["layer"][1]["data"] == {"values": [{"x": 2}]}  # a layer's own data kept
    assert spec["data"] == {"values": rows} and "data" not in spec["layer"][0]  # the caller's spec untouched
    assert inline_data({"data": {"values": rows}, "mark": "bar"})["data"] == {"values": rows}  # no layers: as is
