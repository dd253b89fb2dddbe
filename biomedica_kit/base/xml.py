"""The one hardened XML parser of the project (lxml / libxml2), and bounded entity expansion.

Every XML the kit reads (article JATS, PubMed records) is untrusted input. :func:`hardened_parser`
never touches the network, never loads a DTD, never validates, keeps libxml2's size and depth
limits (``huge_tree`` off), drops comments and processing instructions, and never lets libxml2
expand an entity: each entity reference stays an entity node.

Entities are then expanded by :func:`expand_entities` (called by :func:`parse_bytes`), under one
rule:

* an entity declared in the document's internal DTD subset as *text* (older PLOS/NLM files:
  ``<!DOCTYPE article [<!ENTITY delta "&#160;">]>``) is replaced by its text; nested references
  are followed, loops are refused, and the whole expansion is bounded (at most
  ``AMPLIFICATION`` x the document's size, and never less than ``MIN_EXPANSION`` characters), so
  expansion bombs ("billion laughs", one large entity referenced many times) are refused before
  a single string is built;
* an entity the document does not declare, which its external DTD (never read) would define
  (``&iacute;``, ``&ndash;`` in NLM 2.0 articles), is replaced by the character of that name in
  the W3C/HTML5 entity table (the ISO and MathML sets the JATS DTDs include); unknown names stay
  unexpanded;
* a document that declares an *external* entity (``SYSTEM`` / ``PUBLIC``: XXE) is refused,
  whether or not it references it; an internal entity whose text holds markup is refused too.

libxml2's own ``resolve_entities='internal'`` mode is not used: it turns every entity that only
the external DTD defines into a fatal "Entity 'x' not defined" error, which would fail real
NLM 2.0 articles (PLOS ONE 2006 uses ``&percnt;``, ``&iacute;``...).
"""

from __future__ import annotations

import html.entities
import re
import threading
from typing import Any

from lxml import etree

__all__ = ["AMPLIFICATION", "MAX_XML_BYTES", "MIN_EXPANSION", "XmlRefused", "collapsed_text",
           "expand_entities", "external_entities", "hardened_parser", "parse_bytes",
           "thread_parser"]

#: Refuse XML documents larger than this (bytes); the largest real PMC nXML is a few MB.
MAX_XML_BYTES = 64 * 1024 * 1024
#: Entity expansion may add at most this many times the document's size in characters ...
AMPLIFICATION = 5
#: ... and never less than this many characters.
MIN_EXPANSION = 1_000_000

_local = threading.local()

# An external entity declaration: general or parameter, SYSTEM or PUBLIC identifier.
_EXTERNAL_ENTITY = re.compile(rb"<!ENTITY\s+(%\s+)?([^\s>]+)\s+(SYSTEM|PUBLIC)\b")
_UNDEFINED = re.compile(r"Entity '([^']+)' not defined")
_REF = re.compile(r"&(?:#([0-9]+)|#x([0-9A-Fa-f]+)|([A-Za-z_:][\w.:-]*));")
_PREDEFINED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


class XmlRefused(ValueError):
    """The bytes are not acceptable XML; ``reason`` is a short machine-readable code.

    Reasons: ``xml_too_large``, ``empty_xml``, ``xml_entities`` (an external entity declared, an
    expansion over the bound, an entity loop or an entity holding markup), ``encoding_error``,
    ``malformed_xml``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def hardened_parser() -> etree.XMLParser:
    """A new hardened lxml parser (lxml parsers must not be shared across threads).

    No network, no DTD loading or validation, no attribute defaults, libxml2's size limits, no
    comments or processing instructions, and entity references left unexpanded.
    """
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def thread_parser() -> etree.XMLParser:
    """This thread's :func:`hardened_parser`, created once per thread."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = hardened_parser()
    return parser


def collapsed_text(el: etree._Element | None) -> str | None:
    """An element's text with its descendants' (inline markup flattened), whitespace collapsed;
    None for a missing or empty element."""
    if el is None:
        return None
    # lxml-stubs type itertext() as str | bytes; parsed documents yield str.
    return " ".join("".join(map(str, el.itertext())).split()) or None


