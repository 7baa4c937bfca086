"""MovieLens loaders (GroupLens): 100K, 1M and latest-small, each from the folder of its unpacked zip.

Every loader returns ``lmrec.data.schema.Dataset`` with interactions in file order (the canonical ML-100K
u1..u5 splits can then be regenerated) and an item table with title (year stripped), year, genres and tags,
so the same text template renders any MovieLens variant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.data.parsing import Column, DropLog, check_unique, read_delimited, require_file
from lmrec.data.schema import Dataset

# u.genre order (the 19 flag columns of u.item). "unknown" is not a genre: items flagged with it get [].
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# ML-1M README code tables for users.dat.
ML1M_AGE_GROUPS = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATIONS = {
    0: "other", 1: "academic/educator", 2: "artist", 3: "clerical/admin", 4: "college/grad student",
    5: "customer service", 6: "doctor/health care", 7: "executive/managerial", 8: "farmer", 9: "homemaker",
    10: "K-12 student", 11: "lawyer", 12: "programmer", 13: "retired", 14: "sales/marketing", 15: "scientist",
    16: "self-employed", 17: "technician/engineer", 18: "tradesman/craftsman", 19: "unemployed", 20: "writer",
}  # fmt: skip

NO_GENRES = "(no genres listed)"
# The last "(YYYY)" in a title, also "(2006–2007)" for series; whatever follows it (" (V)") stays in the title.
_TITLE_YEAR = r"^(?P<before>.*)\((?P<year>\d{4})(?:[–-]\d{0,4})?\)(?P<after>.*)$"


def _ratings_columns(lo: float, hi: float, kind: str, source: tuple[str, str, str, str] | None = None) -> list[Column]:
    names = ("user_id", "item_id", "rating", "timestamp")
    source = source or names
    return [
        Column("user_id", "int", source=source[0], lo=1),
        Column("item_id", "int", source=source[1], lo=1),
        Column("rating", kind, source=source[2], lo=lo, hi=hi),
        Column("timestamp", "int", source=source[3], lo=0),
    ]


def _require_all(folder: Path, dataset: str, names: tuple[str, ...]) -> dict[str, Path]:
    """Every file of the dataset, checked before any is parsed: a missing one fails fast."""
    return {name: require_file(Path(folder), name, dataset) for name in names}


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """("Toy Story (1995)") -> ("Toy Story", 1995): the title without its year, and the year (nullable Int64)."""
    parts = titles.str.extract(_TITLE_YEAR)
    has_year = parts["year"].notna()
    rest = (parts["before"].str.rstrip() + " " + parts["after"].str.strip()).str.strip()
    clean = titles.where(~has_year, rest).str.replace(r"\s+", " ", regex=True).str.strip()
    years = pd.to_numeric(parts["year"], errors="coerce").astype("Int64")
    return clean.astype(object), years


def _split_genres(genres: pd.Series) -> pd.Series:
    return genres.map(lambda g: [] if g.strip() in ("", NO_GENRES) else [x for x in g.split("|") if x])


def load_ml100k(folder: Path, *, lenient: bool = False) -> Dataset:
    """MovieLens 100K from ``folder`` (u.data, u.item, u.user)."""
    path = _require_all(folder, "ml-100k", ("u.data", "u.item", "u.user"))
    log = DropLog()
    ratings = log.add(
        read_delimited(path["u.data"], _ratings_columns(1, 5, "int"), sep="\t", encoding="ascii", lenient=lenient)
    )
    item_columns = [
        Column("item_id", "int", lo=1),
        Column("title"),
        Column("release_date", "date", required=False, date_format="%d-%b-%Y"),
        Column("video_release_date", required=False),
        Column("url", required=False),
    ] + [Column(f"genre:{g}", "int", lo=0, hi=1) for g in ML100K_GENRES]
    items = read_delimited(path["u.item"], item_columns, sep="|", encoding="latin-1", lenient=lenient)
    items = log.add(check_unique(items, "item_id", lenient))
    user_columns = [
        Column("user_id", "int", lo=1),
        Column("age", "int", lo=0, hi=120),
        Column("gender", choices=("M", "F")),
        Column("occupation"),
        Column("zip_code"),  # kept as text: some are Canadian postcodes ("T8H1N") or have leading zeros
    ]
    users = read_delimited(path["u.user"], user_columns, sep="|", encoding="latin-1", lenient=lenient)
    users = log.add(check_unique(users, "user_id", lenient))

    title, year = split_title_year(items["title"])
    # The title's year first; the release date is the fallback (item 267, titled "unknown", has neither).
    year = year.fillna(items["release_date"].dt.year.astype("Int64"))
    flags = items[[f"genre:{g}" for g in ML100K_GENRES]].to_numpy(dtype=bool)
    names = np.array(ML100K_GENRES, dtype=object)
    genres = [[g for g in names[row] if g != "unknown"] for row in flags]
    item_table = pd.DataFrame({
        "item_id": items["item_id"], "title": title, "year": year, "genres": genres,
        "tags": [[] for _ in range(len(items))], "release_date": items["release_date"], "url": items["url"],
    })  # fmt: skip
    meta = log.finish("ml-100k", {"source": str(Path(folder))})
    return Dataset.build("ml-100k", ratings, item_table, users, meta=meta)


def load_ml1m(folder: Path, *, lenient: bool = False) -> Dataset:
    """MovieLens 1M from ``folder`` (ratings.dat or ratings.dat.gz, movies.dat, users.dat; '::'-separated)."""
    path = _require_all(folder, "ml-1m", ("ratings.dat", "movies.dat", "users.dat"))
    log = DropLog()
    ratings = log.add(
        read_delimited(path["ratings.dat"], _ratings_columns(1, 5, "int"), sep="::", encoding="ascii", lenient=lenient)
    )
    movie_columns = [Column("item_id", "int", lo=1), Column("title"), Column("genres", required=False)]
    movies = read_delimited(path["movies.dat"], movie_columns, sep="::", encoding="latin-1", lenient=lenient)
    movies = log.add(check_unique(movies, "item_id", lenient))
    user_columns = [
        Column("user_id", "int", lo=1),
        Column("gender", choices=("M", "F")),
        Column("age", "int", choices=tuple(ML1M_AGE_GROUPS)),
        Column("occupation", "int", choices=tuple(ML1M_OCCUPATIONS)),
        Column("zip_code"),
    ]
    users = read_delimited(path["users.dat"], user_columns, sep="::", encoding="latin-1", lenient=lenient)
    users = log.add(check_unique(users, "user_id", lenient))
    # Codes become the README's labels: text templates then read "25-34", "college/grad student".
    users["age"] = users["age"].map(ML1M_AGE_GROUPS).astype(object)
    users["occupation"] = users["occupation"].map(ML1M_OCCUPATIONS).astype(object)

    title, year = split_title_year(movies["title"])
    item_table = pd.DataFrame({
        "item_id": movies["item_id"], "title": title, "year": year, "genres": _split_genres(movies["genres"]),
        "tags": [[] for _ in range(len(movies))],
    })  # fmt: skip
    meta = log.finish("ml-1m", {"source": str(Path(folder))})
    return Dataset.build("ml-1m", ratings, item_table, users, meta=meta)


def load_ml_latest_small(folder: Path, *, lenient: bool = False) -> Dataset:
    """MovieLens latest-small from ``folder`` (ratings.csv, movies.csv, tags.csv; links.csv when present)."""
    path = _require_all(folder, "ml-latest-small", ("ratings.csv", "movies.csv", "tags.csv"))
    log = DropLog()
    csv = {"sep": ",", "encoding": "utf-8", "header": True, "quoted": True, "lenient": lenient}
    ratings_source = ("userId", "movieId", "rating", "timestamp")
    ratings = log.add(read_delimited(path["ratings.csv"], _ratings_columns(0.5, 5, "float", ratings_source), **csv))
    movie_columns = [
        Column("item_id", "int", source="movieId", lo=1),
        Column("title"),
        Column("genres", required=False),
    ]
    movies = read_delimited(path["movies.csv"], movie_columns, **csv)
    movies = log.add(check_unique(movies, "item_id", lenient))
    tag_columns = [
        Column("user_id", "int", source="userId", lo=1),
        Column("item_id", "int", source="movieId", lo=1),
        Column("tag"),
        Column("timestamp", "int", lo=0),
    ]
    tags = log.add(read_delimited(path["tags.csv"], tag_columns, **csv))

    title, year = split_title_year(movies["title"])
    item_table = pd.DataFrame({
        "item_id": movies["item_id"], "title": title, "year": year, "genres": _split_genres(movies["genres"]),
    })  # fmt: skip
    item_table["tags"] = item_table["item_id"].map(aggregate_tags(tags)).map(lambda t: t if isinstance(t, list) else [])
    links_path = Path(folder) / "links.csv"
    if links_path.is_file():
        link_columns = [
            Column("item_id", "int", source="movieId", lo=1),
            Column("imdb_id", source="imdbId", required=False),  # text: 7 digits with leading zeros
            Column("tmdb_id", "int", source="tmdbId", required=False, lo=0),
        ]
        links = log.add(read_delimited(links_path, link_columns, **csv))
        item_table = item_table.merge(links.drop_duplicates("item_id"), on="item_id", how="left")
    meta = log.finish("ml-latest-small", {"source": str(Path(folder))})
    return Dataset.build("ml-latest-small", ratings, item_table, None, meta=meta)


def aggregate_tags(tags: pd.DataFrame) -> dict:
    """item_id -> its tags, deduplicated case-insensitively, most frequent first (ties: first seen first).

    Each tag keeps the spelling it was first given ("Highly quotable" over a later "highly quotable").
    """
    tags = tags.assign(key=tags["tag"].str.strip().str.lower(), order=np.arange(len(tags)))
    tags = tags[tags["key"] != ""]
    grouped = tags.groupby(["item_id", "key"], sort=False).agg(
        tag=("tag", "first"), count=("tag", "size"), first=("order", "min")
    )
    grouped = grouped.reset_index().sort_values(["item_id", "count", "first"], ascending=[True, False, True])
    grouped["tag"] = grouped["tag"].str.strip()
    return grouped.groupby("item_id", sort=False)["tag"].agg(list).to_dict()
