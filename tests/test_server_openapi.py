"""keystile serve fuzzed from its own /openapi.json by schemathesis: no 500s, and every
answer matches the schema the document gives for its status and content type.

Left out: schemathesis's checks that a request without ``Authorization`` gets 401
(``missing_required_header``, ``ignored_auth``): Unkey answers 400
``unkey/authentication/missing`` there, and so does keystile (tested in test_server.py);
and ``positive_data_acceptance``: some rules span fields, which JSON Schema cannot state
(one prefix per API, rate-limit names unique, a refill needs limited credits), so a
schema-valid body may still get a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    positive_data_acceptance,
)

from keystile import Keystile
from keystile.server import ROOT_ACTIONS, RootKeys, build_app

EVERY_PERMISSION = [f"{group}.*.{action}" for group, actions in ROOT_ACTIONS.items()
                    for action in sorted(actions)]


def _seeded_app() -> tuple[Any, str]:
    """A server (on the in-memory store: the schema loads at collection) with an API, a
    role, an identity and a key, and a root key that may do everything."""
    ks = Keystile("memory://")
    app = build_app(ks)
    root = RootKeys(ks).create(EVERY_PERMISSION).key
    api = ks.create_api("fuzzed", prefix="sk_fuzz")
    ks.create_role("admin", permissions=["docs.read"])
    ks.create_key(api.id, external_id="acme", credits=10, roles=["admin"])
    return app, root


APP, ROOT = _seeded_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_if_the_server_is_fuzzed_from_its_document_then_every_answer_conforms(case: Any) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ROOT}"},
        excluded_checks=[missing_required_header, ignored_auth, positive_data_acceptance],
    )
