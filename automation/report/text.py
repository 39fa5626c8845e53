"""The segment table printed by ``shoal segment``, ``shoal segments`` and ``shoal demo``."""

from __future__ import annotations

from typing import Any

SHOWN = ("recency_days", "frequency", "monetary", "avg_order_value", "tenure_days")


def _fmt(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def segment_table(data: dict[str, Any]) -> str:
    """A plain-text table of one segmentation (the dict of ``to_dict`` / ``api.segments``)."""
    q = data["quality"]
    lines = [
        f"segmentation v{data['version']}  method={data['method']}  k={data['k']}  "
        f"as of {data['as_of']}  users={data.get('n_users', '?'):,}",
        f"quality: silhouette {_fmt(q.get('silhouette'))}  Davies-Bouldin "
        f"{_fmt(q.get('davies_bouldin'))}  Calinski-Harabasz {_fmt(q.get('calinski_harabasz'), 0)}"
        f"  stability ARI {_fmt(q.get('stability_ari'))}",
        "",
    ]
    head = f"{'id':<8} {'name':<32} {'users':>7} {'share':>6} " + " ".join(
        f"{c.split('_')[0][:9]:>9}" for c in SHOWN
    )
    lines += [head, "-" * len(head)]
    for s in data["segments"]:
        prof = s.get("profile") or {}
        vals = " ".join(
            f"{prof.get(c, float('nan')):>9,.1f}" if prof.get(c) is not None else f"{'-':>9}"
            for c in SHOWN
        )
        lines.append(
            f"{s['id']:<8} {s['name'][:32]:<32} {s['size']:>7,} {s['share'] * 100:>5.1f}% {vals}"
        )
    lines.append("(profile columns are segment medians: days, orders, net spend, spend per order)")
    return "\n".join(lines)


def campaign_text(data: dict[str, Any]) -> str:
    """The demo's campaigns: decisions and deliveries per campaign, and one rendered e-mail."""
    lines = [f"Campaigns (examples/campaigns/, decided at {data['at'][:16]}):"]
    lines.append(
        f"  {'campaign':<22} {'trigger':<9} {'channel':<8} {'fired':>6} {'treated':>8} "
        f"{'held out':>9} {'suppressed':>11} {'queued':>7}"
    )
    for c in data["campaigns"]:
        lines.append(
            f"  {c['campaign']:<22} {c['trigger']:<9} {c['channel']:<8} {c['occurrences']:>6} "
            f"{c['treatment']:>8} {c['holdout']:>9} {c['suppressed']:>11} {c['queued']:>7}"
        )
    d = data["dispatch"]
    lines.append(
        f"  dispatched: {d['sent']} sent, {d['retried']} retrying, {d['dead']} dead; CRM webhook "
        f"received {data['crm']['posts']} posts, {data['crm']['verified']} with a valid signature"
    )
    if data.get("routed_user"):
        lines.append(f"  routing: try `shoal user {data['routed_user']}` for a routed caller")
    mail = data.get("email")
    if mail:
        lines.append(f"\nOne rendered e-mail ({mail['file']}; HTML: {mail['html_file']}):")
        lines.append(f"  To: {mail['to']}\n  Subject: {mail['subject']}\n")
        lines += ["  " + line for line in mail["text"].strip().splitlines()]
    return "\n".join(lines)
