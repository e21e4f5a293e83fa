"""The loss curve as a PNG, drawn without a plotting library.

Training loss (blue line) and validation loss (red squares) against the step, on
a light grid of 10 divisions; the axis ranges are written as text in the PNG's
tEXt chunk and in the corner labels below the grid, drawn with a 3x5 digit font.
Pure Python (zlib + struct): the trainer needs no matplotlib on a cluster node.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


W, H = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 20, 40
_FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111101110011", "k": "100101110101101", " ": "000000000000000",
}


class Canvas:
    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(rgb)

    def line(self, x0: int, y0: int, x1: int, y1: int, rgb, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:  # Bresenham
            for ox in range(width):
                for oy in range(width):
                    self.dot(x0 + ox, y0 + oy, rgb)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, rgb=(60, 60, 60), scale: int = 2) -> None:
        for ch in s:
            glyph = _FONT.get(ch, _FONT[" "])
            for r in range(5):
                for c in range(3):
                    if glyph[r * 3 + c] == "1":
                        for a in range(scale):
                            for b in range(scale):
                                self.dot(x + c * scale + a, y + r * scale + b, rgb)
            x += 4 * scale

    def png(self, info: dict[str, str]) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        text = b"".join(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in info.items())
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
                + text + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def _num(v: float) -> str:
    return f"{v:.3g}".replace("e+0", "e").replace("e-0", "e-")


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], out: Path) -> Path:
    """Draw the curves into `out` (atomically replaced)."""
    c = Canvas(W, H)
    pts = train + val
    steps = [p[0] for p in pts] or [0, 1]
    losses = [p[1] for p in pts] or [0, 1]
    x0, x1 = 0, max(max(steps), 1)
    y0, y1 = min(losses), max(losses)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def xy(step: float, loss: float) -> tuple[int, int]:
        return (LEFT + round((step - x0) / (x1 - x0) * pw), TOP + round((y1 - loss) / (y1 - y0) * ph))

    for i in range(11):
        gx, gy = LEFT + round(i * pw / 10), TOP + round(i * ph / 10)
        c.line(gx, TOP, gx, TOP + ph, (230, 230, 230))
        c.line(LEFT, gy, LEFT + pw, gy, (230, 230, 230))
    c.line(LEFT, TOP, LEFT, TOP + ph, (0, 0, 0))
    c.line(LEFT, TOP + ph, LEFT + pw, TOP + ph, (0, 0, 0))
    prev = None
    for s, v in train:
        p = xy(s, v)
        if prev is not None:
            c.line(*prev, *p, (31, 119, 180), width=2)
        prev = p
    for s, v in val:
        px, py = xy(s, v)
        for a in range(-3, 4):
            for b in range(-3, 4):
                c.dot(px + a, py + b, (214, 39, 40))
    c.text(4, TOP, _num(y1))
    c.text(4, TOP + ph - 10, _num(y0))
    c.text(LEFT, TOP + ph + 12, "0")
    label = str(x1)
    c.text(LEFT + pw - len(label) * 8, TOP + ph + 12, label)
    data = c.png({"Title": "llmctl loss curve", "Comment":
                  f"x: step 0..{x1}; y: loss {_num(y0)}..{_num(y1)}; blue: training, red: validation"})
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def plot_run(metrics: Path, out: Path) -> Path:
    """The loss curve of a metrics JSONL file."""
    from llmctl.train.metrics import read_records

    recs = read_records(metrics)
    train = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in recs if r.get("kind") == "eval"]
    return plot_losses(train, val, out)
