"""Server-side SVG charts: the event histogram and the topology graph (no chart library, no
CDN; the markup goes into the page as is and styles from ``static/web/app.css``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from tracing import EventHistogram, TopicMap


def _nice_max(value: int) -> int:
    """The chart's top: four gridline steps of 1, 2 or 5 times a power of ten."""
    quarter = max(value, 1) / 4
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= quarter:
                return 4 * step * magnitude
        magnitude *= 10


def histogram_svg(h: EventHistogram, width: int = 1100, height: int = 180) -> str:
    left, bottom, top = 48, 22, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    n = len(h.counts)
    peak = _nice_max(max(h.counts, default=0))
    bar_w = plot_w / max(n, 1)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="none" role="img" aria-label="events per interval">'
    ]
    for i in range(5):
        value = peak * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value}</text>'
        )
    for i, count in enumerate(h.counts):
        if not count:
            continue
        x = left + i * bar_w
        bar_h = plot_h * count / peak
        start = h.since_ns + i * h.step_ns
        label = f"{_stamp(start)} · {count} events"
        if h.replayed[i]:
            label += f" ({h.replayed[i]} replayed)"
        parts.append(
            f'<rect class="bar" data-since="{start}" data-until="{start + h.step_ns}" '
            f'x="{x + 0.5:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
            f'height="{bar_h:.1f}"><title>{escape(label)}</title></rect>'
        )
    for i in range(0, n, max(1, n // 6)):
        x = left + i * bar_w
        stamp = _stamp(h.since_ns + i * h.step_ns)
        parts.append(f'<text class="axis" x="{x:.1f}" y="{height - 6}">{stamp}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%m-%d %H:%M:%S")


@dataclass
class _Node:
    key: str
    label: str
    sub: str
    column: int
    css: str
    sub2: str = ""
    y: float = 0.0


def topology_svg(m: TopicMap, max_per_column: int = 40) -> str:
    """Three columns -- producers, topics, consumer groups -- and edges weighted by rate; an
    edge with failed attempts is drawn red with its error rate."""
    producers = sorted({p.producer for p in m.producers})[:max_per_column]
    topics = [t for t in m.topics][:max_per_column]
    groups = sorted({g.group for g in m.groups})[:max_per_column]
    nodes: dict[str, _Node] = {}
    for p in producers:
        rate = sum(e.rate_per_s for e in m.producers if e.producer == p)
        nodes["p:" + p] = _Node("p:" + p, p or "(unknown)", f"{rate:.2f}/s", 0, "producer")
    for t in topics:
        css = "topic dlq" if t.topic.startswith("_dlq.") else "topic"
        nodes["t:" + t.topic] = _Node(
            "t:" + t.topic, t.topic, f"{t.events} ev · {t.rate_per_s:.2f}/s", 1, css
        )
    for g in groups:
        edges = [e for e in m.groups if e.group == g]
        attempts = sum(e.attempts for e in edges)
        failed = sum(e.failed for e in edges)
        dead = sum(e.dead_letters for e in edges)
        acked = sum(e.acked for e in edges)
        sub = f"{acked} acked · {sum(e.rate_per_s for e in edges):.2f}/s"
        problems = []
        if failed:
            problems.append(f"{100 * failed / max(attempts, 1):.1f}% failed")
        if dead:
            problems.append(f"{dead} DLQ")
        unacked = sum(max(0, (t.events if (t := m.topic(e.topic)) else 0) - e.acked) for e in edges)
        if unacked:
            problems.append(f"{unacked} unacked")
        nodes["g:" + g] = _Node(
            "g:" + g, g, sub, 2, "group error" if failed else "group", " · ".join(problems)
        )
    row_h, node_h, node_w = 62, 50, 250
    columns = [[n for n in nodes.values() if n.column == c] for c in range(3)]
    rows = max((len(c) for c in columns), default=1)
    height = max(rows, 1) * row_h + 40
    width = 1100
    xs = (20, (width - node_w) // 2, width - node_w - 20)
    for column in columns:
        offset = (rows - len(column)) * row_h / 2
        for i, node in enumerate(column):
            node.y = 30 + offset + i * row_h
    parts = [
        f'<svg class="topology" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="producers, topics and consumer groups">',
        '<text class="colhead" x="20" y="18">PRODUCERS</text>',
        f'<text class="colhead" x="{xs[1]}" y="18">TOPICS</text>',
        f'<text class="colhead" x="{xs[2]}" y="18">CONSUMER GROUPS</text>',
    ]
    peak = max([e.rate_per_s for e in m.producers] + [e.rate_per_s for e in m.groups] + [1e-9])

    def edge(a: _Node, b: _Node, rate: float, css: str, title: str) -> None:
        x1, y1 = xs[a.column] + node_w, a.y + node_h / 2
        x2, y2 = xs[b.column], b.y + node_h / 2
        mid = (x1 + x2) / 2
        stroke = 1.5 + 6 * rate / peak
        parts.append(
            f'<path class="edge {css}" d="M{x1},{y1:.1f} C{mid},{y1:.1f} {mid},{y2:.1f} '
            f'{x2},{y2:.1f}" stroke-width="{stroke:.1f}"><title>{escape(title)}</title></path>'
        )

    for e in m.producers:
        a, b = nodes.get("p:" + e.producer), nodes.get("t:" + e.topic)
        if a and b:
            edge(
                a,
                b,
                e.rate_per_s,
                "",
                f"{e.producer} → {e.topic}: {e.events} events, {e.rate_per_s:.2f}/s",
            )
    for g in m.groups:
        a, b = nodes.get("t:" + g.topic), nodes.get("g:" + g.group)
        if a and b:
            err = 100 * g.failed / max(g.attempts, 1)
            edge(
                a, b, g.rate_per_s, "error" if g.failed else "",
                f"{g.topic} → {g.group}: {g.attempts} attempts, {g.acked} acked, "
                f"{g.failed} failed ({err:.1f}%), {g.dead_letters} dead-lettered",
            )  # fmt: skip
    for node in nodes.values():
        x = xs[node.column]
        parts.append(
            f'<g class="node {node.css}"><rect x="{x}" y="{node.y:.1f}" width="{node_w}" '
            f'height="{node_h}" rx="6"/><text class="label" x="{x + 10}" y="{node.y + 17:.1f}">'
            f"{escape(_clip(node.label))}</text>"
            f'<text class="sub" x="{x + 10}" y="{node.y + 32:.1f}">{escape(node.sub)}</text>'
            f'<text class="sub bad" x="{x + 10}" y="{node.y + 45:.1f}">{escape(node.sub2)}</text>'
            f"<title>{escape(node.label)}</title></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


__all__ = ["histogram_svg", "topology_svg"]
