"""Reading the dashboard's own forms: small ``application/x-www-form-urlencoded`` bodies.

Parsed here with the standard library (no ``python-multipart``): the dashboard posts nothing
else, so any other content type, or a body over ``MAX_FORM_BYTES``, is refused unread.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from mpstate.errors import InvalidInputError

__all__ = ["MAX_FORM_BYTES", "read_form"]

MAX_FORM_BYTES = 16 * 1024
_URLENCODED = "application/x-www-form-urlencoded"


async def read_form(request: Request) -> dict[str, str]:
    """The form's fields (the first value of each; none for an empty body);
    ``InvalidInputError`` when it is not such a form."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InvalidInputError(f"the form is larger than {MAX_FORM_BYTES} bytes")
    if not body:
        return {}
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != _URLENCODED:
        raise InvalidInputError(f"a form must be sent as {_URLENCODED}")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"the form cannot be read: {exc}") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields
