"""Recommendations on a second public data set of another shape: MovieLens 100K, as shipped.

MovieLens 100K (GroupLens: 100,000 ratings, 1-5 stars, of 1,682 films by 943 users,
1997-09 .. 1998-04, with titles, years and genres) is not bundled with Shoal and is never
downloaded from its home: the PyPI package ``recbole`` ships it inside the package
(``recbole/dataset_example/ml-100k/ml-100k.inter`` and ``.item``). At run time this script
installs that wheel from the registry without its dependencies (``pip install --no-deps
--target``, into ``--cache``; offline afterwards) and only reads the two files; nothing of
``recbole`` is imported, and no data is committed here.

A different shape from Online Retail: films instead of products, ratings instead of orders, no
prices, every film rated at most once per user (so nothing is bought twice: the ``repeat``
protocol barely differs from ``new-items``), and users who mostly rate in one burst. Mapping
onto Shoal's events: a rating of 4 or 5 is a ``purchase`` (what the tests count as relevant),
a rating of 1-3 a ``rating`` event (a weaker signal for the models, never relevant); the order
is the user's day (so a cold user has rated well on at most two days before the split); the
item name is the title and year, the category the first genre (the content model reads both).

The events go into a temporary SQLite store through ``shoal ingest``'s path, then
``automation.recommend.evaluate.evaluate`` runs exactly as ``shoal evaluate`` does: segments as
of each split (fitted in memory), every model tuned on a validation window before the split,
both protocols, all and cold users; the hybrid's verdict and ablation as in
``bench/recommend.py``.

Run (from the repository root)::

    OMP_NUM_THREADS=1 .venv/bin/python bench/recommend_public.py [--splits 1998-01-01,1998-03-01]
        [--k 10] [--cache DIR] [--markdown] [--json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import pandas as pd
from recommend import MODELS, print_split, split_payload, split_section

from automation import api
from automation.recommend.evaluate import EvaluationReport, evaluate

PACKAGE = "recbole==1.2.1"
DATA = Path("recbole/dataset_example/ml-100k")
DEFAULT_CACHE = Path.home() / ".cache" / "shoal-bench" / "recbole-1.2.1"


def dataset_dir(cache: Path) -> Path:
    """Where the package's MovieLens files are: an installed ``recbole`` (not imported: it needs
    torch), else ``cache``, installed there from the registry first when missing."""
    import importlib.util

    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            here = Path(loc).parent / DATA
            if (here / "ml-100k.inter").exists():
                return here
    here = cache / DATA
    if not (here / "ml-100k.inter").exists():
        common.log(f"installing {PACKAGE} (no dependencies) into {cache}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                str(cache),
                PACKAGE,
            ],
            check=True,
        )
    return here


def movielens_events(folder: Path) -> pd.DataFrame:
    """The ratings as canonical Shoal events (see the module docstring for the mapping)."""
    r = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    r.columns = ["user", "item", "rating", "ts"]
    it = pd.read_csv(folder / "ml-100k.item", sep="\t", keep_default_na=False)
    it.columns = ["item", "title", "year", "genres"]
    meta = it.set_index("item")
    when = pd.to_datetime(r["ts"], unit="s", utc=True)
    user = "u" + r["user"].astype(str)
    title = meta["title"].astype(str) + " (" + meta["year"].astype(str) + ")"
    genre = meta["genres"].astype(str).str.split().str[0].fillna("")
    return pd.DataFrame(
        {
            "event_id": "ml-" + r.index.astype(str),
            "user_id": user,
            "type": r["rating"].map(lambda v: "purchase" if v >= 4 else "rating"),
            "timestamp": when.dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "item_id": "m" + r["item"].astype(str),
            "item_name": r["item"].map(title),
            "category": r["item"].map(genre),
            "quantity": 1,
            "rating": r["rating"].astype(float),
            "order_id": user + "-" + when.dt.strftime("%Y%m%d"),
        }
    )


def markdown(reports: list[EvaluationReport], events: pd.DataFrame, seconds: float) -> str:
    buys = int((events["type"] == "purchase").sum())
    lines = [
        "### Second data set: MovieLens 100K (as shipped in the `recbole` wheel)",
        "",
        f"`bench/recommend_public.py`: {len(events):,} ratings ({buys:,} of 4-5 stars, the "
        f"'purchases') by {events['user_id'].nunique():,} users of "
        f"{events['item_id'].nunique():,} films; the same evaluation as `shoal evaluate` "
        f"(segments as of each split, every model tuned on a validation window before it); "
        f"K = {reports[0].k}. Measured on this 2-core machine in {seconds:.0f} s "
        f"(load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}).",
    ]
    for rep in reports:
        lines += [line.replace("### Split", "#### Split") for line in split_section(rep)]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--splits", default="1998-01-01,1998-03-01")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the wheel goes")
    p.add_argument("--markdown", action="store_true", help="print the README section")
    args = p.parse_args()
    common.pin_threads()
    events = movielens_events(dataset_dir(args.cache))
    t0 = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory(prefix="shoal-ml100k-") as tmp, common.sqlite_file() as url:
        path = Path(tmp) / "ml-100k-events.csv"
        events.to_csv(path, index=False)
        engine = api.connect(url)
        report = api.ingest(engine, [path])
        common.log(f"ingested {report.accepted:,} of {report.read:,} events")
        for split in args.splits.split(","):
            common.log(f"evaluating split {split}")
            reports.append(
                evaluate(engine, split, args.k, MODELS, progress=lambda m: common.log(f"  {m}"))
            )
        engine.dispose()
    seconds = time.perf_counter() - t0
    if args.json:
        common.dump_json(
            {
                "dataset": "MovieLens 100K (recbole 1.2.1 wheel)",
                "splits": [split_payload(r) for r in reports],
                "seconds": seconds,
            }
        )
    elif args.markdown:
        sys.stdout.write(markdown(reports, events, seconds))
    else:
        for rep in reports:
            print_split(rep)
        print(f"\n{seconds:.0f} s for {len(reports)} splits (ingest included)")


if __name__ == "__main__":
    main()
