"""Charts as inline SVG text: the HTML report opens from disk, with no script and no server.

Each function returns one ``<svg>`` element, a pure function of its arguments (so two builds of
the same data give the same bytes).
"""

from __future__ import annotations

from html import escape

PALETTE = ("#3b6ea5", "#e0a030", "#5a9e6f", "#b5525c", "#7d6aa8", "#8c8c8c")
STATUS_COLOURS = {"under_min": "#d9534f", "below_target": "#f0ad4e", "on_target": "#9ccc65", "at_ideal": "#43a047", "": "#cfd8dc"}
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="{escape(title)}" {FONT}><title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _legend(names: list[str], x: int, y: int) -> list[str]:
    out = []
    for k, n in enumerate(names):
        out.append(f'<rect x="{x}" y="{y + 16 * k}" width="10" height="10" fill="{PALETTE[k % len(PALETTE)]}"/>'
                   f'<text x="{x + 14}" y="{y + 9 + 16 * k}">{escape(n)}</text>')
    return out


def _number(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) and not float(v).is_integer() else f"{int(v)}"


def bars(title: str, categories: list[str], series: dict[str, list[float]], *, x_label: str = "", y_label: str = "items") -> str:
    """Vertical bars, one group per category and one bar per series (e.g. a histogram's bins)."""
    names = list(series)
    top = max([max(v, default=0) for v in series.values()] + [1])
    group = max(48, 16 * len(names) + 16)
    plot_w, plot_h, left, base = group * max(len(categories), 1), 160, 48, 190
    width = max(left + plot_w + 130, 320)
    body = [f'<text x="{left}" y="14" font-weight="bold">{escape(title)}</text>',
            f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#555"/>',
            f'<text x="8" y="{base - plot_h // 2}" transform="rotate(-90 8 {base - plot_h // 2})" text-anchor="middle">{escape(y_label)}</text>']
    bar_w = (group - 8) / max(len(names), 1)
    for i, cat in enumerate(categories):
        x0 = left + i * group + 4
        for k, name in enumerate(names):
            v = float(series[name][i])
            h = plot_h * v / top
            x = x0 + k * bar_w
            body.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" fill="{PALETTE[k % len(PALETTE)]}">'
                        f'<title>{escape(cat)}, {escape(name)}: {_number(v)}</title></rect>')
            if v:
                body.append(f'<text x="{x + (bar_w - 1) / 2:.1f}" y="{base - h - 3:.1f}" text-anchor="middle" font-size="9">{_number(v)}</text>')
        cx = x0 + (group - 8) / 2
        body.append(f'<text x="{cx:.1f}" y="{base + 12}" text-anchor="end" transform="rotate(-40 {cx:.1f} {base + 12})">{escape(cat)}</text>')
    if x_label:
        body.append(f'<text x="{left + plot_w / 2:.1f}" y="{base + 78}" text-anchor="middle">{escape(x_label)}</text>')
    if len(names) > 1:
        body += _legend(names, left + plot_w + 16, base - plot_h)
    return _svg(width, base + 86, title, body)


def hbars(title: str, labels: list[str], series: dict[str, list[float]], *, value_format: str = "{:g}") -> str:
    """Horizontal bars, one row per label (top tags, reasons, stage shares against targets)."""
    names = list(series)
    top = max([max(v, default=0) for v in series.values()] + [1e-12])
    row = 6 + 12 * len(names)
    left, plot_w = min(220, 12 + 6 * max((len(l) for l in labels), default=4)), 300
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    for i, label in enumerate(labels):
        y0 = 24 + i * row
        body.append(f'<text x="{left - 6}" y="{y0 + row / 2 + 3:.1f}" text-anchor="end">{escape(label)}</text>')
        for k, name in enumerate(names):
            v = float(series[name][i])
            w = plot_w * v / top
            y = y0 + 3 + 12 * k
            body.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="10" fill="{PALETTE[k % len(PALETTE)]}">'
                        f'<title>{escape(label)}, {escape(name)}: {value_format.format(v)}</title></rect>'
                        f'<text x="{left + w + 4:.1f}" y="{y + 9}">{value_format.format(v)}</text>')
    height = 30 + row * max(len(labels), 1)
    if len(names) > 1:
        body += _legend(names, left + plot_w + 60, 24)
    return _svg(left + plot_w + 160, max(height, 24 + 16 * len(names)), title, body)


def heatmap(title: str, rows: list[str], columns: list[str], cells: dict[tuple[str, str], tuple[str, str]], legend: bool = True) -> str:
    """A grid of cells, each ``(label, status)``: the label is written in it and the status
    (a key of STATUS_COLOURS) colours it; a missing cell is left grey and empty."""
    left = min(200, 12 + 7 * max((len(r) for r in rows), default=4))
    cw, ch, head = max(64, 7 * max((len(c) for c in columns), default=4) + 10), 28, 40
    body = [f'<text x="4" y="14" font-weight="bold">{escape(title)}</text>']
    for j, col in enumerate(columns):
        body.append(f'<text x="{left + j * cw + cw / 2:.1f}" y="{head - 6}" text-anchor="middle">{escape(col)}</text>')
    for i, r in enumerate(rows):
        y = head + i * ch
        body.append(f'<text x="{left - 6}" y="{y + ch / 2 + 4:.1f}" text-anchor="end">{escape(r)}</text>')
        for j, col in enumerate(columns):
            label, status = cells.get((r, col), ("", ""))
            body.append(f'<rect x="{left + j * cw}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="{STATUS_COLOURS.get(status, "#cfd8dc")}">'
                        f'<title>{escape(r)} / {escape(col)}: {escape(label)} {escape(status)}</title></rect>'
                        f'<text x="{left + j * cw + cw / 2 - 1:.1f}" y="{y + ch / 2 + 3:.1f}" text-anchor="middle">{escape(label)}</text>')
    legend_y = head + len(rows) * ch + 14
    x = 4
    for status, colour in STATUS_COLOURS.items() if legend else ():
        if status:
            body.append(f'<rect x="{x}" y="{legend_y}" width="10" height="10" fill="{colour}"/><text x="{x + 14}" y="{legend_y + 9}">{status.replace("_", " ")}</text>')
            x += 24 + 7 * len(status)
    return _svg(max(left + cw * len(columns) + 10, x + 10), legend_y + 20, title, body)
