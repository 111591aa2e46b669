"""One-line errors for what an object store's client says about the URL, the credentials and
the endpoint (each client's errors are matched here, by name and text)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from cld_lake.errors import BadInputError, CldLakeError


@contextlib.contextmanager
def remote_errors(url: str, scheme: str, bucket: str) -> Iterator[None]:
    """Turn the object store client's errors about ``url``'s bucket, credentials and endpoint
    into one-line :class:`BadInputError` naming what to set; others pass unchanged."""
    try:
        yield
    except CldLakeError:
        raise
    except Exception as exc:
        message = remote_problem(url, scheme, bucket, exc)
        if message is None:
            raise
        raise BadInputError(message) from exc


def remote_problem(url: str, scheme: str, bucket: str, exc: BaseException) -> str | None:
    """The one line for ``exc``, raised by the client of ``url``; None when it is not about
    the URL, credentials or endpoint."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())[:200]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if name in ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError") or (
        "credentials" in text.lower() and "could not" in text.lower()
    ):
        return (
            f"{url}: no credentials for {scheme}://; set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            if scheme == "s3"
            else f"{url}: no credentials; set GOOGLE_APPLICATION_CREDENTIALS"
        )
    if isinstance(exc, ValueError) and "Invalid endpoint" in text:
        return (
            f"{url}: {text}; set AWS_ENDPOINT_URL to the store's http(s)://HOST[:PORT] "
            f"(or unset it for AWS)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or (
        "connect" in text.lower() and ("endpoint" in text.lower() or "timeout" in text.lower())
    ):
        where = endpoint or "the default endpoint"
        return f"{url}: cannot reach {where} ({text}); check AWS_ENDPOINT_URL and the network"
    if name in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or any(
        k in text for k in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied")
    ):
        return f"{url}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, PermissionError):
        return f"{url}: access denied ({text}); check the credentials"
    if name == "NoSuchBucket" or "bucket does not exist" in text.lower():
        return f"{url}: bucket {bucket!r} does not exist; create it first or fix the URL"
    return None
