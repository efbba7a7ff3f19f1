"""S3Store: the Store protocol over an S3-compatible bucket through boto3, with user-facing errors."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

from sdbatch.errors import ObjectNotFound, StoreError, StoreUnavailable, UsageError
from sdbatch.logs import hold_at_least
from sdbatch.settings import S3Settings
from sdbatch.store.base import (
    PROBE_DIR,
    PutResult,
    Store,
    check_key,
    check_prefix,
    resolve_endpoint,
)


# Internal refinements of StoreError that S3Store acts on before they reach users.
class _Exists(StoreError): ...  # create-only PUT refused (412): the key is taken
class _Busy(StoreError): ...  # create-only PUT refused (409): a competing one is in flight
class _Denied(StoreError): ...  # bad credentials or missing permission



# Codes meaning "who you are or what you may do", across AWS and S3 clones.
_AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "InvalidClientTokenId", "403", "Forbidden",
}
# Codes of an overloaded or failing service: botocore retried them already; a later try may succeed.
_SERVER_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
                 "ThrottlingException", "RequestLimitExceeded", "500", "502", "503", "504"}
# Codes AWS gives when requests are signed for, or sent to, the wrong region.
_REGION_CODES = {"PermanentRedirect", "301", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


_S3 = "s3://"


def open_store(uri: str, settings: S3Settings | None = None) -> S3Store:
    return S3Store(uri, settings)


def split(uri: str) -> tuple[str, str]:
    """(the bucket's URI, the key in it)."""
    bucket, _, key = uri[len(_S3):].partition("/")
    return f"{_S3}{bucket}", key


def read(uri: str, reader) -> bytes:
    store, key = reader.store_of(uri)
    return store.get(key)


def _quiet_sdk_loggers() -> None:
    # SDK DEBUG output includes access key ids and signatures.
    hold_at_least(logging.WARNING, "botocore", "boto3", "urllib3", "s3transfer")


def _redact_url(url: str | None) -> str:
    # An endpoint may be written http://user:pass@host; never echo the userinfo.
    if not url:
        return "the default AWS S3 endpoint"
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


class S3Store(Store):
    def __init__(self, uri: str, settings: S3Settings | None = None) -> None:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise UsageError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")
        if self.prefix:
            try:
                check_key(self.prefix)
            except UsageError as exc:
                raise UsageError(f"{uri!r} is not a usable S3 URI: {exc}") from exc
        self.uri = f"{_S3}{self.bucket}/{self.prefix}" if self.prefix else f"{_S3}{self.bucket}"
        self.settings = settings or S3Settings()
        self._client_obj = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Clients hold sockets and locks; each process (e.g. a Ray actor) builds its own.
        state = dict(self.__dict__, _client_obj=None)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        client = self._client_obj  # knows endpoints that boto3 took from env or config files
        return _redact_url(client.meta.endpoint_url if client else resolve_endpoint(self.settings.endpoint_url))

    def url_for(self, key: str) -> str:
        return f"{self.uri}/{check_key(key)}"

    def browser_url(self, key: str, expires: int, content_type: str | None = None) -> str:
        return self.presign(key, expires, content_type)

    def local_folder(self) -> str | None:
        return None

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)

    def arrow_filesystem(self):
        """pyarrow's own S3 client on the same endpoint and region, for lazy datasets. Credentials: its
        default chain (environment, profile, instance role), never held on the filesystem object."""
        import pyarrow.fs

        options: dict = {"region": self._region()}
        endpoint = resolve_endpoint(self.settings.endpoint_url)
        if endpoint:
            parts = urlsplit(endpoint)
            options.update(endpoint_override=parts.netloc.rsplit("@", 1)[-1], scheme=parts.scheme or "https")
        root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return pyarrow.fs.S3FileSystem(**options), root

    def _make_client(self, connect_timeout: float, read_timeout: float, attempts: int):
        import boto3
        from botocore.config import Config

        _quiet_sdk_loggers()
        s = self.settings
        config = Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            s3={"addressing_style": "path"},  # works with every S3 clone and dotted bucket names
            # botocore's newer default checksums are rejected by several S3 clones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=s.max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        # Credentials come only from the default chain, so they never sit on self.
        session = boto3.session.Session(region_name=self._region())
        return session.client("s3", endpoint_url=s.endpoint_url, config=config)

    def _region(self) -> str:
        env = os.environ
        return self.settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def _client(self):
        if self._client_obj is None:
            with self._lock:  # one client per Store, shared (thread-safely) by upload threads
                if self._client_obj is None:
                    s = self.settings
                    self._client_obj = self._make_client(s.connect_timeout, s.read_timeout, s.max_attempts)
        return self._client_obj

    def _call(self, action: str, key: str | None, method: str, client=None, **kwargs):
        if key is not None:
            kwargs["Key"] = self._full(key)
        with self._translated(action, key):
            return getattr(client or self._client(), method)(Bucket=self.bucket, **kwargs)

    @contextlib.contextmanager
    def _translated(self, action: str, key: str | None):
        from botocore import exceptions as bex

        try:
            yield
        except (bex.ClientError, bex.BotoCoreError) as e:
            raise self._translate(e, action, key) from e

    def _translate(self, e: Exception, action: str, key: str | None) -> StoreError:
        from botocore import exceptions as bex

        where = self.url_for(key) if key else self.uri
        if isinstance(e, (bex.NoCredentialsError, bex.PartialCredentialsError, bex.CredentialRetrievalError)):
            return StoreError(f"no usable AWS credentials for {where}; set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        if isinstance(e, (bex.ConnectionError, bex.HTTPClientError)):
            return StoreUnavailable(f"cannot reach S3 endpoint {self.endpoint} ({_why_unreachable(e)}); "
                                    "check --s3-endpoint / AWS_ENDPOINT_URL")
        if not isinstance(e, bex.ClientError):  # read timeouts, streams cut mid-body, ...
            return StoreUnavailable(f"S3 {action} of {where} failed: {type(e).__name__}: {e}")
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None):
            return StoreError(f"bucket '{self.bucket}' does not exist at {self.endpoint}; create it first")
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFound(f"{where} does not exist")
        if code in ("PreconditionFailed", "412"):
            return _Exists(f"{where} already exists")
        if code in ("ConditionalRequestConflict", "409"):
            return _Busy(f"{where} is being written concurrently")
        if code in _REGION_CODES:
            return StoreError(f"bucket '{self.bucket}' at {self.endpoint} is not in region {self._region()} ({code}); "
                              "set AWS_REGION to the bucket's region")
        if code in _AUTH_CODES:
            return _Denied(f"access denied ({code}) trying to {action} {where} at {self.endpoint}; check AWS "
                           f"credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and their rights on bucket '{self.bucket}'")
        message = e.response.get("Error", {}).get("Message", "")
        kind = StoreUnavailable if code in _SERVER_CODES else StoreError
        return kind(f"S3 {action} of {where} failed at {self.endpoint}: {code} {message}".rstrip())

    def put(self, key: str, data: bytes) -> None:
        self._call("write", key, "put_object", Body=data)

    def put_once(self, key: str, data: bytes) -> PutResult:
        for attempt in range(5):
            try:
                self._call("write", key, "put_object", Body=data, IfNoneMatch="*")
                return PutResult.CREATED
            except _Busy:  # AWS answers 409 while a competing conditional write is in flight
                time.sleep(0.05 * 2**attempt)
            except _Exists:  # includes our own retried PUT whose first answer was lost
                try:
                    return PutResult.IDENTICAL if self._holds(key, data) else PutResult.CONFLICT
                except ObjectNotFound:
                    pass  # deleted between our PUT and our look; try creating again
        raise StoreError(f"could not create {self.url_for(key)}: concurrent writers keep changing it")

    def _holds(self, key: str, data: bytes) -> bool:
        head = self._call("read", key, "head_object")
        if head.get("ContentLength", len(data)) != len(data):
            return False
        # A plain md5 ETag settles it without a download; multipart or SSE-KMS ETags do not.
        etag = str(head.get("ETag", "")).strip('"')
        if re.fullmatch(r"[0-9a-f]{32}", etag) and etag == hashlib.md5(data).hexdigest():
            return True
        return self.get(key) == data

    def get(self, key: str) -> bytes:
        return self._read_body(key)

    def read_range(self, key: str, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""  # S3 answers an empty range with an error, not with nothing
        return self._read_body(key, Range=f"bytes={start}-{stop - 1}")

    def size(self, key: str) -> int:
        return int(self._call("read", key, "head_object")["ContentLength"])

    def _read_body(self, key: str, **kwargs) -> bytes:
        # botocore retries a request that fails before its answer; a body cut mid-stream is retried here.
        attempt = 1
        while True:
            body = self._call("read", key, "get_object", **kwargs)["Body"]
            try:
                with self._translated("read", key):
                    return body.read()
            except StoreUnavailable:
                if attempt >= self.settings.max_attempts:
                    raise
                time.sleep(min(2.0, 0.1 * 2**attempt))
                attempt += 1

    def exists(self, key: str) -> bool:
        try:
            self._call("read", key, "head_object")
            return True
        except ObjectNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._objects(prefix))

    def tags(self, prefix: str = "") -> dict[str, str]:
        objects = sorted(self._objects(prefix).items())
        return {key: f"{obj.get('ETag', '')}:{obj.get('Size', '')}" for key, obj in objects}

    def _objects(self, prefix: str) -> dict[str, dict]:
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client().get_paginator("list_objects_v2")
        with self._translated("list", None):
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=root + check_prefix(prefix)))
        objects = (obj for page in pages for obj in page.get("Contents", []))
        # Keys ending in '/' are "folder" markers made by consoles, not objects.
        return {obj["Key"][len(root):]: obj for obj in objects if not obj["Key"].endswith("/")}

    def download(self, key: str, path: str) -> None:
        self._transfer("read", key, "download_file", self.bucket, self._full(key), path)

    def upload(self, path: str, key: str) -> None:
        self._transfer("write", key, "upload_file", path, self.bucket, self._full(key))

    def _transfer(self, action: str, key: str, method: str, *args) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore import exceptions as bex

        # Parts in parallel: one stream of a multi-GB file is slow, and a reset mid-way costs one part, not
        # the whole file (s3transfer retries parts and pins downloads to the first ETag).
        config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20,
                                max_concurrency=min(8, self.settings.max_pool_connections))
        with self._translated(action, key):
            try:
                getattr(self._client(), method)(*args, Config=config)
            except (bex.ClientError, bex.BotoCoreError):
                raise
            except Exception as e:  # s3transfer's own failures (retries exhausted, ...) are not botocore's
                raise StoreUnavailable(f"S3 transfer of {self.url_for(key)} failed: {type(e).__name__}: {e}") from e

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete_object")

    def check_writable(self) -> None:
        # A short-fused client: a dead endpoint must fail in seconds, not after
        # max_attempts * (connect_timeout + backoff).
        probe = self._make_client(min(self.settings.connect_timeout, 3.0), 5.0, 2)
        try:
            self._call("check", None, "head_bucket", client=probe)
        except _Denied:
            pass  # may only lack the ListBucket right; the probe PUT decides
        key = f"{PROBE_DIR}/{uuid.uuid4().hex}"
        self._call("write", key, "put_object", client=probe, Body=b"probe")
        self._call("delete", key, "delete_object", client=probe)

    def presign(self, key: str, expires: int, content_type: str | None = None) -> str:
        """A GET URL for key that needs no credentials for `expires` seconds (SigV4 allows 7 days at most;
        temporary credentials end it sooner). content_type sets the response's Content-Type, so a browser
        shows an object that was stored without one instead of downloading it."""
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        if content_type:
            params["ResponseContentType"] = content_type
        with self._translated("presign", key):  # signing is local, but finding credentials can fail
            signer = _presigner(self.settings.endpoint_url, self._region())
            return signer.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)


@functools.lru_cache(maxsize=8)
def _presigner(endpoint_url: str | None, region: str):
    """A client that only signs URLs, with SigV4: botocore presigns with SigV2 by default, which newer AWS
    regions refuse and which would not bound the lifetime. Cached: a gallery signs thousands of URLs."""
    import boto3
    from botocore.config import Config

    _quiet_sdk_loggers()
    config = Config(signature_version="s3v4", s3={"addressing_style": "path"})
    return boto3.session.Session(region_name=region).client("s3", endpoint_url=endpoint_url, config=config)


def _why_unreachable(e: Exception) -> str:
    from botocore import exceptions as bex

    if isinstance(e, bex.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(e, bex.ReadTimeoutError):
        return "no response before the read timeout"
    if isinstance(e, bex.SSLError):
        return "TLS handshake failed"
    detail = str(e.kwargs.get("error", e)).lower()
    if "refused" in detail:
        return "connection refused"
    unresolved = ("name or service not known", "name resolution", "nodename nor servname", "getaddrinfo")
    if any(s in detail for s in unresolved):
        return "host name does not resolve"
    return "connection failed"
