"""The page of the city's OpenAPI document (``GET /docs``): one HTML file, readable offline.

It runs no script and fetches nothing; every text from a document is escaped, and its one
inline style is allowed by hash in ``DOCS_CSP``, the page's Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from services.gateway.openapi import (
    COMPONENT_KINDS,
    METHODS,
    STALE,
    UNAVAILABLE,
    _dict,
    _list,
    _unescape,
    resolve,
)

# The page's only style. Its hash goes into the CSP, so no inline style attributes anywhere.
_CSS = """
body{margin:0;color:#1f2328;background:#fff;font:15px/1.5 system-ui,"Segoe UI",sans-serif}
main{max-width:62rem;margin:0 auto;padding:1rem 1.5rem 4rem}
h1 small{font-size:.55em;font-weight:400;color:#59636e}
h2{margin-top:2.5rem;padding-bottom:.3rem;border-bottom:1px solid #d1d9e0}
h3{margin:0 0 .4rem;font-size:1.05rem}h4{margin:.8rem 0 .3rem;font-size:.95rem}
code,pre{font:13px/1.45 ui-monospace,Menlo,Consolas,monospace}
pre,.schema{white-space:pre-wrap}
pre{margin:.3rem 0;padding:.5rem .7rem;background:#f6f8fa;border-radius:4px}
article,.component,.scheme{margin:1rem 0;padding:.8rem 1rem;border:1px solid #d1d9e0;
 border-radius:6px}
.method{display:inline-block;min-width:4em;margin-right:.5rem;padding:.1rem .3rem;
 border-radius:4px;background:#59636e;color:#fff;font-size:.8rem;text-align:center}
.get{background:#0969da}.post{background:#1a7f37}.put,.patch{background:#9a6700}
.delete{background:#cf222e}
table{width:100%;margin:.3rem 0;border-collapse:collapse}
th,td{padding:.3rem .5rem;border-top:1px solid #d1d9e0;text-align:left;vertical-align:top}
th{color:#59636e;font-size:.8rem}
.note{color:#59636e}.deprecated{color:#cf222e;font-weight:600}
.warn{padding:.5rem 1rem;background:#fff8c5;border:1px solid #d4a72c;border-radius:6px}
a{color:#0969da}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
DOCS_CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")  # fmt: skip
_MAX_DEPTH = 8  # deeper inline schemas are cut short: the page stays readable
Operation = tuple[str, str, dict[str, Any], dict[str, Any]]  # method, path, path item, operation


def docs_page(document: Mapping[str, Any]) -> str:
    """The document as one HTML page: no scripts, nothing fetched, every text escaped."""
    info = _dict(document.get("info"))
    title = _e(info.get("title", "API"))
    groups = _by_tag(document)
    header = (f"<header><h1>{title} <small>{_e(info.get('version', ''))}</small></h1>"
              f"{_prose(info.get('description'))}{_outages(info)}</header>")  # fmt: skip
    sections = [
        header,
        _contents(groups),
        _security_section(document),
        *(_tag_section(document, i, group) for i, group in enumerate(groups)),
        _components_section(document),
    ]
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(sections)}</main></body></html>\n")  # fmt: skip


def _outages(info: Mapping[str, Any]) -> str:
    notes = [(UNAVAILABLE, "Not in this document right now"), (STALE, "Shown from an earlier copy")]
    lines = [f"{label}: " + ", ".join(f"{_e(name)} ({_e(why)})" for name, why in services.items())
             for key, label in notes if (services := _dict(info.get(key)))]  # fmt: skip
    return "".join(f'<p class="warn">{line}</p>' for line in lines)


def _by_tag(document: Mapping[str, Any]) -> list[tuple[str, Any, list[Operation]]]:
    """Operations grouped by tag: declared tags in order, then the others, untagged last."""
    grouped: dict[str, list[Operation]] = {}
    for path, item in _dict(document.get("paths")).items():
        for method in METHODS:
            if isinstance(op := _dict(item).get(method), dict):
                for tag in _list(op.get("tags")) or [""]:
                    grouped.setdefault(str(tag), []).append((method, path, item, op))
    declared = {str(t.get("name")): t.get("description")
                for t in _list(document.get("tags")) if isinstance(t, dict)}  # fmt: skip
    order = [t for t in declared if t in grouped]
    order += sorted((t for t in grouped if t not in declared), key=lambda t: (t == "", t))
    return [(tag or "Other", declared.get(tag), grouped[tag]) for tag in order]


def _contents(groups: list[tuple[str, Any, list[Operation]]]) -> str:
    links = ['<li><a href="#security">Authentication</a></li>']
    links += [f'<li><a href="#t{i}">{_e(tag)}</a></li>' for i, (tag, _, _) in enumerate(groups)]
    links.append('<li><a href="#components">Components</a></li>')
    return f"<nav><h2>Contents</h2><ul>{''.join(links)}</ul></nav>"


def _tag_section(
    document: Mapping[str, Any], i: int, group: tuple[str, Any, list[Operation]]
) -> str:
    tag, description, operations = group
    ops = "".join(_operation(document, *operation) for operation in operations)
    return f'<section id="t{i}"><h2>{_e(tag)}</h2>{_prose(description)}{ops}</section>'


def _operation(
    document: Mapping[str, Any], method: str, path: str, item: dict[str, Any], op: dict[str, Any]
) -> str:
    parts = [f'<article><h3><span class="method {_e(method)}">{_e(method.upper())}</span>'
             f"<code>{_e(path)}</code></h3>"]  # fmt: skip
    if op.get("deprecated"):
        parts.append('<p class="deprecated">Deprecated</p>')
    if op.get("summary"):
        parts.append(f"<p><strong>{_inline(str(op['summary']))}</strong></p>")
    parts += [
        _prose(op.get("description")),
        f"<p>{_requirements(document, op)}</p>",
        _parameters(document, [*_list(item.get("parameters")), *_list(op.get("parameters"))]),
        _request_body(document, op.get("requestBody")),
        _responses(document, _dict(op.get("responses"))),
        "</article>",
    ]
    return "".join(parts)


def _requirements(document: Mapping[str, Any], op: Mapping[str, Any]) -> str:
    alternatives = []
    for requirement in _list(op.get("security", document.get("security"))):
        alternatives.append(" and ".join(
            f'<a href="#s-{_e(name)}">{_e(name)}</a>'
            + (f" <code>{_e(' '.join(map(str, scopes)))}</code>" if scopes else "")
            for name, scopes in _dict(requirement).items()
        ) or "none")  # fmt: skip
    if not alternatives or alternatives == ["none"]:
        return "No authentication."
    return "Authentication: " + " <em>or</em> ".join(alternatives) + "."


def _parameters(document: Mapping[str, Any], parameters: list[Any]) -> str:
    """Path-item and operation parameters; the operation's win on the same name and place."""
    rows: dict[tuple[str, str], str] = {}
    for parameter in parameters:
        p = _deref(document, parameter)
        rows[(str(p.get("name")), str(p.get("in")))] = (
            f"<tr><td><code>{_e(p.get('name'))}</code>{' *' if p.get('required') else ''}</td>"
            f'<td>{_e(p.get("in"))}</td><td><code class="schema">{_schema(p.get("schema"))}'
            f"</code></td><td>{_see(parameter, _inline(str(p.get('description') or '')))}</td></tr>"
        )
    if not rows:
        return ""
    head = "<tr><th>name (* required)</th><th>in</th><th>schema</th><th>description</th></tr>"
    return f"<h4>Parameters</h4><table>{head}{''.join(rows.values())}</table>"


def _request_body(document: Mapping[str, Any], body: Any) -> str:
    if body is None:
        return ""
    resolved = _deref(document, body)
    required = " (required)" if resolved.get("required") else ""
    see = _paragraph(_see(body, ""))
    return (f"<h4>Request body{required}</h4>{see}{_prose(resolved.get('description'))}"
            f"{_content(resolved.get('content'))}")  # fmt: skip


def _responses(document: Mapping[str, Any], responses: Mapping[str, Any]) -> str:
    """One row per answer; statuses that share a response component share its row."""
    rows: dict[str, tuple[list[str], Any]] = {}
    for status, response in responses.items():
        ref = _dict(response).get("$ref")
        key = ref if isinstance(ref, str) else f"inline {status}"
        rows.setdefault(key, ([], response))[0].append(str(status))
    cells = []
    for statuses, response in rows.values():
        resolved = _deref(document, response)
        # A shared response's content is shown once, in the components section.
        content = "" if "$ref" in _dict(response) else _content(resolved.get("content"))
        codes = " ".join(f"<code>{_e(s)}</code>" for s in statuses)
        description = _inline(str(resolved.get("description") or ""))
        cells.append(f"<tr><td>{codes}</td><td>{_see(response, description)}{content}</td></tr>")
    return f"<h4>Responses</h4><table>{''.join(cells)}</table>" if cells else ""


def _content(content: Any) -> str:
    return "".join(
        f"<div><code>{_e(media_type)}</code>"
        + (f'<pre class="schema">{_schema(media["schema"])}</pre>' if "schema" in media else "")
        + "</div>"
        for media_type, media in _dict(content).items()
        if isinstance(media, dict)
    )


def _security_section(document: Mapping[str, Any]) -> str:
    schemes = _dict(_dict(document.get("components")).get("securitySchemes"))
    items = "".join(_scheme(name, _dict(scheme)) for name, scheme in schemes.items())
    return f'<section id="security"><h2>Authentication</h2>{items or "<p>None.</p>"}</section>'


def _scheme(name: str, scheme: Mapping[str, Any]) -> str:
    kind = scheme.get("type")
    if kind == "http":
        what = f"HTTP {_e(scheme.get('scheme'))}" + (
            f" ({_e(scheme['bearerFormat'])})" if scheme.get("bearerFormat") else ""
        )
        if str(scheme.get("scheme")).lower() == "bearer":
            what += ": send <code>Authorization: Bearer &lt;token&gt;</code>"
    elif kind == "apiKey":
        what = f"API key in {_e(scheme.get('in'))} <code>{_e(scheme.get('name'))}</code>"
    elif kind == "openIdConnect":
        what = f"OpenID Connect, discovery at <code>{_e(scheme.get('openIdConnectUrl'))}</code>"
    else:
        what = "OAuth 2.0" if kind == "oauth2" else _e(kind)
    flows = "".join(_flow(flow, _dict(spec)) for flow, spec in _dict(scheme.get("flows")).items())
    return (f'<div class="scheme" id="s-{_e(name)}"><h3>{_e(name)}</h3><p>{what}</p>'
            f"{_prose(scheme.get('description'))}{flows}</div>")  # fmt: skip


def _flow(flow: str, spec: Mapping[str, Any]) -> str:
    urls = [f"{label} <code>{_e(spec[key])}</code>" for key, label in
            (("authorizationUrl", "authorize at"), ("tokenUrl", "token at"),
             ("refreshUrl", "refresh at")) if key in spec]  # fmt: skip
    how = ""
    if flow == "clientCredentials" and "tokenUrl" in spec:
        how = (
            f"<p>To get a token, <code>POST {_e(spec['tokenUrl'])}</code> a form with "
            "<code>grant_type=client_credentials</code>, your client authentication and the "
            "<code>scope</code> you need (space-separated); send the <code>access_token</code>"
            " it answers on each request, as the answer's <code>token_type</code> says.</p>"
        )
    scopes = "".join(f"<tr><td><code>{_e(s)}</code></td><td>{_inline(str(d))}</td></tr>"
                     for s, d in _dict(spec.get("scopes")).items())  # fmt: skip
    table = f"<table><tr><th>scope</th><th>what for</th></tr>{scopes}</table>" if scopes else ""
    return f"<h4>{_e(flow)}</h4><p>{', '.join(urls)}</p>{how}{table}"


def _components_section(document: Mapping[str, Any]) -> str:
    components = _dict(document.get("components"))
    parts = ['<section id="components"><h2>Components</h2>']
    for kind in COMPONENT_KINDS:
        entries = _dict(components.get(kind))
        if kind == "securitySchemes" or not entries:
            continue  # the security schemes have their own section above
        parts.append(f"<h3>{_e(kind)}</h3>")
        parts += [_component(kind, name, _dict(value)) for name, value in entries.items()]
    return "".join([*parts, "</section>"])


def _component(kind: str, name: str, value: Mapping[str, Any]) -> str:
    text = _prose(value.get("summary")) + _prose(value.get("description"))
    if "$ref" in value:
        body = _paragraph(_see(value, ""))
    elif kind in ("schemas", "headers", "parameters"):
        schema = value if kind == "schemas" else value.get("schema")
        where = (f"<p>in {_e(value.get('in'))} <code>{_e(value.get('name'))}</code></p>"
                 if kind == "parameters" else "")  # fmt: skip
        body = f'{where}{text}<pre class="schema">{_schema(schema)}</pre>'
    elif kind in ("responses", "requestBodies"):
        body = text + _content(value.get("content"))
    else:
        body = f"{text}<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"
    return f'<div class="component" id="{_e(_anchor(kind, name))}"><h4>{_e(name)}</h4>{body}</div>'


def _schema(schema: Any, depth: int = 0) -> str:
    """A schema as short escaped text: ``$ref`` as a link, objects as ``name*: type`` lines."""
    if not isinstance(schema, dict):
        return "any" if schema is None or schema is True else _e(json.dumps(schema))
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(schema.get("$ref"), str):
        return _ref_link(schema["$ref"])
    for key, joiner in (("oneOf", " | "), ("anyOf", " | "), ("allOf", " &amp; ")):
        if isinstance(schema.get(key), list):
            return joiner.join(_schema(s, depth + 1) for s in schema[key])
    if "const" in schema:
        return _literal(schema["const"])
    if isinstance(schema.get("enum"), list):
        return " | ".join(_literal(v) for v in schema["enum"])
    types = schema.get("type")
    names = [str(t) for t in (types if isinstance(types, list) else [types] if types else [])]
    if "object" in names or "properties" in schema:
        shown = [_object(schema, depth), *(n for n in names if n != "object")]
    elif "array" in names:
        shown = ["array of " + _schema(schema.get("items"), depth + 1) if "items" in schema
                 else "array", *(n for n in names if n != "array")]  # fmt: skip
    else:
        shown = [_e(n) for n in names] or ["any"]
    return " | ".join(shown) + _constraints(schema)


def _object(schema: Mapping[str, Any], depth: int) -> str:
    required = set(_list(schema.get("required")))
    pad = "  " * (depth + 1)
    lines = [f"{pad}{_e(name)}{'*' if name in required else ''}: "
             f"{_schema(sub, depth + 1)}{_note(sub)}"
             for name, sub in _dict(schema.get("properties")).items()]  # fmt: skip
    if isinstance(extra := schema.get("additionalProperties"), dict):
        lines.append(f"{pad}[key]: {_schema(extra, depth + 1)}")
    return "{\n" + "\n".join(lines) + "\n" + "  " * depth + "}" if lines else "object"


def _constraints(schema: Mapping[str, Any]) -> str:
    marks = (("format", "({})"), ("pattern", "/{}/"), ("minimum", "≥ {}"), ("maximum", "≤ {}"),
             ("exclusiveMinimum", "> {}"), ("exclusiveMaximum", "< {}"),
             ("minLength", "length ≥ {}"), ("maxLength", "length ≤ {}"),
             ("minItems", "items ≥ {}"), ("maxItems", "items ≤ {}"))  # fmt: skip
    shown = [_e(mark.format(schema[key])) for key, mark in marks if key in schema]
    if "default" in schema:
        shown.append("= " + _literal(schema["default"]))
    return "".join(" " + s for s in shown)


def _note(schema: Any) -> str:
    description = _dict(schema).get("description")
    if not isinstance(description, str) or not description:
        return ""
    return f'  <span class="note">// {_e(" ".join(description.split()))}</span>'


def _see(node: Any, text: str) -> str:
    """``text`` (escaped already), after a 'see X' link when the node is a $ref."""
    ref = _dict(node).get("$ref")
    if not isinstance(ref, str):
        return text
    return f"see {_ref_link(ref)}: {text}" if text else f"see {_ref_link(ref)}"


def _paragraph(text: str) -> str:
    return f"<p>{text}</p>" if text else ""


def _deref(document: Mapping[str, Any], node: Any) -> dict[str, Any]:
    """The object a $ref points at (following a few hops), or the node itself."""
    for _ in range(5):
        ref = _dict(node).get("$ref")
        if not isinstance(ref, str):
            break
        try:
            node = resolve(document, ref)
        except LookupError:
            return {}
    return _dict(node)


def _ref_link(ref: str) -> str:
    parts = ref.split("/")
    if ref.startswith("#/components/") and len(parts) >= 4:
        name = _unescape(unquote(parts[3]))
        return f'<a href="#{_e(_anchor(parts[2], name))}">{_e(name)}</a>'
    return f"<code>{_e(ref)}</code>"


def _anchor(kind: str, name: str) -> str:
    return f"c-{kind}-{name}"


def _literal(value: Any) -> str:
    return _e(json.dumps(value, ensure_ascii=False))


def _prose(text: Any) -> str:
    """Paragraphs of escaped text; `backticks` become code."""
    if not isinstance(text, str) or not text.strip():
        return ""
    return "".join(f"<p>{_inline(p)}</p>" for p in re.split(r"\n\s*\n", text.strip()))


def _inline(text: str) -> str:
    # Escaped first, so the <code> added here is the only markup the text can carry.
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
