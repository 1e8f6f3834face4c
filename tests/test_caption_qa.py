"""Caption QA numbers for the report (trainset.caption_qa)."""

from __future__ import annotations

import pandas as pd

import stage_helpers as H
from trainset import caption_qa, schemas


def _items() -> pd.DataFrame:
    rows = [
        H.item_row("s:a", tags=["1girl", "smile", "long_hair"], caption="t, 1girl, smile, long hair", caption_tokens=9,
                   background="white", background_uniformity=0.95, background_check="agrees"),
        H.item_row("s:b", tags=["1girl", "smile"], caption="t, 1girl, smile", caption_tokens=6,
                   background="purple", background_uniformity=0.9, background_check="fixed"),
        H.item_row("s:c", tags=["1girl"], caption="t, 1girl", caption_tokens=4),
        H.item_row("s:d", tags=["1girl", "hat"], caption="x " * 80, caption_tokens=80, caption_over_limit=True,
                   background="green", background_uniformity=0.85, background_check="flagged"),
    ]
    return H.frame(rows, schemas.SPLIT)


def test_summary_counts_what_a_curator_acts_on():
    qa = caption_qa.summary(_items(), rare_under=2, min_tags=1)
    assert qa["items"] == 4 and qa["distinct_tags"] == 4
    assert qa["top_tags"][:2] == [["1girl", 4], ["smile", 2]]
    assert qa["rare_tags"] == 2 and qa["rare_examples"] == ["hat", "long_hair"]
    assert qa["tags_in_every_caption"] == ["1girl"]
    assert qa["near_empty"] == 1 and qa["near_empty_items"] == ["s:c"]
    assert qa["tokens"]["min"] == 4 and qa["tokens"]["max"] == 80 and qa["over_token_limit"] == 1
    assert qa["tokens"]["histogram"] == {"0": 0, "1-15": 3, "16-30": 0, "31-45": 0, "46-60": 0, "61-75": 0, "> 75": 1}
    bg = qa["background"]
    assert bg["coverage"] == 0.75  # an opinion on 3 of 4
    assert bg["compared_with_tags"] == 3 and abs(bg["agreement"] - 1 / 3) < 1e-6
    assert (bg["fixed"], bg["flagged"]) == (1, 1)
    assert bg["named"] == {"green": 1, "purple": 1, "white": 1}


def test_render_states_coverage_beside_agreement():
    text = "\n".join(caption_qa.render(caption_qa.summary(_items(), rare_under=2)))
    assert "## Captions" in text
    assert "an opinion on 75.0% of items" in text and "agreement 33.3%" in text
    assert "1 tags fixed, 1 items flagged" in text
    assert "Tags in every caption (they condition nothing): 1girl." in text
    assert "| 1girl | 4 |" in text


def test_no_items_and_no_comparisons():
    empty = H.frame([], schemas.SPLIT)
    qa = caption_qa.summary(empty)
    assert qa["items"] == 0 and qa["background"]["agreement"] is None and qa["tags_in_every_caption"] == []
    assert "agreement n/a" in "\n".join(caption_qa.render(qa))
