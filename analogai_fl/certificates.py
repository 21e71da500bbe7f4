"""Certificates and keys for a secured Flower federation (Deployment Engine), made with the
`cryptography` package that Flower itself depends on.

    python -m analogai_fl.certificates --out certs --hosts superlink.example.org,10.0.0.5 \\
        --supernodes 2

writes into `--out`:
- `ca.crt`, `ca.key`: a self-signed certificate authority (keep `ca.key` off the federation;
  `ca.crt` goes to every SuperNode as `--root-certificates` and to the `flwr` CLI as the
  connection's `root-certificates`);
- `server.crt`, `server.key`: the SuperLink's TLS certificate, signed by the CA, valid for
  every name and IP address in `--hosts` (the addresses SuperNodes and the CLI dial; the
  SuperLink gets `--ssl-ca-certfile ca.crt --ssl-certfile server.crt --ssl-keyfile
  server.key`);
- `supernode_<i>` and `supernode_<i>.pub` for i = 1..N: each SuperNode's authentication key
  pair (ECDSA P-384 in OpenSSH format, what `flower-supernode --auth-supernode-private-key`
  and `flwr supernode register` read). Only a registered public key can join a SuperLink
  started with `--enable-supernode-auth`.

Private keys are written readable by their owner only (mode 0600). Existing files are never
overwritten (FileExistsError naming the file), so a CA already trusted by the federation
cannot be replaced by accident. Sources: Flower's "Enable TLS connections" and
"Authenticate SuperNodes" guides (1.42); X.509 fields as in `cryptography`'s tutorial.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # never replace a key or certificate
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; remove it or choose another --out") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_tls(out: Path, hosts: Sequence[str]) -> None:
    """ca.crt/ca.key and server.crt/server.key (see the module docstring)."""
    if not hosts:
        raise ValueError("--hosts: give at least one name or IP address of the SuperLink")
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "AnalogAI-FL federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(_subject_alt_names(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    _write(out / "ca.key", _pem_key(ca_key), private=True)
    _write(out / "ca.crt", ca.public_bytes(pem), private=False)
    _write(out / "server.key", _pem_key(server_key), private=True)
    _write(out / "server.crt", server.public_bytes(pem), private=False)


def make_supernode_keys(out: Path, count: int, first: int = 1) -> list[Path]:
    """`supernode_<i>` (private) and `supernode_<i>.pub` for i = first..first+count-1;
    returns the public key paths."""
    publics = []
    for i in range(first, first + count):
        key = ec.generate_private_key(ec.SECP384R1())
        _write(out / f"supernode_{i}", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), private=True)
        public = out / f"supernode_{i}.pub"
        _write(public, key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n",
            private=False)
        publics.append(public)
    return publics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analogai_fl.certificates",
        description="TLS certificates for a SuperLink and authentication keys for SuperNodes "
        "(see the module docstring and the README, 'Running on several machines').")
    parser.add_argument("--out", required=True, help="folder to write into (created)")
    parser.add_argument("--hosts", default="127.0.0.1,localhost",
                        help="comma-separated names/IP addresses of the SuperLink "
                        "(default: 127.0.0.1,localhost)")
    parser.add_argument("--supernodes", type=int, default=0,
                        help="number of SuperNode key pairs to make (default: 0)")
    parser.add_argument("--no-tls", action="store_true",
                        help="only SuperNode keys (e.g. more nodes for an existing CA)")
    parser.add_argument("--first", type=int, default=1,
                        help="number of the first SuperNode key pair (default: 1)")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    names = ([] if args.no_tls else ["ca.key", "ca.crt", "server.key", "server.crt"]) + [
        f"supernode_{i}{ext}" for i in range(args.first, args.first + args.supernodes)
        for ext in ("", ".pub")]
    existing = [n for n in names if (out / n).exists()]
    if existing:  # all checked before any is written: a key never without its certificate
        parser.exit(2, f"{parser.prog}: error: {out} already holds {', '.join(existing)}; "
                       "remove them or choose another --out\n")
    try:
        if not args.no_tls:
            make_tls(out, [h.strip() for h in args.hosts.split(",") if h.strip()])
        publics = make_supernode_keys(out, args.supernodes, args.first)
    except (FileExistsError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(f"Wrote to {out}: " + ("ca.crt, ca.key, server.crt, server.key" if not args.no_tls
                                 else "") + "".join(f", {p.stem}, {p.name}" for p in publics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
