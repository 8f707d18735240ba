"""Bytes and text as one printable line: what a producer sent, shown to a person."""

from __future__ import annotations


def escaped(data: bytes | str | None, limit: int | None = None) -> str:
    """Printable text: UTF-8 as it reads (a byte that is not UTF-8 as \\xNN, NN 80 or
    above), every character that is not printable (controls, escape sequences,
    bidirectional overrides, line breaks) and the backslash itself escaped, so the output
    is one line that says exactly what the bytes were. Over `limit` characters, cut,
    saying how long it was."""
    if data is None:
        return "(none)"
    # invalid bytes decode to lone surrogates U+DC80..U+DCFF, printed as \xNN
    text = _escape_chars(
        data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    )
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters in all)"
    return text


def _escape_chars(text: str) -> str:
    out: list[str] = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable():
            out.append(char)
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a byte that is not UTF-8
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif ord(char) < 0x80:  # an ASCII control (a byte not UTF-8 is 0x80 or above)
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)
