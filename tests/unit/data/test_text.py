"""Text templates: parsing errors, optional segments, alignment with indices, and user texts from history only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydantic
import pytest

from lmrec.data import (
    DATASET_NAMES,
    Dataset,
    ItemTextTemplate,
    TemplateError,
    UserTextTemplate,
    default_item_template,
    default_user_template,
    load_dataset,
    render_item_texts,
    render_user_texts,
)
from lmrec.data.text import MOVIELENS_ITEM_TEMPLATE, parse_template, template_fields


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{title", r"bad field '\{title' at position 0"),
        ("{ti tle}", r"bad field '\{ti tle\}'"),
        ("{}", r"bad field '\{\}'"),
        ("a } b", r"unmatched '\}' at position 2"),
        ("[{title}", r"unclosed '\[' at position 0"),
        ("{title}]", r"unmatched '\]' at position 7"),
        ("[a [{title}]]", r"nested '\[' at position 3"),
        ("{title}[ (none)]", r"optional segment at position 7 .* has no field"),
    ],
)
def test_malformed_templates_are_rejected_when_parsed(template, message):
    with pytest.raises(TemplateError, match=message):
        parse_template(template)
    with pytest.raises(pydantic.ValidationError, match=message):
        ItemTextTemplate(template=template)


def test_unknown_fields_list_the_available_ones():
    items = pd.DataFrame({"item_idx": [0], "item_id": [7], "title": ["A"], "genres": [["x"]]})
    unknown = r"unknown field\(s\) \['titel', 'tags'\]"
    with pytest.raises(TemplateError, match=rf"{unknown} in template .*; available: item_id, title, genres$"):
        render_item_texts(items, "{titel}[ Tags: {tags}.]")
    assert template_fields("{title}[ ({year})].[ Genres: {genres}.][ {title}]") == ("title", "year", "genres")


def test_optional_segments_lists_missing_values_and_escapes():
    items = pd.DataFrame({
        "item_idx": [2, 0, 1, 3],  # rows out of order: texts come back in item_idx order
        "title": ["Heat", "Toy Story", "Alien", "  "],
        "year": pd.array([1995, 1995, None, 2001], dtype="Int64"),
        "genres": [["Action", "Crime"], ["Animation"], ["Horror", "Sci-Fi"], []],
        "tags": [[], ["pixar", "fun"], np.array(["space"]), ["x"]],
        "rating": [np.nan, 4.25, 3.0, None],
    })  # fmt: skip
    texts = render_item_texts(items, MOVIELENS_ITEM_TEMPLATE)
    assert texts == [
        "Toy Story (1995). Genres: Animation. Tags: pixar, fun.",
        "Alien. Genres: Horror, Sci-Fi. Tags: space.",
        "Heat (1995). Genres: Action, Crime.",
        "(2001). Tags: x.",
    ]
    assert render_item_texts(items, "{title}: {rating}[ ({rating}/5)] {{raw}} [[x]]")[:2] == [
        "Toy Story: 4.25 (4.25/5) {raw} [x]",
        "Alien: 3 (3/5) {raw} [x]",
    ]
    stops = pd.DataFrame({"title": ["Acme Inc.", "Wait...", "Really?"]})
    assert render_item_texts(stops, "By {title}.") == ["By Acme Inc.", "By Wait...", "By Really?"]
    assert render_item_texts(stops, "By {title}") == ["By Acme Inc.", "By Wait...", "By Really?"]
    with pytest.raises(TemplateError, match="item_idx is not 0..n-1"):
        render_item_texts(items.iloc[1:], "{title}")


def test_default_templates_on_real_data(ml100k, data_dir):
    texts = render_item_texts(ml100k.items, default_item_template("ml-100k"))
    assert len(texts) == ml100k.n_items
    assert texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert texts[266] == "unknown."  # item 267: no year, no genre
    assert not any("()" in t or "Tags: ." in t or "Genres: ." in t or "  " in t for t in texts)

    small = load_dataset("ml-latest-small", data_dir=data_dir)
    texts = render_item_texts(small.items, ItemTextTemplate(template=default_item_template("ml-latest-small")))
    assert texts[0] == "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy. Tags: pixar, fun."
    babylon = int(small.items.index[small.items["title"] == "Babylon 5"][0])
    assert texts[babylon] == "Babylon 5. Genres: Sci-Fi."

    amazon = load_dataset("amazon-magazine", data_dir=data_dir)
    texts = render_item_texts(amazon.items, default_item_template("amazon-magazine"))
    assert sum(bool(t) for t in texts) == 151  # the 6 items without metadata have no text
    assert not any("<" in t or "&amp;" in t for t in texts)
    assert texts[1].startswith("MAXIMUM PC is the ultimate upgrade") and texts[1].endswith("Publisher: Future US, Inc.")

    for name in DATASET_NAMES:
        assert parse_template(default_item_template(name)) and parse_template(default_user_template(name))
    with pytest.raises(TemplateError, match="no default item template for 'custom'"):
        default_item_template("custom")


def _tiny_dataset() -> Dataset:
    inter = pd.DataFrame({
        "user_id": ["u1", "u1", "u1", "u2", "u1"],
        "item_id": ["a", "b", "c", "a", "d"],
        "rating": [5.0, 4.0, 3.0, 2.0, 1.0],
        "timestamp": [30, 10, 20, 5, 40],
    })  # fmt: skip
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"], "title": ["Alpha", "Beta", "Gamma", "Delta", "Eps"],
                          "genres": [["x"], ["y"], ["x", "z"], ["w"], []]})  # fmt: skip
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age": [30, 40, 50]})
    return Dataset.build("tiny", inter, items, users)


def test_user_texts_use_only_the_given_history_most_recent_first():
    ds = _tiny_dataset()
    train = ds.interactions[ds.interactions["timestamp"] < 40]  # item "d" (t=40) is u1's held-out test item
    template = "Age {age}.[ Recent: {recent_titles}.][ Genres: {recent_genres}.]"
    texts = render_user_texts(ds, train, template, n_recent=2)
    assert texts == ["Age 30. Recent: Alpha, Gamma. Genres: x, z.", "Age 40. Recent: Alpha. Genres: x.", "Age 50."]
    assert "Delta" not in texts[0]
    assert render_user_texts(ds, ds.interactions, template, n_recent=3)[0] == (
        "Age 30. Recent: Delta, Alpha, Gamma. Genres: w, x, z."
    )
    model = UserTextTemplate(template="[{recent_titles}]", n_recent=1)
    assert render_user_texts(ds, train, model) == ["Alpha", "Alpha", ""]
    available = "user_id, age, recent_item_id, recent_title, recent_genres, recent_titles"
    with pytest.raises(TemplateError, match=rf"unknown field\(s\) \['occupation'\].*; available: {available}$"):
        render_user_texts(ds, train, "{occupation}")
    with pytest.raises(TemplateError, match=r"history lacks column\(s\) \['timestamp'\]"):
        render_user_texts(ds, train.drop(columns="timestamp"), template)
    with pytest.raises(pydantic.ValidationError):
        UserTextTemplate(template="{age}", n_recent=-1)
    with pytest.raises(pydantic.ValidationError):
        UserTextTemplate(template="{age}", recent=3)  # typo'd option: extra="forbid"


def test_ml100k_user_texts(ml100k):
    half = ml100k.interactions[ml100k.interactions["timestamp"] < ml100k.interactions["timestamp"].median()]
    texts = render_user_texts(ml100k, half, default_user_template("ml-100k"))
    assert len(texts) == ml100k.n_users
    assert texts[0].startswith("User aged 24, gender M, occupation technician.")
    # A user whose ratings are all in the second half gets no "Recently rated" segment.
    late = sorted(set(range(ml100k.n_users)) - set(half["user_idx"]))
    assert late and all("Recently" not in texts[u] for u in late)
