"""The bridge's parts that need no server: the labeling config and the reading of results,
the server's environment, secrets and port checks, and the plugin commands."""

from __future__ import annotations

import os
import socket
import stat
import xml.etree.ElementTree as ET

import click
import pytest

from biomedica_kit.cli.plugins import register_plugins
from biomedica_kit.labels.taxonomy import load_taxonomy
from curation import server
from curation.client import is_jwt
from curation.config import (
    FLAGS,
    PANEL_SUBTYPES,
    label_ids,
    labeling_config,
    prediction_result,
    read_result,
)


def test_the_config_holds_the_whole_taxonomy_with_stable_ids():
    tax = load_taxonomy()
    root = ET.fromstring(labeling_config(tax))
    (tree,) = root.iter("Taxonomy")
    assert "legacy" not in tree.attrib and "apiUrl" not in tree.attrib
    primaries = list(tree)
    leaves = [c for p in primaries for c in p]
    assert (len(primaries), len(leaves)) == (16, 119)
    aliases = [c.get("alias") for c in [*primaries, *leaves]]
    assert len(set(aliases)) == len(aliases) == 135
    ids = label_ids(tax)
    for p, secs in tax.tree.items():
        for s in secs:
            assert ids.resolve(ids.path(p, s)) == (p, s)
    # Ids are slugs of the names: reordering the taxonomy keeps them.
    flipped = type(tax)(tree=dict(reversed(list(tax.tree.items()))), labels=tax.labels,
                        primary_descriptions=tax.primary_descriptions, source="x", version="x")
    assert label_ids(flipped).secondary == ids.secondary
    names = {c.get("name"): c for c in root.iter() if c.get("name")}
    assert [c.get("value") for c in names["panel_subtype"]] == list(PANEL_SUBTYPES)
    assert [c.get("value") for c in names["flags"]] == list(FLAGS)
    assert names["comment"].tag == "TextArea"


def test_results_are_read_back_and_bad_ones_explained():
    ids = label_ids(load_taxonomy())
    good = read_result(prediction_result(ids, "Microscopy", "electron microscopy", "single")
                       + [{"from_name": "comment", "value": {"text": ["looks right"]}},
                          {"from_name": "flags", "value": {"choices": ["ambiguous"]}}], ids)
    assert (good.primary, good.secondary, good.panel_type, good.flags, good.comment,
            good.problems) == ("Microscopy", "electron microscopy", "single", ["ambiguous"],
                               "looks right", [])
    cases = {
        "unknown label id": [{"from_name": "label", "value": {"taxonomy": [["x", "x.y"]]}}],
        "does not sit under": [{"from_name": "label", "value": {"taxonomy": [
            ["maps", "microscopy.electron-microscopy"]]}}],
        "expected one taxonomy path": [{"from_name": "label", "value": {}}],
        "primary label only": [{"from_name": "label", "value": {"taxonomy": [["maps"]]}}],
        "unknown choice": [{"from_name": "panel_type", "value": {"choices": ["triple"]}}],
        "unknown control": [{"from_name": "mystery", "value": {}}],
        "malformed result item": ["nonsense"],
        "result is not a list": "nonsense",
    }
    for why, result in cases.items():
        problems = read_result(result, ids).problems
        assert problems and why in problems[0], (why, problems)


def test_the_server_environment_keeps_nothing_stray(tmp_path, monkeypatch):
    for k, v in {"HOST": "http://elsewhere:1", "PORT": "1", "USERNAME": "intruder",
                 "PASSWORD": "x", "LABEL_STUDIO_DEBUG": "1", "DJANGO_DB": "x"}.items():
        monkeypatch.setenv(k, v)
    admin = server.Admin("a@b.c", "pw", "t" * 40, "secret file")
    env = server.server_env(tmp_path, tmp_path / "venv", tmp_path, admin)
    for k in ("HOST", "PORT", "USERNAME", "PASSWORD", "LABEL_STUDIO_DEBUG", "DJANGO_DB"):
        assert k not in env
    assert env["LATEST_VERSION_CHECK"] == "false" and env["COLLECT_ANALYTICS"] == "false"
    assert env["SENTRY_DSN"] == "" and env["FRONTEND_SENTRY_DSN"] == ""
    assert env["LABEL_STUDIO_USER_TOKEN"] == admin.token  # in the environment, not argv
    assert admin.token not in repr(admin)


def test_the_admin_secret_is_private_and_redacted(tmp_path, monkeypatch):
    for k in ("EMAIL", "PASSWORD", "TOKEN"):
        monkeypatch.delenv(f"BIOMEDICA_LABELSTUDIO_{k}", raising=False)
    with pytest.raises(server.LabelStudioError):
        server.admin_credentials(tmp_path)
    admin = server.admin_credentials(tmp_path, create=True)
    mode = stat.S_IMODE(os.stat(tmp_path / "secret.json").st_mode)
    assert mode == 0o600 and len(admin.token) == 40
    assert server.admin_credentials(tmp_path) == admin
    st = server.status(tmp_path)
    assert not st.running and st.token == "<redacted, 40 characters>"
    assert server.status(tmp_path, show_token=True).token == admin.token
    monkeypatch.setenv("BIOMEDICA_LABELSTUDIO_TOKEN", "e" * 40)
    assert server.admin_credentials(tmp_path).source == "environment"


def test_a_busy_port_is_refused_before_label_studio_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not server.port_free(port)
        with pytest.raises(server.PortBusy, match=f"move to {port + 1}"):
            server.start(tmp_path, port=port, files_root=tmp_path)
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_token_kinds():
    jwt = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9."
           "R24iaYCS12XH1J6DZk-YoGMkF5XmyRFeGBXiGaZCtOc")
    assert is_jwt(jwt) and not is_jwt("abcdef0123456789abcdef0123456789abcdef01")


def test_the_bridge_commands_register_through_entry_points():
    group = click.Group("biomedica")
    # the Label Studio bridge's groups, and biomedica_train's commands (same entry point group)
    assert register_plugins(group) == ["evaluate", "labelstudio", "review", "train"]
    assert set(group.commands["labelstudio"].commands) >= {"start", "stop", "status"}
    assert set(group.commands["review"].commands) == {"push", "pull"}
