"""Descriptive metadata inside images: XMP packets in JPEG 2000 and JPEG files.

The ``image-derivative`` step embeds Dublin Core fields (title, identifier,
source, publisher, rights) as an XMP packet, the form exiftool, Adobe's tools
and most digital-asset systems read: in a JPEG as the APP1 XMP segment (written
by Pillow), in a JP2 as a ``uuid`` box with the XMP UUID after the codestream
(Pillow does not write one, so this module appends it). The same packet carries
wsrun's own fields: the fingerprint of the derivation (so a second run can tell
the file is up to date without decoding it) and the pixel checksums of a
lossless proof.
"""

from __future__ import annotations

import struct
from typing import BinaryIO
from xml.etree import ElementTree

#: The UUID that marks a JP2 ``uuid`` box as holding XMP (ISO 15444-1 / XMP spec part 3).
XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
#: The Dublin Core fields the step embeds, in this order.
DC_FIELDS = ("title", "identifier", "source", "publisher", "rights")
#: wsrun's own XMP fields.
WSRUN_FIELDS = ("derivation", "sourcePixels", "derivativePixels", "depth")

_NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "wsrun": "https://wsrun.org/ns/derivative/1.0/",
}
for _prefix, _uri in _NS.items():
    ElementTree.register_namespace(_prefix, _uri)
#: dc fields that XMP holds as language alternatives rather than plain text.
_LANG_ALT = {"title", "rights"}


def build_xmp(dc: dict[str, str], wsrun: dict[str, str]) -> bytes:
    """An XMP packet holding the given Dublin Core and wsrun fields (empty ones left out)."""
    rdf = _NS["rdf"]
    root = ElementTree.Element(f"{{{_NS['x']}}}xmpmeta")
    rdf_el = ElementTree.SubElement(root, f"{{{rdf}}}RDF")
    desc = ElementTree.SubElement(rdf_el, f"{{{rdf}}}Description", {f"{{{rdf}}}about": ""})
    for name in DC_FIELDS:
        value = dc.get(name)
        if not value:
            continue
        el = ElementTree.SubElement(desc, f"{{{_NS['dc']}}}{name}")
        if name in _LANG_ALT:
            alt = ElementTree.SubElement(el, f"{{{rdf}}}Alt")
            li = ElementTree.SubElement(
                alt, f"{{{rdf}}}li", {"{http://www.w3.org/XML/1998/namespace}lang": "x-default"}
            )
            li.text = value
        else:
            el.text = value
    for name in WSRUN_FIELDS:
        if wsrun.get(name):
            ElementTree.SubElement(desc, f"{{{_NS['wsrun']}}}{name}").text = wsrun[name]
    body = ElementTree.tostring(root, encoding="unicode")
    packet = (
        f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n{body}\n<?xpacket end="w"?>'
    )
    return packet.encode("utf-8")


def parse_xmp(packet: bytes) -> dict[str, str]:
    """The Dublin Core and wsrun fields of an XMP packet (names without prefixes)."""
    start, end = packet.find(b"<x:xmpmeta"), packet.rfind(b"</x:xmpmeta>")
    if start < 0 or end < 0:
        return {}
    try:
        root = ElementTree.fromstring(packet[start : end + len(b"</x:xmpmeta>")])
    except ElementTree.ParseError:
        return {}
    out: dict[str, str] = {}
    for ns, names in (("dc", DC_FIELDS), ("wsrun", WSRUN_FIELDS)):
        for name in names:
            el = root.find(f".//{{{_NS[ns]}}}{name}")
            if el is None:
                continue
            text = "".join(el.itertext()).strip()
            if text:
                out[name] = text
    return out


def append_jp2_xmp(f: BinaryIO, packet: bytes) -> None:
    """Append an XMP ``uuid`` box to the JP2 file open in ``f`` (at its end)."""
    f.seek(0, 2)
    f.write(struct.pack(">I4s", 8 + len(XMP_UUID) + len(packet), b"uuid") + XMP_UUID + packet)


def read_xmp(path: str) -> bytes | None:
    """The XMP packet of a JP2 or JPEG file, or None when it has none (or is neither)."""
    with open(path, "rb") as f:
        head = f.read(12)
        f.seek(0)
        if head == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
            return _jp2_xmp(f)
        if head[:2] == b"\xff\xd8":
            return _jpeg_xmp(f)
    return None


def _jp2_xmp(f: BinaryIO) -> bytes | None:
    """Walk the top-level boxes (skipping their contents) to the XMP uuid box."""
    while True:
        header = f.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        skip_from = 8
        if length == 1:
            length = struct.unpack(">Q", f.read(8))[0]
            skip_from = 16
        if kind == b"uuid" and f.read(16) == XMP_UUID:
            return f.read(length - skip_from - 16) if length else f.read()
        if kind == b"uuid":
            skip_from += 16
        if length == 0:  # the box runs to the end of the file
            return None
        f.seek(length - skip_from, 1)


def _jpeg_xmp(f: BinaryIO) -> bytes | None:
    """Walk the JPEG markers before the image data to the XMP APP1 segment."""
    signature = b"http://ns.adobe.com/xap/1.0/\x00"
    f.seek(2)
    while True:
        marker = f.read(4)
        if len(marker) < 4 or marker[0] != 0xFF or marker[1] in (0xDA, 0xD9):
            return None
        (size,) = struct.unpack(">H", marker[2:])
        data = f.read(size - 2)
        if marker[1] == 0xE1 and data.startswith(signature):
            return data[len(signature) :]
