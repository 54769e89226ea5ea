"""An https webhook: sent to the address the egress policy checked, with the URL's host name
as SNI (so the certificate is verified against the name, not the address), and a certificate
that does not verify fails the attempt (logged, retried), never sends the event."""

from __future__ import annotations

import dataclasses
import datetime
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from tidegate.api.app import create_app
from tidegate.notifications.delivery import Policy, run_once


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_https_uses_the_host_name_for_sni_and_verifies_the_certificate(tmp_path, loopback_settings, org, client_ip):
    cert_file, key_file = self_signed(tmp_path)
    server_names, bodies = [], []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    # Listen where tidegate will send: the first address "localhost" resolves to (v4 or v6).
    address = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0][4][0]

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = Server((address, 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    settings = dataclasses.replace(
        loopback_settings, data=dataclasses.replace(loopback_settings.data, connector_allow="127.0.0.1,localhost")
    )
    try:
        with TestClient(create_app(settings), client=(client_ip, 1)) as api:
            hook = api.post(
                "/api/v1/org/webhooks",
                headers=org.headers(),
                json={"url": f"https://localhost:{port}/hook", "events": ["api_key.leak_reported"]},
            ).json()
            key = org.key_for(org.admin_id, ["data:read"])
            api.post("/api/v1/keys/leaks", json=[{"token": key}])
            run_once(settings.database_url, settings.session_key, Policy(retry_base_seconds=60))
            (logged,) = api.get(f"/api/v1/org/webhooks/{hook['id']}/deliveries", headers=org.headers()).json()["data"]
    finally:
        server.shutdown()
        server.server_close()
    assert server_names and set(server_names) == {"localhost"}  # SNI: the name, though sent to the address
    assert bodies == []  # a certificate no trusted CA signed: nothing is sent
    assert logged["status"] == "pending" and "could not deliver" in logged["last_error"]
