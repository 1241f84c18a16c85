"""Draw a topology the way KB Q132060 draws it: as text and as SVG.

Downstream postoffices sit left of the External bus, gateway postoffices
right of it, then each gateway (its role as arrows: send "-->", receive
"<--", both "<->") and its smart host. Both renderers share one layout on
a character grid, so they show the same elements. A legend spells out the
actual links and what each gateway serves. Pure: returns strings, no I/O.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from gatepost.topology.model import Gateway, Postoffice, Topology

WIDTH = 100
BOX_W = 20  # a box is 4 rows high: border, title, detail, border
DS_X, BUS_X, GWPO_X, HOST_X = 0, 25, 31, 79
TOP = 4  # first row of boxes
ARROWS = {"both": "<->", "send": "-->", "receive": "<--"}
CELL_W, CELL_H, PAD = 8, 18, 12  # SVG pixels per grid cell, margin


@dataclass(frozen=True, slots=True)
class Box:
    col: int
    row: int
    title: str
    detail: str
    kind: str  # downstream | gateway-po | smarthost | listen
    height: int = 4


@dataclass(frozen=True, slots=True)
class Link:
    col1: int
    col2: int
    row: int
    direction: str  # both | send | receive  (send points right)
    label: str = ""


@dataclass(frozen=True, slots=True)
class Label:
    col: int
    row: int
    text: str


@dataclass(frozen=True, slots=True)
class Layout:
    boxes: tuple[Box, ...]
    links: tuple[Link, ...]
    labels: tuple[Label, ...]
    bus: tuple[int, int] | None  # first and last row of the External bus
    rows: int
    legend: tuple[str, ...]


def text(topo: Topology) -> str:
    """The topology as a text drawing plus legend; lines at most 100 columns."""
    plan = layout(topo)
    grid = [[" "] * WIDTH for _ in range(plan.rows)]
    if plan.bus is not None:
        for row in range(plan.bus[0], plan.bus[1] + 1):
            grid[row][BUS_X] = "|"
    for box in plan.boxes:
        _draw_box(grid, box)
    for link in plan.links:
        _put(grid, link.col1, link.row, _link_text(link))
    for label in plan.labels:
        _put(grid, label.col, label.row, label.text)
    drawing = ["".join(row).rstrip() for row in grid]
    return "\n".join(drawing + ["", *plan.legend]) + "\n"


def layout(topo: Topology) -> Layout:
    """Positions of every box, link and label on a 100-column grid."""
    gateway_pos = _gateway_postoffices(topo)
    downstream = [po for name, po in topo.postoffices.items() if name not in gateway_pos]
    boxes: list[Box] = []
    links: list[Link] = []
    labels = _headers(topo)
    bus_rows: list[int] = []
    for index, po in enumerate(downstream):
        row = TOP + 5 * index
        boxes.append(Box(DS_X, row, _fit(po.name), _mailboxes(po), "downstream"))
        if po.links:
            links.append(Link(DS_X + BOX_W, BUS_X, row + 1, "both"))
            bus_rows.append(row + 1)
    row = TOP
    for name, gateways in gateway_pos.items():
        _gateway_block(topo.postoffices[name], gateways, row, boxes, links, labels)
        if topo.postoffices[name].links:
            links.append(Link(BUS_X + 1, GWPO_X, row + 1, _bus_direction(gateways)))
            bus_rows.append(row + 1)
        row += 4 * len(gateways) + 1
    rows = max(row, TOP + 5 * len(downstream))
    bus = (min(bus_rows), max(bus_rows)) if bus_rows else None
    return Layout(tuple(boxes), tuple(links), tuple(labels), bus, rows, _legend(topo))


def _gateway_postoffices(topo: Topology) -> dict[str, list[Gateway]]:
    found: dict[str, list[Gateway]] = {}
    for gateway in topo.gateways.values():
        found.setdefault(gateway.postoffice, []).append(gateway)
    return found


def _headers(topo: Topology) -> list[Label]:
    count = (
        f"{_plural(len(topo.postoffices), 'postoffice')}, {_plural(len(topo.gateways), 'gateway')}"
    )
    return [
        Label(0, 0, _fit(f"{topo.name} network: {count}", WIDTH)),
        Label(DS_X, 2, "downstream PO"),
        Label(BUS_X - 4, 2, "External"),
        Label(GWPO_X, 2, "gateway PO"),
        Label(GWPO_X + BOX_W + 2, 2, "gateway"),
        Label(HOST_X, 2, "smart host / clients"),
    ]


def _gateway_block(
    po: Postoffice,
    gateways: list[Gateway],
    row: int,
    boxes: list[Box],
    links: list[Link],
    labels: list[Label],
) -> None:
    height = 4 * len(gateways)
    boxes.append(Box(GWPO_X, row, _fit(po.name), _mailboxes(po), "gateway-po", height))
    for index, gateway in enumerate(gateways):
        top = row + 4 * index
        links.append(Link(GWPO_X + BOX_W, HOST_X, top + 1, gateway.role, _fit(gateway.name)))
        labels.append(Label(GWPO_X + BOX_W + 2, top + 2, f"SMTP {gateway.role}"))
        if gateway.receives:
            listen = _fit(f"listen {gateway.listen}", HOST_X - GWPO_X - BOX_W - 3)
            labels.append(Label(GWPO_X + BOX_W + 2, top + 3, listen))
        boxes.append(_far_box(gateway, top))


def _far_box(gateway: Gateway, row: int) -> Box:
    if gateway.sends:
        return Box(HOST_X, row, "smart host", _fit(str(gateway.smarthost)), "smarthost")
    return Box(HOST_X, row, "SMTP clients", "(the Internet)", "listen")


def _bus_direction(gateways: list[Gateway]) -> str:
    roles = {g.role for g in gateways}
    return roles.pop() if len(roles) == 1 else "both"


def _mailboxes(po: Postoffice) -> str:
    return _plural(len(po.mailboxes), "mailbox", "mailboxes")


def _plural(count: int, one: str, many: str = "") -> str:
    return f"{count} {one}" if count == 1 else f"{count} {many or one + 's'}"


def _fit(value: str, width: int = BOX_W - 4) -> str:
    return value if len(value) <= width else value[: width - 1] + "~"


def _legend(topo: Topology) -> tuple[str, ...]:
    lines = _wrap("External links: " + (", ".join(_link_pairs(topo)) or "none"))
    lines.append("Postoffices:")
    for po in topo.postoffices.values():
        domains = ", ".join(po.domains) or "(no domain)"
        lines += _wrap(f"  {po.name}: {domains}; mailboxes {', '.join(po.mailboxes)}")
    if topo.domains:
        lines += _wrap(f"Network domains (any postoffice): {', '.join(topo.domains)}")
    lines.append("Gateways:")
    for gateway in topo.gateways.values():
        lines += _wrap(_gateway_line(gateway))
    if topo.capture is not None:
        where = _relative(topo.capture.dir, topo.source.parent)
        lines += _wrap(f"Capture sink: {topo.capture.listen} -> {where}")
    return tuple(lines)


def _link_pairs(topo: Topology) -> list[str]:
    order = list(topo.postoffices)
    return [
        f"{name}<->{other}"
        for name, po in topo.postoffices.items()
        for other in po.links
        if order.index(other) > order.index(name)
    ]


def _gateway_line(gateway: Gateway) -> str:
    parts = [f"  {gateway.name} ({gateway.role}) on {gateway.postoffice}"]
    if gateway.receives:
        parts.append(f"listen {gateway.listen}")
    if gateway.sends:
        parts.append(f"smart host {gateway.smarthost}")
        parts.append(f"serves {', '.join(gateway.serves)}")
    if gateway.relay_from:
        parts.append(f"relay from {', '.join(str(n) for n in gateway.relay_from)}")
    return "; ".join(parts)


def _wrap(line: str) -> list[str]:
    return textwrap.wrap(line, WIDTH, subsequent_indent="      ") or [""]


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# ---- text rendering -------------------------------------------------------------


def _put(grid: list[list[str]], col: int, row: int, value: str) -> None:
    for offset, char in enumerate(value[: WIDTH - col]):
        grid[row][col + offset] = char


def _draw_box(grid: list[list[str]], box: Box) -> None:
    border = "+" + "-" * (BOX_W - 2) + "+"
    _put(grid, box.col, box.row, border)
    for inner in range(1, box.height - 1):
        _put(grid, box.col, box.row + inner, "|" + " " * (BOX_W - 2) + "|")
    _put(grid, box.col + 2, box.row + 1, box.title)
    _put(grid, box.col + 2, box.row + 2, box.detail)
    _put(grid, box.col, box.row + box.height - 1, border)


def _link_text(link: Link) -> str:
    arrow = ARROWS[link.direction]
    core = f"{arrow} {link.label} {arrow}" if link.label else arrow
    width = link.col2 - link.col1
    left = (width - len(core)) // 2
    return ("-" * left + core).ljust(width, "-")


# ---- SVG rendering ---------------------------------------------------------------


def svg(topo: Topology) -> str:
    """The same drawing as a standalone SVG document (boxes, lines, labels, legend)."""
    plan = layout(topo)
    height = (plan.rows + len(plan.legend) + 1) * CELL_H + 2 * PAD
    width = WIDTH * CELL_W + 2 * PAD
    parts = [_svg_head(width, height)]
    if plan.bus is not None:
        x = _x_end(BUS_X)
        parts.append(_line(x, _y_mid(plan.bus[0]), x, _y_mid(plan.bus[1]), "bus"))
    parts += [_svg_box(box) for box in plan.boxes]
    parts += [_svg_link(link) for link in plan.links]
    parts += [_svg_text(_x(lb.col), _y_text(lb.row), lb.text, "label") for lb in plan.labels]
    first = plan.rows + 1
    parts += [
        _svg_text(_x(0), _y_text(first + i), line, "legend") for i, line in enumerate(plan.legend)
    ]
    return "\n".join([*parts, "</svg>"]) + "\n"


def _svg_head(width: int, height: int) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="13">\n'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
        '<path d="M0,0 L10,5 L0,10 z"/></marker></defs>\n'
        f'<rect width="{width}" height="{height}" fill="white"/>'
    )


def _x(col: int) -> int:
    return PAD + col * CELL_W


def _x_end(col: int) -> int:
    """A link end in pixels; ends at the bus meet the bus line itself."""
    return _x(BUS_X) + CELL_W // 2 if col in (BUS_X, BUS_X + 1) else _x(col)


def _y_text(row: int) -> int:
    return PAD + row * CELL_H + 13


def _y_mid(row: int) -> int:
    return PAD + row * CELL_H + CELL_H // 2


def _svg_box(box: Box) -> str:
    fill = {"downstream": "#eef4ff", "gateway-po": "#fff4e0"}.get(box.kind, "#eeeeee")
    x, y = _x(box.col), PAD + box.row * CELL_H + CELL_H // 2
    w, h = BOX_W * CELL_W, (box.height - 1) * CELL_H
    return (
        f'<g class="{box.kind}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="4" '
        f'fill="{fill}" stroke="black"/>'
        + _svg_text(x + 2 * CELL_W, _y_text(box.row + 1), box.title, "title")
        + _svg_text(x + 2 * CELL_W, _y_text(box.row + 2), box.detail, "detail")
        + "</g>"
    )


def _svg_link(link: Link) -> str:
    y = _y_mid(link.row)
    x1, x2 = _x_end(link.col1), _x_end(link.col2)
    line = _line(x1, y, x2, y, f"link {link.direction}")
    if not link.label:
        return line
    middle = (x1 + x2) // 2
    caption = _svg_text(middle, y - 4, link.label, "gateway", anchor="middle")
    return line + caption


def _line(x1: int, y1: int, x2: int, y2: int, kind: str) -> str:
    markers = ""
    if kind.endswith(("both", "send")):
        markers += ' marker-end="url(#arrow)"'
    if kind.endswith(("both", "receive")):
        markers += ' marker-start="url(#arrow)"'
    return f'<line class="{kind}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="black"{markers}/>'


def _svg_text(x: int, y: int, value: str, kind: str, anchor: str = "start") -> str:
    space = ' xml:space="preserve"' if value.startswith(" ") else ""
    return (
        f'<text class="{kind}" x="{x}" y="{y}" text-anchor="{anchor}"{space}>{escape(value)}</text>'
    )
