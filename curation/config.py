"""The labeling config, generated from the taxonomy, and the reading of its results.

One config serves cluster tasks and spot-check tasks alike::

    <Header $title>  <Image $image> (the montage, or the sample)  <HyperText $details>
    <Taxonomy name="label">   a static tree: 16 primary -> 119 secondary <Choice> elements
    <Choices name="panel_type">     single / multiple            (BIOMEDICA's image_panel_type)
    <Choices name="panel_subtype">  BIOMEDICA's four subtypes     (image_panel_subtype)
    <Choices name="flags">          ambiguous / not a figure
    <TextArea name="comment">

Every ``<Choice>`` carries a stable id in ``alias`` (Label Studio then stores the alias in
results): ``<primary slug>`` and ``<primary slug>.<secondary slug>``, so reordering the
taxonomy or editing a description keeps every id. The tree is written out in the config:
not the deprecated ``legacy`` mode, whose lists stop at 100 labels (label-studio #5373), nor
the beta ``apiUrl`` (#7262). :func:`read_result` turns a result list back into labels and
reports what is wrong with it (an unknown id, a malformed item, two labels) instead of
guessing.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from biomedica_kit.labels.taxonomy import PANEL_TYPES, Taxonomy

__all__ = ["CONTROLS", "FLAGS", "PANEL_SUBTYPES", "LabelIds", "Reading", "label_ids",
           "labeling_config", "prediction_result", "read_result"]

#: BIOMEDICA's panel subtypes (``image_panel_subtype``).
PANEL_SUBTYPES = ("single panel", "multiple panels: images", "multiple panels: images & plots",
                  "multiple panels: images & assays")
#: Flags an expert may set instead of (or beside) a label.
FLAGS = ("ambiguous", "not a figure")
#: The control tags' names (``from_name`` in results).
CONTROLS = ("label", "panel_type", "panel_subtype", "flags", "comment")
TO_NAME = "image"


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "label"


@dataclass(frozen=True)
class LabelIds:
    """Stable ids of a taxonomy's labels (the ``alias`` of each ``<Choice>``)."""

    primary: dict[str, str]  # primary label -> id
    secondary: dict[tuple[str, str], str]  # (primary, secondary) -> id
    by_id: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def path(self, primary: str, secondary: str) -> list[str]:
        """The Taxonomy path (ids) of a label pair."""
        return [self.primary[primary], self.secondary[(primary, secondary)]]

    def resolve(self, path: list[Any]) -> tuple[str, str | None]:
        """The label pair of a Taxonomy path of ids; ValueError names what is unknown."""
        if not path or not all(isinstance(p, str) for p in path) or len(path) > 2:
            raise ValueError(f"malformed taxonomy path {path!r}")
        got = self.by_id.get(path[-1])
        if got is None:
            raise ValueError(f"unknown label id {path[-1]!r}")
        if len(path) == 2 and self.primary.get(got[0]) != path[0]:
            raise ValueError(f"label id {path[-1]!r} does not sit under {path[0]!r}")
        return got


def label_ids(tax: Taxonomy) -> LabelIds:
    """The ids of every label of ``tax``; ValueError when two labels would share one."""
    primary: dict[str, str] = {}
    secondary: dict[tuple[str, str], str] = {}
    by_id: dict[str, tuple[str, str | None]] = {}
    for p, secs in tax.tree.items():
        pid = _slug(p)
        if pid in by_id:
            raise ValueError(f"primary labels {by_id[pid][0]!r} and {p!r} share the id {pid!r}")
        primary[p] = pid
        by_id[pid] = (p, None)
        for s in secs:
            sid = f"{pid}.{_slug(s)}"
            if sid in by_id:
                raise ValueError(f"labels {by_id[sid]} and {(p, s)} share the id {sid!r}")
            secondary[(p, s)] = sid
            by_id[sid] = (p, s)
    return LabelIds(primary, secondary, by_id)