def parse_bytes(data: bytes, *, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse untrusted XML bytes and expand its entities; raise :class:`XmlRefused` if bad."""
    if len(data) > max_bytes:
        raise XmlRefused("xml_too_large", f"{len(data)} bytes > limit {max_bytes}")
    if not data.strip():
        raise XmlRefused("empty_xml", "no content")
    try:
        root = etree.fromstring(data, thread_parser())
    except etree.XMLSyntaxError as exc:
        raise _refusal(data, str(exc)) from None
    except ValueError as exc:  # lxml raises ValueError for some encoding declarations
        raise XmlRefused("encoding_error", str(exc)) from None
    expand_entities(root, budget=max(MIN_EXPANSION, AMPLIFICATION * len(data)))
    return root


def external_entities(data: bytes) -> list[str]:
    """Names of the external entities (``SYSTEM``/``PUBLIC``) a DOCTYPE's internal subset
    declares (``%name`` for parameter entities)."""
    start = data.find(b"<!DOCTYPE")
    if start < 0:
        return []
    end = data.find(b"]>", start)
    prolog = data[start: end + 2 if end >= 0 else len(data)]
    return [("%" if m.group(1) else "") + m.group(2).decode("utf-8", "replace")
            for m in _EXTERNAL_ENTITY.finditer(prolog)]


def expand_entities(root: etree._Element, *, budget: int = MIN_EXPANSION) -> None:
    """Replace the entity nodes under ``root`` by their text, in place (rules: module doc).

    ``budget`` bounds the total number of characters all expansions add.
    """
    dtd = root.getroottree().docinfo.internalDTD
    declared: dict[str, str] = {}
    if dtd is not None:
        for e in dtd.iterentities():  # type: ignore[attr-defined]  # lxml's stubs lack it
            if e.system_url is not None:
                raise XmlRefused("xml_entities", f"external entity {e.name!r} declared "
                                                 f"({e.system_url!r}); refused")
            declared.setdefault(e.name, e.content or "")
    nodes: list[Any] = list(root.iter(etree.Entity))  # _Entity nodes: .name, .tail
    if not nodes:
        return
    lengths: dict[str, int] = {}
    total = 0
    for node in nodes:
        total += _length(node.name, declared, lengths, budget, ())
        if total > budget:
            raise XmlRefused("xml_entities", f"entity expansion over {budget} characters "
                                             "(an entity bomb); refused")
    texts: dict[str, str | None] = {}
    for node in nodes:
        text = _expand(node.name, declared, texts)
        if text is None:
            continue  # an unknown name: the reference stays (it reads as nothing)
        parent = node.getparent()
        if parent is None:
            continue
        text += node.tail or ""
        prev = node.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + text
        else:
            parent.text = (parent.text or "") + text
        parent.remove(node)


def _known(name: str) -> str | None:
    """The text of an entity name no internal subset declares: predefined or W3C/HTML5 table."""
    return _PREDEFINED.get(name) or html.entities.html5.get(name + ";")


def _length(name: str, declared: dict[str, str], memo: dict[str, int], budget: int,
            stack: tuple[str, ...]) -> int:
    """Characters the entity ``name`` expands to, without building the string (bombs stop
    here, before any allocation)."""
    if name in memo:
        return memo[name]
    if name not in declared:
        n = len(_known(name) or "")
    else:
        if name in stack:
            raise XmlRefused("xml_entities", f"entity loop through {name!r}; refused")
        body = declared[name]
        if "<" in body:
            raise XmlRefused("xml_entities", f"entity {name!r} holds markup; only text "
                                             "entities are accepted")
        n, pos = 0, 0
        for m in _REF.finditer(body):
            n += m.start() - pos + (1 if m.group(3) is None else
                                    _length(m.group(3), declared, memo, budget, (*stack, name)))
            pos = m.end()
            if n > budget:
                raise XmlRefused("xml_entities", f"entity {name!r} expands to over {budget} "
                                                 "characters (an entity bomb); refused")
        n += len(body) - pos
    memo[name] = n
    return n


def _expand(name: str, declared: dict[str, str], memo: dict[str, str | None]) -> str | None:
    """The text of entity ``name`` (lengths were bounded by :func:`_length` first)."""
    if name in memo:
        return memo[name]
    if name not in declared:
        out = _known(name)
    else:
        def sub(m: re.Match) -> str:
            if m.group(3) is None:
                return _char(int(m.group(1) or m.group(2), 10 if m.group(1) else 16))
            return _expand(m.group(3), declared, memo) or ""

        out = _REF.sub(sub, declared[name])
    memo[name] = out
    return out


def _char(code: int) -> str:
    """The character of a character reference; U+FFFD for a code point XML does not allow."""
    ok = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0x10FFFF
    return chr(code) if ok and code not in (0xFFFE, 0xFFFF) else "\ufffd"


def _refusal(data: bytes, msg: str) -> XmlRefused:
    low = msg.lower()
    if "amplification" in low or "entity reference loop" in low or "entity loop" in low:
        return XmlRefused("xml_entities", f"entity expansion refused by libxml2: {msg}")
    ext = external_entities(data)
    if ext:
        return XmlRefused("xml_entities", f"external entity {ext[0]!r} declared; refused "
                                          "(external entities are never read)")
    undefined = _UNDEFINED.search(msg)
    if undefined:
        return XmlRefused("xml_entities", f"entity {undefined.group(1)!r} is declared neither "
                                          f"in the document nor by an external DTD: {msg}")
    if "entit" in low:
        return XmlRefused("xml_entities", msg)
    if "ncoding" in msg or "UTF-8" in msg:
        return XmlRefused("encoding_error", msg)
    return XmlRefused("malformed_xml", msg)
