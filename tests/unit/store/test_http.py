"""The http(s):// scheme: whole objects read from a real local HTTP server, never opened as a store."""

from __future__ import annotations

import functools
import http.server
import threading
import urllib.error

import pytest

from sdbatch.store import Reader, open_store


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on a free port; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_object_is_read_whole_and_a_missing_one_is_an_http_error(served):
    folder, url = served
    (folder / "init.png").write_bytes(b"\x89PNG pixels")
    assert Reader(timeout=5).read(f"{url}/init.png") == b"\x89PNG pixels"
    with pytest.raises(urllib.error.HTTPError) as info:
        Reader(timeout=5).read(f"{url}/absent.png")
    assert info.value.code == 404


def test_an_http_url_is_not_a_store(served):
    _, url = served
    with pytest.raises(ValueError, match="unsupported storage URI"):
        open_store(f"{url}/run")
    with pytest.raises(ValueError, match="unsupported storage URI"):
        Reader().store_of(f"{url}/init.png")
