"""Loaders on the real datasets (counts, fields, file order) and on bad files written in tmp_path (one clear
DataError line naming file, line and column; lenient mode drops, counts and warns)."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.data import DataError, DataWarning, load_custom, load_dataset
from lmrec.data.amazon import METADATA_FILE, REVIEWS_FILE, load_amazon_magazine
from lmrec.data.movielens import load_ml1m, load_ml100k, load_ml_latest_small

AMAZON = "amazon-2018-magazine-subscriptions"


def raises_exactly(message: str):
    """Expect a DataError whose message is exactly ``message`` (one line, nothing more)."""
    return pytest.raises(DataError, match=f"^{re.escape(message)}$")


# --------------------------------------------------------------------------------------------- real data


def test_ml100k_counts_fields_and_file_order(ml100k, data_dir):
    ds = ml100k
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_000, 943, 1_682)
    # File order is kept: the canonical u1..u5 splits are regenerated from it.
    reference = pd.read_csv(data_dir / "ml-100k" / "u.data", sep="\t", header=None).to_numpy()
    got = ds.interactions[["user_id", "item_id", "rating", "timestamp"]].to_numpy()
    np.testing.assert_array_equal(got, reference)
    assert ds.interactions["rating"].dtype == np.float32 and ds.interactions["timestamp"].dtype == np.int64
    assert ds.meta["dropped_rows"] == 0 and ds.meta["items_without_text"] == 0

    items = ds.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc[1, "tags"] == [] and items.loc[1, "release_date"] == pd.Timestamp("1995-01-01")
    # Item 267's title is literally "unknown": no year in it, no release date, only the "unknown" genre flag.
    assert items.loc[267, "title"] == "unknown" and pd.isna(items.loc[267, "year"])
    assert pd.isna(items.loc[267, "release_date"]) and items.loc[267, "genres"] == []
    assert items.loc[1373, "year"] == 1971 and items.loc[1373, "genres"] == []
    # The year is the last "(YYYY)"; a suffix after it stays in the title.
    assert items["title"].str.contains("Land Before Time III").sum() == 1
    land = items[items["title"].str.startswith("Land Before Time III")].iloc[0]
    assert land["title"] == "Land Before Time III: The Time of the Great Giving (V)" and land["year"] == 1995
    assert str(items["year"].dtype) == "Int64" and int(items["year"].isna().sum()) == 1
    assert not items["title"].str.contains(r"\(\d{4}\)$").any()

    users = ds.users.set_index("user_id")
    assert list(ds.users.columns) == ["user_idx", "user_id", "age", "gender", "occupation", "zip_code"]
    assert users.loc[1, ["age", "gender", "occupation", "zip_code"]].tolist() == [24, "M", "technician", "85711"]
    assert users.loc[74, "zip_code"] == "T8H1N"  # zip codes are text, not numbers


def test_ml100k_loads_fast(data_dir):
    # CPU time, not wall time: other jobs share this machine's 2 cores. Typically ~0.25 s.
    start = time.process_time()
    load_ml100k(data_dir / "ml-100k")
    assert time.process_time() - start < 2.0


def test_ml_latest_small(data_dir):
    ds = load_dataset("ml-latest-small", data_dir=data_dir)
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (100_836, 610, 9_742)
    assert ds.interactions["item_id"].nunique() == 9_724  # 18 movies in movies.csv were never rated
    assert set(np.unique(ds.interactions["rating"])) == {x / 2 for x in range(1, 11)}
    assert list(ds.users.columns) == ["user_idx", "user_id"]

    items = ds.items.set_index("item_id")
    assert items.loc[1, ["title", "year", "imdb_id", "tmdb_id"]].tolist() == ["Toy Story", 1995, "0114709", 862]
    assert items.loc[1, "genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert int((items["genres"].map(len) == 0).sum()) == 34  # "(no genres listed)"
    death_note = items[items["title"] == "Death Note: Desu nôto"]  # "(2006–2007)" in movies.csv
    assert death_note["year"].tolist() == [2006]
    assert items.loc[items["title"] == "Babylon 5", "year"].isna().all()

    # Tags: deduplicated case-insensitively, most frequent first, checked against an independent count.
    with open(data_dir / "ml-latest-small" / "tags.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["movieId"] == "296"]
    counts = collections.Counter(r["tag"].strip().lower() for r in rows)
    got = items.loc[296, "tags"]
    assert len(got) == len(counts) and {t.lower() for t in got} == set(counts)
    assert [counts[t.lower()] for t in got] == sorted(counts.values(), reverse=True)
    assert items["tags"].map(len).gt(0).sum() == 1_572


def test_ml1m_with_a_ratings_sample(tmp_path, data_dir):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for name in ("movies.dat", "users.dat"):
        (folder / name).symlink_to(data_dir / "ml-1m" / name)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n25::73::4::978300275\n")
    ds = load_dataset("ml-1m", data_dir=tmp_path)
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (3, 6_040, 3_883)
    assert ds.interactions["user_id"].tolist() == [1, 1, 25] and ds.interactions["rating"].tolist() == [5, 3, 4]

    users = ds.users.set_index("user_id")
    assert users.loc[1, ["gender", "age", "occupation"]].tolist() == ["F", "Under 18", "K-12 student"]
    assert users.loc[3, ["age", "occupation"]].tolist() == ["25-34", "scientist"]
    assert users.loc[25, ["age", "occupation", "zip_code"]].tolist() == ["18-24", "college/grad student", "01609"]
    items = ds.items.set_index("item_id")
    assert items.loc[73, ["title", "year"]].tolist() == ["Misérables, Les", 1995]  # latin-1 decoded
    assert items.loc[1, "genres"] == ["Animation", "Children's", "Comedy"]

    # A large ratings file may be stored gzipped.
    (folder / "ratings.dat.gz").write_bytes(gzip.compress((folder / "ratings.dat").read_bytes()))
    (folder / "ratings.dat").unlink()
    assert len(load_ml1m(folder).interactions) == 3


def test_amazon_magazine(data_dir):
    ds = load_dataset("amazon-magazine", data_dir=data_dir)
    assert (len(ds.interactions), ds.n_users, ds.n_items) == (2_375, 348, 157)
    assert ds.interactions["user_id"].map(type).eq(str).all() and ds.interactions["item_id"].map(type).eq(str).all()
    assert ds.interactions["rating"].value_counts().sort_index().tolist() == [102, 118, 239, 375, 1_541]
    assert ds.meta["items_without_text"] == 6  # 151 of the 157 reviewed items have metadata
    items = ds.items
    titles = items["title"].fillna("")
    assert sorted(t for t in titles if t) == ["Gourmet (1-year)", "SmartMoney (1-year)", "Woman's Day"]
    descriptions = items["description"].fillna("")
    assert (descriptions != "").sum() == 145
    assert not descriptions.str.contains(r"<[a-zA-Z/]|&amp;").any()  # HTML stripped, entities decoded
    computers = items.loc[items["item_id"] == "B00005N7P0", "categories"].iloc[0]
    assert computers == ["Magazine Subscriptions", "Technology", "Computers & Internet"]


def test_registry_rejects_unknown_names_and_accepts_a_dataset_folder(data_dir):
    with pytest.raises(DataError, match="valid names: ml-100k, ml-1m, ml-latest-small, amazon-magazine"):
        load_dataset("movielens")
    # data_dir may also be the dataset folder itself.
    assert len(load_dataset("amazon-magazine", data_dir=data_dir / AMAZON).interactions) == 2_375


# ------------------------------------------------------------------------------------------ custom data


def test_custom_csv_with_string_ids_and_implicit_feedback(tmp_path):
    (tmp_path / "inter.csv").write_text("user_id,item_id,extra\nalice,007,x\nbob,007,y\nbob,b2,z\n")
    (tmp_path / "items.csv").write_text('item_id,title,genres,tags\n007,"Dr. No, 1962",Action|Spy,\nb2,Blue,,fun\n')
    (tmp_path / "users.csv").write_text("user_id,age\nalice,30\ncarol,41\n")
    ds = load_custom(tmp_path / "inter.csv", tmp_path / "items.csv", tmp_path / "users.csv", name="shop")
    assert ds.name == "shop" and ds.meta["implicit"] is True
    assert ds.interactions["rating"].tolist() == [1.0, 1.0, 1.0] and ds.interactions["timestamp"].tolist() == [0, 0, 0]
    assert ds.item_ids.tolist() == ["007", "b2"]  # "007" keeps its leading zero
    assert ds.user_ids.tolist() == ["alice", "bob", "carol"]  # carol: in the user table, no interactions
    items = ds.items.set_index("item_id")
    assert items.loc["007", "title"] == "Dr. No, 1962" and items.loc["007", "genres"] == ["Action", "Spy"]
    assert items.loc["b2", "genres"] == [] and items.loc["b2", "tags"] == ["fun"]
    assert ds.users.set_index("user_id").loc["carol", "age"] == "41"


def test_custom_parquet_and_jsonl_with_integer_ids(tmp_path):
    inter = pd.DataFrame({"user_id": [10, 11, 10], "item_id": [5, 6, 6], "rating": [4.5, 2.0, 3.0],
                          "timestamp": [100, 200, 300]})  # fmt: skip
    inter.to_parquet(tmp_path / "inter.parquet")
    lines = [{"item_id": 5, "title": "Five", "tags": ["a", "b"], "price": 3}, {"item_id": 6, "title": "Six"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = load_custom(tmp_path / "inter.parquet", tmp_path / "items.jsonl", item_text_columns=["title", "tags"])
    assert ds.item_ids.dtype == np.int64 and ds.user_ids.tolist() == [10, 11]
    assert ds.interactions["rating"].tolist() == [4.5, 2.0, 3.0] and ds.meta["implicit"] is False
    assert list(ds.items.columns) == ["item_idx", "item_id", "title", "tags"]
    assert ds.items["tags"].tolist() == [["a", "b"], []]
    with pytest.raises(DataError, match=r"no column\(s\) \['name'\]; available: \['title', 'tags', 'price'\]"):
        load_custom(tmp_path / "inter.parquet", tmp_path / "items.jsonl", item_text_columns=["name"])


def test_custom_errors_name_the_row(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "rating": ["5", "high"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"^bad.parquet row 2, column 'rating': 'high' is not a number$"):
        load_custom(tmp_path / "bad.parquet")
    (tmp_path / "noitem.csv").write_text("user_id,rating\n1,5\n")
    with pytest.raises(DataError, match=r"noitem.csv line 1: header 'user_id,rating' lacks column\(s\) \['item_id'\]"):
        load_custom(tmp_path / "noitem.csv")
    (tmp_path / "dup.csv").write_text("item_id,title\n1,a\n1,b\n")
    (tmp_path / "ok.csv").write_text("user_id,item_id\n1,1\n")
    with pytest.raises(DataError, match=r"dup.csv line 3, column 1 \(item_id\): item_id '1' appears 2 times"):
        load_custom(tmp_path / "ok.csv", tmp_path / "dup.csv")


# ------------------------------------------------------------------------------------------- bad files


@pytest.fixture
def ml100k_copy(tmp_path, data_dir) -> Path:
    """An ml-100k folder with the real u.item/u.user and the first 20 lines of u.data, ready to be spoiled."""
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name in ("u.item", "u.user"):
        shutil.copy(data_dir / "ml-100k" / name, folder / name)
    lines = (data_dir / "ml-100k" / "u.data").read_text().splitlines()[:20]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


def _replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="latin-1").split("\n")
    lines[number - 1] = text
    path.write_text("\n".join(lines), encoding="latin-1")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("196\t242\tabc\t881250949", r"u.data line 17, column 3 \(rating\): 'abc' is not a number"),
        ("196\t242\t7\t881250949", r"u.data line 17, column 3 \(rating\): '7' is outside the range 1..5"),
        ("196\t242\t3.5\t881250949", r"u.data line 17, column 3 \(rating\): '3.5' is not an integer"),
        ("196\t\t3\t881250949", r"u.data line 17, column 2 \(item_id\): missing value"),
        ("196\t242\t3\t881250949\t1", r"u.data: expected 4 tab-separated fields, line 17 has 5"),
        ("196,242,3,881250949", r"u.data: expected 4 tab-separated fields, line 17 has 1 \(wrong separator\?\)"),
    ],
)
def test_bad_value_in_u_data_is_one_clear_line(ml100k_copy, line, message):
    _replace_line(ml100k_copy / "u.data", 17, line)
    with pytest.raises(DataError, match=f"^{message}$") as err:
        load_ml100k(ml100k_copy)
    assert "\n" not in str(err.value)


def test_truncated_and_missing_files(ml100k_copy):
    data = ml100k_copy / "u.data"
    text = data.read_text()
    last = text.rstrip("\n").rfind("\n") + 1
    data.write_text(text[:last] + "\t".join(text[last:].split("\t")[:2]))  # cut inside the last line
    with raises_exactly("u.data: expected 4 tab-separated fields, line 20 has 2 (truncated file?)"):
        load_ml100k(ml100k_copy)
    data.write_text("\n")
    with pytest.raises(DataError, match="^u.data: no data rows$"):
        load_ml100k(ml100k_copy)
    (ml100k_copy / "u.user").unlink()
    with pytest.raises(DataError, match=r"u.user: file not found \(part of the ml-100k dataset\)$"):
        load_ml100k(ml100k_copy)
    with pytest.raises(DataError, match=r"ml-100k: no complete copy in .*ml-100k lacks \['u.user'\]"):
        load_dataset("ml-100k", data_dir=ml100k_copy.parent)


def test_bad_side_tables(ml100k_copy):
    item = ml100k_copy / "u.item"
    original = item.read_bytes()
    _replace_line(item, 5, "5|Copycat (1995)|31-Feb-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0")
    with pytest.raises(DataError, match=r"^u.item line 5, column 3 \(release_date\): '31-Feb-1995' is not a date"):
        load_ml100k(ml100k_copy)
    _replace_line(item, 5, "5|Copycat (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|2|0|0")
    with raises_exactly("u.item line 5, column 22 (genre:Thriller): '2' is outside the range 0..1"):
        load_ml100k(ml100k_copy)
    item.write_bytes(original + original.split(b"\n")[0] + b"\n")  # item 1 again at the end
    with pytest.raises(DataError, match="u.item: item_id 1 appears 2 times"):
        load_ml100k(ml100k_copy)
    item.write_bytes(original)
    _replace_line(ml100k_copy / "u.user", 3, "3|23|X|writer|32067")
    with pytest.raises(DataError, match=r"^u.user line 3, column 3 \(gender\): 'X' is not one of 'M', 'F'$"):
        load_ml100k(ml100k_copy)


def test_lenient_drops_counts_and_warns(ml100k_copy, data_dir):
    _replace_line(ml100k_copy / "u.data", 3, "1\t2\tabc\t4")
    _replace_line(ml100k_copy / "u.data", 9, "1\t2")
    with pytest.raises(DataError, match=r"u.data line 3, .*'abc' is not a number \(1 more bad row\(s\); lenient=True"):
        load_ml100k(ml100k_copy)
    with pytest.warns(DataWarning, match=r"ml-100k: dropped 2 bad row\(s\) \(u.data: 2\); first: u.data line 3"):
        ds = load_dataset("ml-100k", data_dir=ml100k_copy.parent, lenient=True)
    assert len(ds.interactions) == 18 and ds.meta["dropped_rows"] == 2 and ds.meta["dropped_by_file"] == {"u.data": 2}
    assert ds.interactions["rating"].dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean files drop and warn about nothing
        assert load_ml100k(data_dir / "ml-100k", lenient=True).meta["dropped_rows"] == 0


def test_csv_wrong_separator_and_undecodable_bytes(tmp_path, data_dir):
    folder = tmp_path / "ml-latest-small"
    shutil.copytree(data_dir / "ml-latest-small", folder)
    ratings = folder / "ratings.csv"
    good = ratings.read_bytes()
    ratings.write_bytes(good.replace(b"1,1,4.0,964982703", b"1;1;4.0;964982703", 1))
    with raises_exactly("ratings.csv: expected 4 comma-separated fields, line 2 has 1 (wrong separator?)"):
        load_ml_latest_small(folder)
    ratings.write_bytes(good.replace(b",", b";"))
    header = "ratings.csv line 1: header 'userId;movieId;rating;timestamp'"
    with pytest.raises(DataError, match=rf"^{header} lacks column\(s\) \['userId', .*\(wrong separator\?\)$"):
        load_ml_latest_small(folder)
    ratings.write_bytes(good)
    movies = folder / "movies.csv"
    movies.write_bytes(movies.read_bytes().replace(b"Jumanji", b"Jum\xffanji", 1))
    with raises_exactly("movies.csv line 3, column 2 (title): byte(s) b'\\xff' are not valid utf-8"):
        load_ml_latest_small(folder)
    with pytest.warns(DataWarning, match="movies.csv: 1"):
        ds = load_ml_latest_small(folder, lenient=True)
    assert ds.n_items == 9_742 and ds.meta["items_without_text"] == 1  # movie 2 is rated, so it stays


def test_ml1m_bad_codes(tmp_path, data_dir):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "movies.dat").symlink_to(data_dir / "ml-1m" / "movies.dat")
    users = (data_dir / "ml-1m" / "users.dat").read_text().split("\n")
    users[1] = "2::M::27::16::70072"
    (folder / "users.dat").write_text("\n".join(users))
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n")
    with raises_exactly("users.dat line 2, column 3 (age): '27' is not one of 1, 18, 25, 35, 45, 50, 56"):
        load_ml1m(folder)
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1:1193:5:978300760\n")
    with raises_exactly("ratings.dat: expected 4 '::'-separated fields, line 2 has 1 (wrong separator?)"):
        load_ml1m(folder)


def test_amazon_bad_json_and_truncated_gzip(tmp_path, data_dir):
    folder = tmp_path / "amazon-magazine"
    folder.mkdir()
    (folder / METADATA_FILE).symlink_to(data_dir / AMAZON / METADATA_FILE)
    reviews = gzip.decompress((data_dir / AMAZON / REVIEWS_FILE).read_bytes()).split(b"\n")
    spoiled = list(reviews)
    spoiled[1] = spoiled[1][:40]
    (folder / REVIEWS_FILE).write_bytes(gzip.compress(b"\n".join(spoiled)))
    with pytest.raises(DataError, match=rf"^{REVIEWS_FILE} line 2: not valid JSON \("):
        load_amazon_magazine(folder)
    spoiled = list(reviews)
    spoiled[4] = spoiled[4].replace(b'"overall": 5.0', b'"overall": 6.0')
    (folder / REVIEWS_FILE).write_bytes(gzip.compress(b"\n".join(spoiled)))
    with pytest.raises(DataError, match=rf"^{REVIEWS_FILE} line 5, field 'overall': 6.0 is outside the range 1..5$"):
        load_amazon_magazine(folder)
    with pytest.warns(DataWarning):
        assert len(load_amazon_magazine(folder, lenient=True).interactions) == 2_374
    whole = gzip.compress(b"\n".join(reviews))
    (folder / REVIEWS_FILE).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"^{REVIEWS_FILE}: compressed stream is truncated or corrupt"):
        load_amazon_magazine(folder)
