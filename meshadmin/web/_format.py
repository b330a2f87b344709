"""Small display helpers shared by the views (times, durations, payloads)."""

from __future__ import annotations

import json
from datetime import UTC, datetime


def when(ns: int) -> str:
    if not ns:
        return ""
    stamp = datetime.fromtimestamp(ns / 1e9, UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{ns // 1000 % 1_000_000:06d}"[:3]


def duration(ns: int) -> str:
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms" if ns < 10_000_000 else f"{ns / 1e6:.0f}ms"
    return f"{ns / 1e9:.2f}s"


MAX_PAYLOAD = 64 * 1024


def payload(data: bytes, content_type: str) -> tuple[str, str]:
    """``(kind, text)``: pretty JSON, text, or a hex dump of binary data (first 64 KiB)."""
    clipped = data[:MAX_PAYLOAD]
    more = f"\n… {len(data) - MAX_PAYLOAD} more bytes" if len(data) > MAX_PAYLOAD else ""
    try:
        text = clipped.decode()
    except UnicodeDecodeError:
        lines = []
        for offset in range(0, min(len(clipped), 4096), 16):
            chunk = clipped[offset : offset + 16]
            printable = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {printable}")
        return "binary", "\n".join(lines) + more
    if "json" in content_type or text[:1] in "{[":
        try:
            return "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False) + more
        except ValueError:
            pass
    return "text", text + more