def labeling_config(tax: Taxonomy) -> str:
    """The Label Studio labeling config (XML) for ``tax`` (module doc)."""
    ids = label_ids(tax)
    view = ET.Element("View")
    ET.SubElement(view, "Header", value="$title", size="4")
    ET.SubElement(view, "Image", name=TO_NAME, value="$image", zoom="true",
                  maxWidth="100%")
    ET.SubElement(view, "HyperText", name="details", value="$details", inline="true",
                  saveTextResult="no")
    ET.SubElement(view, "Header", value="Label: primary / secondary", size="5")
    tree = ET.SubElement(view, "Taxonomy", name="label", toName=TO_NAME, maxUsages="1",
                         leafsOnly="true", showFullPath="true", pathSeparator=" / ",
                         placeholder="Choose the label")
    for p, secs in tax.tree.items():
        node = ET.SubElement(tree, "Choice", value=p, alias=ids.primary[p])
        for s in secs:
            ET.SubElement(node, "Choice", value=s, alias=ids.secondary[(p, s)])
    for name, title, values, mode in (
            ("panel_type", "Panel type", PANEL_TYPES, "single-radio"),
            ("panel_subtype", "Panel subtype", PANEL_SUBTYPES, "single-radio"),
            ("flags", "Flags", FLAGS, "multiple")):
        ET.SubElement(view, "Header", value=title, size="5")
        choices = ET.SubElement(view, "Choices", name=name, toName=TO_NAME, choice=mode,
                                showInline="true")
        for v in values:
            ET.SubElement(choices, "Choice", value=v)
    ET.SubElement(view, "Header", value="Comment", size="5")
    ET.SubElement(view, "TextArea", name="comment", toName=TO_NAME, maxSubmissions="1",
                  editable="true", placeholder="Optional")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def prediction_result(ids: LabelIds, primary: str, secondary: str,
                      panel_type: str | None) -> list[dict[str, Any]]:
    """The result list of a proposal (a prediction pre-filling Taxonomy and panel type)."""
    out: list[dict[str, Any]] = [{"from_name": "label", "to_name": TO_NAME, "type": "taxonomy",
                                  "value": {"taxonomy": [ids.path(primary, secondary)]}}]
    if panel_type:
        out.append({"from_name": "panel_type", "to_name": TO_NAME, "type": "choices",
                    "value": {"choices": [panel_type]}})
    return out


@dataclass
class Reading:
    """What one annotation says, and what is wrong with it (``problems``)."""

    primary: str | None = None
    secondary: str | None = None
    panel_type: str | None = None
    panel_subtype: str | None = None
    flags: list[str] = field(default_factory=list)
    comment: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Neither a label nor a flag was given."""
        return self.secondary is None and not self.flags


def _choices(value: dict[str, Any], allowed: tuple[str, ...], name: str,
             problems: list[str]) -> list[str]:
    got = value.get("choices")
    if not isinstance(got, list) or not all(isinstance(c, str) for c in got):
        problems.append(f"{name}: malformed choices {got!r}")
        return []
    bad = [c for c in got if c not in allowed]
    if bad:
        problems.append(f"{name}: unknown choice {bad[0]!r}")
    return [c for c in got if c in allowed]


def read_result(result: Any, ids: LabelIds) -> Reading:
    """Read an annotation's ``result`` list (see :class:`Reading`)."""
    r = Reading()
    if not isinstance(result, list):
        r.problems.append(f"result is not a list: {type(result).__name__}")
        return r
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            r.problems.append(f"malformed result item {str(item)[:80]!r}")
            continue
        name, value = item.get("from_name"), item["value"]
        if name == "label":
            paths = value.get("taxonomy")
            if not isinstance(paths, list) or len(paths) != 1:
                r.problems.append(f"label: expected one taxonomy path, got {paths!r}")
                continue
            try:
                r.primary, r.secondary = ids.resolve(paths[0])
            except ValueError as exc:
                r.problems.append(f"label: {exc}")
                continue
            if r.secondary is None:
                r.problems.append(f"label: {r.primary!r} is a primary label only")
        elif name == "panel_type":
            got = _choices(value, PANEL_TYPES, name, r.problems)
            r.panel_type = got[0] if got else None
        elif name == "panel_subtype":
            got = _choices(value, PANEL_SUBTYPES, name, r.problems)
            r.panel_subtype = got[0] if got else None
        elif name == "flags":
            r.flags = _choices(value, FLAGS, name, r.problems)
        elif name == "comment":
            text = value.get("text")
            texts = text if isinstance(text, list) else [text]
            r.comment = " ".join(str(t) for t in texts if t) or None
        else:
            r.problems.append(f"unknown control {name!r}")
    return r
