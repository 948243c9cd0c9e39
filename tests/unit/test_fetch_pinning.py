"""SSRF guard, DNS rebinding: the connection goes to the address that was checked, whatever the name
resolves to afterwards, and https keeps the name for SNI and certificate checks.

The resolver is the `dns` fixture's (public first, private on every later lookup). The "network" maps the
public address to a server on loopback: the test sees which address the client connected to, and the
server sees the SNI, the Host header and the handshake's outcome. The https servers hold certificates of
a CA made here, which the fetch trusts through certifi (the bundle httpx verifies against).
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import itertools
import ssl
import threading
import time

import pytest

from services.runtime.edge import fetch
from services.runtime.core.errors import UpstreamError
from services.runtime.core.settings import Settings
from tests.unit.test_fetch_guard import dns  # noqa: F401 - the fixture

PUBLIC = "93.184.216.34"
PRIVATE = "10.0.0.7"
NAME = "media.rebind.test"


def rebinding(dns) -> None:  # noqa: F811 - the fixture's table
    dns[NAME] = itertools.chain([[PUBLIC]], itertools.repeat([PRIVATE]))


@pytest.fixture
def network(monkeypatch):
    """Every TCP connection httpx opens (anyio.connect_tcp) is recorded; PUBLIC is routed to loopback,
    any other address is unreachable at once."""
    import anyio

    real = anyio.connect_tcp
    connections: list[tuple[str, int]] = []

    async def connect_tcp(remote_host, remote_port, **kw):
        connections.append((str(remote_host), int(remote_port)))
        if str(remote_host) != PUBLIC:
            raise OSError(f"test network: no route to {remote_host}")
        return await real("127.0.0.1", remote_port, **kw)

    monkeypatch.setattr(anyio, "connect_tcp", connect_tcp)
    return connections


class Server(http.server.ThreadingHTTPServer):
    """A loopback HTTP server (TLS when given a context) recording Host headers, SNI and handshakes."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.hosts: list[str] = []
        self.sni: list[str | None] = []
        self.handshakes: list[str] = []
        self.tls = tls
        if tls is not None:
            tls.sni_callback = lambda sslobj, name, ctx: self.sni.append(name)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hosts.append(self.headers["Host"])
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"pinned")

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def process_request_thread(self, request, client_address):
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                self.handshakes.append(getattr(exc, "reason", None) or type(exc).__name__)
                request.close()
                return
            self.handshakes.append("ok")
        super().process_request_thread(request, client_address)


def fetched(url: str) -> bytes:
    return asyncio.run(fetch.fetch_bytes(url, Settings(), max_bytes=1000, param="audio_url"))


def test_http_connects_to_the_checked_address_though_the_name_now_resolves_private(dns, network):  # noqa: F811
    rebinding(dns)
    server = Server()
    try:
        assert fetched(f"http://{NAME}:{server.port}/song.mp3") == b"pinned"
    finally:
        server.shutdown()
    assert dns.lookups == [NAME]  # resolved once, by the guard; never again by the client
    assert network == [(PUBLIC, server.port)]
    assert server.hosts == [f"{NAME}:{server.port}"]  # the name still reaches the server
    # What the client would have reached by resolving again:
    assert next(dns[NAME]) == [PRIVATE]


# -- https: SNI and certificate checks with the pinned address ---------------------------------------------
def _certificates(tmp_path):
    """PEM files: a CA the fetch trusts, leaf certificates it signed for NAME and for another name, and one
    for NAME signed by a CA nobody trusts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, *, ca: bool):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        else:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    def write(name: str, certificate, key=None):
        path = tmp_path / f"{name}.pem"
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        if key is not None:
            pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        path.write_bytes(pem)
        return path

    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    paths = {"ca": write("ca", cert("Test CA", ca_key, "Test CA", ca_key, ca=True))}
    for label, subject, issuer, issuer_key in (("right", NAME, "Test CA", ca_key),
                                               ("other_name", "other.rebind.test", "Test CA", ca_key),
                                               ("untrusted", NAME, "Rogue CA", rogue_key)):
        key = ec.generate_private_key(ec.SECP256R1())
        paths[label] = write(label, cert(subject, key, issuer, issuer_key, ca=False), key)
    return paths


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """Factory: a TLS server presenting the certificate `label`; the fetch trusts the test CA only."""
    import certifi

    paths = _certificates(tmp_path)
    monkeypatch.setattr(certifi, "where", lambda: str(paths["ca"]))
    servers = []

    def make(label: str) -> Server:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(paths[label])
        servers.append(Server(ctx))
        return servers[-1]

    yield make
    for s in servers:
        s.shutdown()


def test_https_to_the_pinned_address_sends_the_name_for_sni_and_verifies_it(dns, network, tls_server):  # noqa: F811
    rebinding(dns)
    server = tls_server("right")
    assert fetched(f"https://{NAME}:{server.port}/song.mp3") == b"pinned"
    assert network == [(PUBLIC, server.port)] and dns.lookups == [NAME]
    assert server.sni == [NAME] and server.handshakes == ["ok"]  # the name, not the IP, in the handshake
    assert server.hosts == [f"{NAME}:{server.port}"]


@pytest.mark.parametrize("label", ["other_name", "untrusted"])
def test_https_refuses_a_certificate_not_valid_for_the_name(dns, network, tls_server, label):  # noqa: F811
    """The same server and path as above, with a certificate for another name, or for the name from a CA
    the fetch does not trust: the handshake is refused, no request is sent."""
    rebinding(dns)
    server = tls_server(label)
    with pytest.raises(UpstreamError) as e:
        fetched(f"https://{NAME}:{server.port}/song.mp3")
    assert e.value.status == 502 and e.value.param == "audio_url"
    assert network == [(PUBLIC, server.port)] and server.sni == [NAME]
    # The server's thread records its side of the refused handshake after the client has given up: wait for it.
    deadline = time.monotonic() + 10
    while not server.handshakes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.handshakes and server.handshakes[0] != "ok" and server.hosts == [], server.handshakes
