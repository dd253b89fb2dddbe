"""Property-based tests of the real server against its own OpenAPI schema (schemathesis):
generated requests to every operation, each response checked for a server error, a status
the schema does not list, a body or content type that does not match it, a valid request
refused, and so on. Kept short: a few examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from search_server import search_server

#: Every operation of the schema (checked below, so a new route cannot go untested).
OPERATIONS = [("GET", "/search"), ("POST", "/search/image"), ("GET", "/samples/{key}"),
              ("GET", "/samples/{key}/image"), ("GET", "/samples/{key}/thumbnail"),
              ("GET", "/samples/{key}/similar"), ("GET", "/articles/{pmcid}"),
              ("GET", "/shards"), ("GET", "/shards/{path}"), ("GET", "/facets"),
              ("GET", "/health")]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    url = search_server(tmp_path_factory)
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_the_list_covers_the_schema(api_schema):
    ops = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert ops == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_operation_conforms_to_the_schema(api_schema, method, path):
    op = api_schema[path][method]
    # Any bytes are a schema-valid upload, but only images are accepted: that one check
    # cannot hold for the upload (its refusals are checked in test_server_http).
    excluded = [positive_data_acceptance] if path == "/search/image" else []

    @given(case=op.as_strategy())
    @settings(max_examples=10, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(timeout=120, excluded_checks=excluded)

    check()
