"""SSRF guard: every address class, encodings of loopback, allowlist, redirects to private addresses."""

import asyncio
import http.server
import ipaddress
import socket
import threading
import time

import pytest

from services.runtime.edge import fetch
from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, Timeout, UpstreamError
from services.runtime.core.settings import Settings


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


STALL_SECONDS = 8


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
            elif self.path.startswith("/redirect-to/"):
                self.send_response(302)
                self.send_header("Location", self.path[len("/redirect-to/"):])
                self.end_headers()
            elif self.path == "/stall":  # headers, then nothing
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self.wfile.flush()
                time.sleep(STALL_SECONDS)
            elif self.path == "/trickle":  # a byte every 0.25 s: each read is quick, the whole is not
                self.send_response(200)
                self.end_headers()
                try:
                    for _ in range(40):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.25)
                except OSError:
                    pass
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


# A private target must be refused whatever leads there: a name the resolver maps to it, or a redirect.
PRIVATE_TARGETS = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                   "::1", "fc00::1", "fd00:ec2::254", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "fe80::1"]


class DNS(dict):
    """name -> its addresses, or an iterator giving the answer of each lookup in turn (a rebinding
    resolver); `lookups` lists every name asked for, in order."""

    def __init__(self):
        super().__init__()
        self.lookups: list[str] = []


@pytest.fixture
def dns(monkeypatch):
    """The system resolver, answering for names under .test as the table says (everything else as usual):
    the guard's own resolution path runs, only the DNS answer is chosen by the test."""
    table = DNS()
    real = socket.getaddrinfo

    def fake(host, port, *a, **kw):
        if isinstance(host, str) and host in table:
            table.lookups.append(host)
            answer = table[host]
            out = []
            for ip in answer if isinstance(answer, list) else next(answer):
                fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
                out.append((fam, socket.SOCK_STREAM, 6, "", (ip, port or 0, 0, 0) if fam == socket.AF_INET6
                            else (ip, port or 0)))
            return out
        return real(host, port, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


@pytest.mark.parametrize("ip", PRIVATE_TARGETS)
def test_dns_names_resolving_to_private_addresses_are_refused(dns, ip):
    dns["media.attacker.test"] = [ip]
    with pytest.raises(InvalidRequest) as e:
        run(fetch.check_url("http://media.attacker.test/a.mp3", Settings(), "audio_url"))
    assert e.value.code == "url_refused" and "media.attacker.test" in e.value.message


def test_a_name_with_one_private_address_among_public_ones_is_refused(dns):
    dns["mixed.attacker.test"] = ["93.184.216.34", "10.0.0.5"]  # a round-robin answer hiding a private one
    with pytest.raises(InvalidRequest, match="private"):
        run(fetch.check_url("http://mixed.attacker.test/a.mp3", Settings(), "audio_url"))


def test_a_public_name_is_pinned_to_the_address_that_was_checked(dns):
    dns["cdn.example.test"] = ["93.184.216.34"]
    t = run(fetch.check_url("https://cdn.example.test/a.mp3", Settings(), "audio_url"))
    assert str(t.ip) == "93.184.216.34" and t.host == "cdn.example.test" and t.port == 443


@pytest.mark.parametrize("location", [f"http://{ip}/x" if ":" not in ip else f"http://[{ip}]/x"
                                      for ip in PRIVATE_TARGETS if ip != "127.0.0.1"]
                         + ["http://2130706434/x", "http://0177.0.0.2/x", "http://0x7f.2/x", "file:///etc/passwd",
                            "http://internal.attacker.test/x"])
def test_redirects_to_private_targets_are_refused(local_server, dns, location):
    """The local server itself is allowlisted (127.0.0.1, in any spelling); where it redirects to is checked
    afresh, so 127.0.0.2 spelled in decimal, octal or hex is refused."""
    dns["internal.attacker.test"] = ["10.9.8.7"]
    if "0177." in location:  # httpx refuses an octal IPv4 Location itself: a bad redirect, upstream's fault
        with pytest.raises(UpstreamError, match="Invalid IPv4 address"):
            fetch_local(local_server + "/redirect-to/" + location)
        return
    with pytest.raises(InvalidRequest) as e:
        fetch_local(local_server + "/redirect-to/" + location)
    assert e.value.code in ("url_refused", "host_not_found")


def test_a_server_that_stalls_is_a_504_within_the_deadline(local_server):
    t0 = time.monotonic()
    with pytest.raises(Timeout) as e:
        fetch_local(local_server + "/stall", fetch_timeout=1)
    assert e.value.status == 504 and e.value.code == "fetch_timeout" and e.value.param == "audio_url"
    assert time.monotonic() - t0 < STALL_SECONDS / 2  # the 1 s deadline, not the server, ends the wait


def test_a_body_trickled_slower_than_the_deadline_is_a_504(local_server):
    """Each byte arrives well inside the per-read timeout; the whole-fetch deadline still holds."""
    with pytest.raises(Timeout) as e:
        fetch_local(local_server + "/trickle", fetch_timeout=1.5)
    assert e.value.status == 504 and e.value.code == "fetch_timeout"
