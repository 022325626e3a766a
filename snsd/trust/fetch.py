"""One bounded GET, shared by the certificate store and the subscription confirmer."""

from __future__ import annotations

import treq


class FetchFailed(Exception):
    """The answer was not a 200 or was larger than allowed."""


async def get_bounded(http_client, url: str, max_bytes: int, what: str = "answer") -> bytes:
    """GET ``url`` without following redirects and return at most ``max_bytes`` of body.

    No redirects: a redirect could send the request off the trusted host.  The body is
    streamed (``unbuffered=True``) so an oversized answer is cut off, not held in memory,
    and read even on an error status so the connection is reused or closed, not left
    holding an unread body.
    """
    response = await http_client.get(url, allow_redirects=False, unbuffered=True)
    size = 0
    chunks: list[bytes] = []

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_bytes:
            raise FetchFailed(f"{what} is larger than {max_bytes} bytes")
        chunks.append(data)

    await treq.collect(response, collect)
    if response.code != 200:
        raise FetchFailed(f"HTTP {response.code}")
    return b"".join(chunks)
