"""The gateway's docs page: every operation listed, every text escaped, every link inside it,
and nothing the strict CSP would block.

The documents are the merged ones of ``test_gateway_openapi``: the real wallet's and two toys'.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Any

import pytest

from services.gateway.docs import DOCS_CSP, docs_page
from services.gateway.openapi import GATEWAY_DOCUMENT, merge
from tests.unit.test_gateway_openapi import operations, served_wallet_document, toy


@pytest.fixture
async def merged() -> dict[str, Any]:
    wallet = await served_wallet_document()
    services = {"wallet": wallet, "transit": toy("transit"), "buses": toy("buses")}
    return merge(services, gateway=GATEWAY_DOCUMENT, version="2030.1")


def page_operations(page: str) -> set[tuple[str, str]]:
    headings = re.findall(r"<article><h3>(.*?)</h3>", page)
    texts = [html.unescape(re.sub(r"<[^>]+>", " ", h)).split() for h in headings]
    return {(method.lower(), path) for method, path in texts}


def test_the_page_lists_every_operation(merged: dict[str, Any]) -> None:
    page = docs_page(merged)
    assert page_operations(page) == {(method, path) for method, path, _ in operations(merged)}
    assert "wallet:topup" in page
    assert 'href="#c-responses-WalletProblem"' in page


def test_the_page_escapes_what_the_documents_say() -> None:
    attack = "<script>alert(1)</script>"
    evil = toy("transit")
    evil["info"]["description"] = attack
    evil["tags"][0]["description"] = attack
    op = evil["paths"]["/v1/transit/taps"]["post"]
    op.update(summary=attack, description=f"`{attack}`")
    evil["components"]["schemas"]["Tap"]["properties"] = {attack: {"description": attack}}
    evil["components"]["parameters"]["JourneyId"]["description"] = attack
    page = docs_page(merge({"transit": evil}, gateway=GATEWAY_DOCUMENT, version=attack))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_page_needs_nothing_from_outside_and_fits_the_strict_csp(
    merged: dict[str, Any],
) -> None:
    page = docs_page(merged)
    for outside in ("<script", "<link", "<img", "src=", "@import", "url(", "style="):
        assert outside not in page.lower()
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in DOCS_CSP
    assert DOCS_CSP.startswith("default-src 'none'")


def test_every_link_on_the_page_leads_to_an_anchor_on_it(merged: dict[str, Any]) -> None:
    page = docs_page(merged)
    anchors = set(re.findall(r'id="([^"]+)"', page))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert links
    assert links <= anchors
