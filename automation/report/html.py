"""A self-contained HTML report of one segmentation: tables and charts (PNG, inline)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from automation.report.replay import Replay, flow_table, sizes_table  # noqa: E402
from automation.segments.result import SegmentationResult  # noqa: E402

HEAT_FEATURES = (
    "recency_days",
    "frequency",
    "monetary",
    "avg_order_value",
    "tenure_days",
    "interpurchase_days",
    "distinct_items",
    "refund_rate",
    "activity_trend",
    "n_views",
    "view_to_cart",
)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _sizes_chart(data: dict[str, Any]) -> str:
    segs = data["segments"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(segs) + 1))
    labels = [f"{s['id']} {s['name']}" for s in segs]
    ax.barh(labels[::-1], [s["size"] for s in segs][::-1], color=_colors(len(segs))[::-1])
    for i, s in enumerate(segs[::-1]):
        ax.text(s["size"], i, f" {s['size']:,} ({s['share'] * 100:.1f}%)", va="center", fontsize=8)
    ax.set_xlabel("users")
    ax.set_title("Segment sizes")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _k_chart(selection: dict[str, Any]) -> str | None:
    table = pd.DataFrame(selection.get("table") or [])
    if table.empty or "k" not in table:
        return None
    metrics = [
        ("silhouette", "silhouette (higher better)"),
        ("davies_bouldin", "Davies-Bouldin (lower better)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher better)"),
        ("stability_ari", "stability ARI (higher better)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 2.6))
    for ax, (col, title) in zip(axes, metrics, strict=True):
        if col in table:
            ax.plot(table["k"], table[col], marker="o", color="#335")
            ax.axvline(selection["best_k"], color="#c33", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("K", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"Choosing K: K={selection['best_k']} (dashed)", fontsize=10)
    return _png(fig)


def _heatmap(members: pd.DataFrame, data: dict[str, Any]) -> str:
    cols = [c for c in HEAT_FEATURES if c in members.columns]
    segs = data["segments"]
    grid = np.full((len(segs), len(cols)), np.nan)
    for i, s in enumerate(segs):
        sub = members[members["segment_id"] == s["id"]]
        for j, c in enumerate(cols):
            pop = members[c].to_numpy()
            grid[i, j] = 100.0 * float((pop < sub[c].median()).mean()) if len(sub) else np.nan
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 3, 0.5 * len(segs) + 1.5))
    im = ax.imshow(grid, cmap="RdYlBu_r", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(segs)), [f"{s['id']} {s['name']}" for s in segs], fontsize=8)
    for i in range(len(segs)):
        for j in range(len(cols)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="percentile of segment median in population")
    ax.set_title("Segment profiles (percentile of each segment's median among all users)")
    return _png(fig)


def _scatter(members: pd.DataFrame, data: dict[str, Any], seed: int = 0) -> str | None:
    if not {"recency_days", "monetary"} <= set(members.columns):
        return None
    sample = members.sample(n=min(len(members), 6000), random_state=seed)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for color, s in zip(_colors(len(data["segments"])), data["segments"], strict=True):
        sub = sample[sample["segment_id"] == s["id"]]
        ax.scatter(
            sub["recency_days"],
            sub["monetary"],
            s=6,
            alpha=0.5,
            color=color,
            label=f"{s['id']} {s['name']}",
        )
    ax.set_yscale("symlog", linthresh=100)
    ax.set_xlabel("days since last purchase")
    ax.set_ylabel("net spend (symlog)")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title("Recency against spend, coloured by segment")
    return _png(fig)


def _sizes_over_time(sizes: pd.DataFrame, names: dict[str, str]) -> str:
    fig, ax = plt.subplots(figsize=(9, 4))
    cols = list(sizes.columns)
    ax.stackplot(
        range(len(sizes)),
        *[sizes[c].to_numpy() for c in cols],
        labels=[f"{c} {names.get(c, '')}" for c in cols],
        colors=_colors(len(cols)),
        alpha=0.85,
    )
    ax.set_xticks(range(len(sizes)), list(sizes.index), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("users")
    ax.set_title("Segment sizes month by month (replayed as the live system would have)")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def render_report(
    result: SegmentationResult,
    title: str = "Shoal segmentation report",
    replay: Replay | None = None,
    current: dict[str, Any] | None = None,
) -> str:
    data = result.to_dict()
    replay_ctx = None
    if replay is not None:
        names = dict(replay.names)
        sizes = sizes_table(replay)
        flows = flow_table(replay)
        replay_ctx = {
            "chart": _sizes_over_time(sizes, names),
            "months": replay.months,
            "names": names,
            "flows": flows.to_html(classes="flows", border=0) if not flows.empty else "",
            "migrations": len(replay.migrations),
        }
    members = result.members if result.members is not None else pd.DataFrame()
    charts = {
        "sizes": _sizes_chart(data),
        "k": _k_chart(result.k_selection) if result.k_selection else None,
        "heatmap": _heatmap(members, data) if len(members) else None,
        "scatter": _scatter(members, data) if len(members) else None,
    }
    env = Environment(
        loader=PackageLoader("automation.report", "."), autoescape=select_autoescape()
    )
    template = env.get_template("report.html.j2")
    return template.render(
        title=title, data=data, charts=charts, replay=replay_ctx, current=current
    )


def write_report(
    result: SegmentationResult,
    path: str | Path,
    replay: Replay | None = None,
    current: dict[str, Any] | None = None,
) -> Path:
    """Write the HTML report of ``result`` (and of a replay, if given) to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(result, replay=replay, current=current), encoding="utf-8")
    return out
