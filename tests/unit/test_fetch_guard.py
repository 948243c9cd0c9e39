"""SSRF guard: every address class, encodings of loopback, allowlist, redirects to private addresses."""

import asyncio
import http.server
import ipaddress
import threading

import pytest

from services.runtime import fetch
from services.runtime.errors import InvalidRequest, PayloadTooLarge, UpstreamError
from services.runtime.settings import Settings


@pytest.mark.parametrize("addr, refused", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("100.64.0.1", "CGNAT"),
    ("fc00::1", "private"), ("fd00:ec2::254", "private"), ("0.0.0.0", ""), ("224.0.0.1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("2002:7f00:1::", "loopback"),
    ("64:ff9b::a00:1", "private"), ("240.0.0.1", ""), ("198.18.0.1", ""),
])
def test_refused_address_classes(addr, refused):
    why = fetch.address_refusal(ipaddress.ip_address(addr))
    assert why is not None
    assert refused.lower() in why.lower() or refused == ""


@pytest.mark.parametrize("addr", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(addr):
    assert fetch.address_refusal(ipaddress.ip_address(addr)) is None


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://localhost/x", "http://2130706433/x", "http://0x7f000001/x",
    "http://0177.0.0.1/x", "http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "http://169.254.169.254/latest/",
    "http://10.0.0.1/x", "http://192.168.0.1:8080/x",
])
def test_check_url_refuses_private_targets_in_any_spelling(url):
    with pytest.raises(InvalidRequest) as e:
        run(fetch.check_url(url, Settings(), "audio_url"))
    assert e.value.code in ("url_refused", "host_not_found") and e.value.status == 400
    assert e.value.param == "audio_url"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a", "gopher://x/", "javascript:alert(1)",
                                 "http://user:pw@example.com/a", "http:///nohost"])
def test_check_url_refuses_other_schemes_and_credentials(url):
    with pytest.raises(InvalidRequest):
        run(fetch.check_url(url, Settings(), "audio_url"))


def test_allowlist_admits_a_named_private_host():
    s = Settings(fetch_private_allowlist=["127.0.0.1"])
    target = run(fetch.check_url("http://127.0.0.1:8000/a.wav", s, "u"))
    assert str(target.ip) == "127.0.0.1" and target.port == 8000
    with pytest.raises(InvalidRequest):
        run(fetch.check_url("http://10.0.0.1/a.wav", s, "u"))


@pytest.fixture(scope="module")
def local_server():
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/redirect-private":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            elif self.path == "/redirect-ok":
                self.send_response(302)
                self.send_header("Location", "/data")
                self.end_headers()
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()  # no content-length: the cap is enforced while streaming
                self.wfile.write(b"x" * 5000)
            elif self.path == "/data":
                body = b"hello"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def fetch_local(url, **kw):
    s = Settings(fetch_private_allowlist=["127.0.0.1"], **kw)
    return run(fetch.fetch_bytes(url, s, max_bytes=1000, param="audio_url"))


def test_fetch_follows_a_redirect_and_reads_the_body(local_server):
    assert fetch_local(local_server + "/redirect-ok") == b"hello"


def test_redirect_to_metadata_address_is_refused(local_server):
    with pytest.raises(InvalidRequest, match="link-local"):
        fetch_local(local_server + "/redirect-private")


def test_redirect_loop_is_bounded(local_server):
    with pytest.raises(UpstreamError, match="redirects"):
        fetch_local(local_server + "/loop", fetch_max_redirects=3)


def test_size_cap_enforced_while_streaming(local_server):
    with pytest.raises(PayloadTooLarge):
        fetch_local(local_server + "/big")


def test_upstream_404_is_a_client_error_naming_the_status(local_server):
    with pytest.raises(InvalidRequest, match="404"):
        fetch_local(local_server + "/missing")


def test_unreachable_host_is_502():
    s = Settings(fetch_private_allowlist=["127.0.0.1"], fetch_timeout=3)
    with pytest.raises(UpstreamError):
        run(fetch.fetch_bytes("http://127.0.0.1:9/x", s, max_bytes=10, param="audio_url"))


def test_s3_endpoint_down_is_502():
    from tests.served_session import free_port

    s = Settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}", s3_access_key_id="k",
                 s3_secret_access_key="s", s3_region="us-east-1", fetch_timeout=3)
    with pytest.raises(UpstreamError) as e:
        run(fetch.fetch_bytes("s3://bucket/song.mp3", s, max_bytes=100, param="audio_url"))
    assert e.value.status == 502 and e.value.code == "s3_unreachable" and e.value.param == "audio_url"


def test_s3_url_needs_bucket_and_key():
    with pytest.raises(InvalidRequest):
        run(fetch.fetch_bytes("s3://bucket-only", Settings(), max_bytes=100, param="audio_url"))
