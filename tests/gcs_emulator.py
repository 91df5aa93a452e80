"""A local Google Cloud Storage endpoint for tests: `gcp-storage-emulator` behind a proxy.

Run as a process: `python tests/gcs_emulator.py --port P --root DIR --bucket B`. It writes
`DIR/ca.pem` and prints `ready PORT` when it serves.

Clients reach it three ways, each the client library's own:
  * gcsfs / google-cloud-storage: STORAGE_EMULATOR_HOST=http://127.0.0.1:P
  * tensorstore (Orbax's array writer): TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:P
  * TensorFlow's C++ GCS filesystem (tf.io.gfile, tf.data, tf.summary, TFDS, and etils
    `epath` when TensorFlow is installed) has no endpoint setting: it always calls
    https://www.googleapis.com and https://storage.googleapis.com. It does honour
    `https_proxy`/`http_proxy` and `CURL_CA_BUNDLE` (libcurl), so this server is also an
    HTTP proxy: a CONNECT to those hosts is answered with TLS under a certificate signed by
    a CA made here (`DIR/ca.pem`), and the requests inside are served by the emulator;
    absolute-form `http://host/...` requests (the emulator's resumable-upload URLs) too.
Tokens: GOOGLE_AUTH_TOKEN_FOR_TESTING=any (TensorFlow and tensorstore send it as is).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import re
import ssl
import sys
import threading
import time
from http import server
from urllib.parse import urlsplit

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def make_certificates(directory: str) -> tuple[str, str, str]:
    """A CA and a server certificate for GOOGLE_HOSTS; returns (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test GCS CA")).issuer_name(name("test GCS CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(GOOGLE_HOSTS[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    pem = serialization.Encoding.PEM
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def make_handler(storage, tls: ssl.SSLContext, lock: threading.Lock, verbose: bool = False):
    from gcp_storage_emulator import server as emu

    class Handler(emu.RequestHandler):
        # HTTP/1.0 replies (the emulator's default) close the connection after each one.
        def parse_request(self):
            if not super().parse_request():
                return False
            if self.command != "CONNECT" and "://" in self.path:   # proxy form → origin form
                parts = urlsplit(self.path)
                self.path = parts.path + (f"?{parts.query}" if parts.query else "")
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; the emulator
                # reads Content-Length first (TensorFlow's uploads send both).
                del self.headers["Content-Length"]
            if self.headers.get("Expect", "").lower() == "100-continue":
                # libcurl waits 1 s for this before sending a body; HTTP/1.0 servers never
                # send it.
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.wfile.flush()
            return True

        def do_CONNECT(self):
            host = self.path.rsplit(":", 1)[0]
            if host not in GOOGLE_HOSTS:
                self.send_error(403, f"this test proxy only serves {GOOGLE_HOSTS}")
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            conn = tls.wrap_socket(self.connection, server_side=True)
            self.connection = conn
            self.rfile = conn.makefile("rb", self.rbufsize)
            self.wfile = server.socketserver._SocketWriter(conn)
            self.close_connection = False   # serve the request(s) inside the tunnel

        def finish(self):
            super().finish()
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.close()

        def _locked(method):
            def run(self):
                with lock:
                    getattr(emu.RequestHandler, method)(self)
            return run

        def do_GET(self):
            m = re.fullmatch(r"/storage/v1/b/([^/?]+)/storageLayout(\?.*)?", self.path)
            if m:   # not in the emulator; TensorFlow asks it before renaming a directory
                body = json.dumps({"kind": "storage#storageLayout", "bucket": m.group(1),
                                   "location": "US", "locationType": "multi-region",
                                   "hierarchicalNamespace": {"enabled": False}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            with lock:
                emu.RequestHandler.do_GET(self)

        do_POST = _locked("do_POST")
        do_PUT = _locked("do_PUT")
        do_PATCH = _locked("do_PATCH")
        do_DELETE = _locked("do_DELETE")

        def do_HEAD(self):
            self.send_error(501)

        def log_message(self, format, *args):
            if verbose:
                print(f"{time.monotonic():.3f} " + format % args, file=sys.stderr, flush=True)

    return functools.partial(Handler, storage)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--root", required=True, help="the certificates go here")
    p.add_argument("--bucket", action="append", default=[])
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)
    from gcp_storage_emulator.handlers import buckets, objects
    from gcp_storage_emulator.storage import Storage

    media_upload = objects._media_upload

    def media_upload_allowing_empty(request, response, storage):
        # The emulator reads an empty body as None and fails on len(None); TensorFlow writes
        # empty objects (`dir/` markers, empty files) this way.
        if request.data is None:
            request._data = b""
        return media_upload(request, response, storage)

    objects._media_upload = media_upload_allowing_empty

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        # GCS sends the object's generation with its bytes; tensorstore (Orbax) needs it.
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
        except Exception:       # a missing object: the emulator answers 404 itself
            pass
        return download(request, response, storage, *args, **kwargs)

    objects.download = download_with_generation     # `objects.get` (?alt=media) calls this

    os.makedirs(args.root, exist_ok=True)
    _, cert, key = make_certificates(args.root)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    class FlatStorage(Storage):
        # The emulator stores object `a/b` as file `a/b`, so objects `a/` (a directory marker,
        # as TensorFlow writes them) and `a/b` cannot both exist; store each under a hash.
        def _object_path(self, bucket_name, file_name):
            return f"{bucket_name}/{hashlib.sha256(file_name.encode()).hexdigest()}"

    storage = FlatStorage(use_memory_fs=True)
    for b in args.bucket:
        buckets.create_bucket(b, storage)
    httpd = server.ThreadingHTTPServer(("127.0.0.1", args.port),
                                       make_handler(storage, tls, threading.Lock(), args.verbose))
    httpd.daemon_threads = True
    print(f"ready {httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
