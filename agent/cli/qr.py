"""``ykt qr decode`` (decode and verify images) and ``ykt qr issue key|cert|code`` (ops side:
issuer keys, holder certificates and codes for tests and pilots). See ``docs/qr.md``."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2) if args.json else text)


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pseudonymizer(demo: bool) -> Any:
    """The deployment's :class:`~agent.pseudonym.Pseudonymizer`, read as the agent reads
    it (``$YKT_PSEUDONYM_KEY`` or ``$CREDENTIALS_DIRECTORY/pseudonym-key``, hex); the demo
    key only if ``demo``; else None. Raises ``ValueError`` for a malformed key."""
    from agent.keys import DEMO_PSEUDONYM_KEY, SecretError, read_secret
    from agent.pseudonym import Pseudonymizer

    secret = read_secret("pseudonym-key", "YKT_PSEUDONYM_KEY")
    if secret:
        try:
            return Pseudonymizer(bytes.fromhex(secret))
        except ValueError as err:
            raise SecretError(f"bad pseudonymisation key (YKT_PSEUDONYM_KEY or "
                             f"$CREDENTIALS_DIRECTORY/pseudonym-key): {err}") from None
    return Pseudonymizer(DEMO_PSEUDONYM_KEY) if demo else None


# -- decode ---------------------------------------------------------------------------------
def _decode(args: argparse.Namespace) -> int:
    import cv2

    from agent.codes import CodeVerifier, TrustStore, TrustStoreError
    from agent.model import Credential
    from agent.pseudonym import Pseudonymizer, mask_code
    from drivers.exceptions import DriverError
    from drivers.qrdecode import make_decoder

    try:
        decoder = make_decoder(args.decoder, args.retry_decoder)
    except DriverError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verifier = None
    keyed = True
    if args.trust:
        try:
            pseudo = _pseudonymizer(args.demo)
            if pseudo is None:
                # credential keys would match nothing on the hub: verify, but leave them out
                keyed = False
                pseudo = Pseudonymizer(os.urandom(32))
                print("note: no pseudonymisation key ($YKT_PSEUDONYM_KEY); credential keys "
                      "are omitted (--demo uses the demo key)", file=sys.stderr)
            verifier = CodeVerifier(TrustStore.load(args.trust), pseudonymizer=pseudo,
                                    window_back_s=args.window_back,
                                    window_ahead_s=args.window_ahead)
        except (TrustStoreError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    now = args.at if args.at is not None else time.time()
    results: list[dict[str, Any]] = []
    failed = False
    for name in args.images:
        row: dict[str, Any] = {"image": name}
        img = cv2.imread(name, cv2.IMREAD_GRAYSCALE)
        if img is None:
            row["error"] = "cannot read image"
            failed = True
            results.append(row)
            continue
        t0 = time.perf_counter()
        texts = decoder.decode(img)
        row["decode_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        row["codes"] = []
        failed |= not texts
        for text in texts:
            code: dict[str, Any] = {"code": mask_code(text)}
            if args.show_text:
                code["text"] = text
            if verifier is not None:
                res = verifier.verify(text, now=now, clock_quality=args.clock_quality)
                if isinstance(res, Credential):
                    code.update(accepted=True, kind=res.kind, holder_key=res.holder_key,
                                auth=res.authenticated_by, categories=sorted(res.categories),
                                valid_until=str(res.valid_until))
                    if keyed:
                        code["credential_key"] = res.credential_key
                else:
                    failed = True
                    code.update(accepted=False, reason=res.reason.value, detail=res.detail)
            row["codes"].append(code)
        results.append(row)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        for row in results:
            if "error" in row:
                print(f"{row['image']}: error: {row['error']}")
            elif not row["codes"]:
                print(f"{row['image']}: no QR code found ({row['decode_ms']} ms)")
            for c in row.get("codes", []):
                if "accepted" not in c:
                    verdict = "decoded (not verified: no --trust)"
                elif c["accepted"]:
                    verdict = (f"accepted {c['kind']} holder {c['holder_key'][:8]}… "
                               f"{c['auth']} {','.join(c['categories'])}")
                else:
                    verdict = f"refused {c['reason']} ({c['detail']})"
                print(f"{row['image']}: {c.get('text', c['code'])}: {verdict} "
                      f"[{row['decode_ms']} ms]")
    return 1 if failed else 0


# -- issue ----------------------------------------------------------------------------------
def _issue_key(args: argparse.Namespace) -> int:
    from agent.codes.algorithms import AlgorithmUnavailable, algorithm
    from agent.codes.trust import trust_entry

    try:
        alg = algorithm(args.alg)
        key = alg.generate()
    except (AlgorithmUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _write_secret(Path(args.key_out), alg.private_pem(key))
    entry = trust_entry(args.kid, alg, alg.public_key(key), iss=args.iss,
                        not_before=args.not_before, not_after=args.not_after)
    if args.trust:
        try:
            _add_trust_entry(Path(args.trust), entry)
        except (OSError, ValueError) as err:
            print(f"error: {args.trust}: {err} (the key was written to {args.key_out})",
                  file=sys.stderr)
            return 2
    _print(args, {"kid": args.kid, "alg": alg.name, "key": args.key_out, "trust": args.trust,
                  "entry": entry},
           f"issuer key {args.kid} ({alg.name}) written to {args.key_out}"
           + (f"; trusted in {args.trust}" if args.trust else "")
           + ("" if args.trust else "\n" + json.dumps(entry, indent=2)))
    return 0


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        if "\n" in v and "\\" not in v and '"' not in v:
            return f'"""\n{v.strip()}"""'
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    raise ValueError(f"cannot write {type(v).__name__} values to a trust file")


def _toml_issuer(entry: dict[str, Any]) -> str:
    return "\n".join(["", "[[issuers]]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()])


def _add_trust_entry(path: Path, entry: dict[str, str]) -> None:
    """Add ``entry`` to the trust file at ``path`` (created if missing), replacing any entry
    with its kid. A new kid is appended to a TOML file as is; replacing one rewrites the
    TOML document (its comments are not kept)."""
    if path.suffix.lower() == ".json":
        doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "version": "", "issuers": []}
        doc["issuers"] = [e for e in doc.get("issuers", []) if e.get("kid") != entry["kid"]]
        doc["issuers"].append(entry)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"not valid TOML: {err}") from err
        issuers = doc.get("issuers", [])
        if isinstance(issuers, list) and any(
                isinstance(e, dict) and e.get("kid") == entry["kid"] for e in issuers):
            kept = [e for e in issuers if e.get("kid") != entry["kid"]] + [entry]
            head = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if k != "issuers"]
            path.write_text("\n".join(head + [_toml_issuer(e) for e in kept]) + "\n",
                            encoding="utf-8")
            return
    with path.open("a", encoding="utf-8") as f:
        f.write(_toml_issuer(entry) + "\n")


def _holder_key(args: argparse.Namespace) -> str | None:
    if args.holder_key:
        return str(args.holder_key).lower()
    pseudo = _pseudonymizer(demo=False)
    if pseudo is None:
        print("error: --ssn-stdin needs the pseudonymisation key in $YKT_PSEUDONYM_KEY (hex) "
              "or $CREDENTIALS_DIRECTORY/pseudonym-key", file=sys.stderr)
        return None
    ssn = sys.stdin.readline().strip()
    return str(pseudo.holder_key(ssn))


def _issue_cert(args: argparse.Namespace) -> int:
    from agent.codes.algorithms import AlgorithmUnavailable, KeyFormatError, algorithm
    from agent.codes.ykt1 import issue_certificate

    try:
        ialg = algorithm(args.alg)
        ikey = ialg.load_private_pem(Path(args.issuer_key).read_bytes())
        hk = _holder_key(args)
        if hk is None:
            return 2
        halg = algorithm(args.holder_alg)
        hpriv = halg.generate()
        cert = issue_certificate(
            ialg, ikey, args.kid, halg, halg.public_key(hpriv), holder_key=hk, iss=args.iss,
            categories=[c for c in (args.categories or "").split(",") if c],
            birth_date=date.fromisoformat(args.birth_date) if args.birth_date else None,
            valid_s=int(args.valid_hours * 3600))
    except (AlgorithmUnavailable, KeyFormatError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bundle = {"alg": halg.name, "holder_key": hk,
              "private_key": halg.private_pem(hpriv).decode(),
              "certificate": base64.b64encode(cert).decode()}
    _write_secret(Path(args.out), (json.dumps(bundle, indent=2) + "\n").encode())
    _print(args, {"holder": args.out, "holder_key": hk, "alg": halg.name,
                  "certificate_bytes": len(cert)},
           f"holder certificate ({halg.name}, {len(cert)} bytes, "
           f"{args.valid_hours} h) written to {args.out}")
    return 0


def _issue_code(args: argparse.Namespace) -> int:
    from agent.codes.algorithms import algorithm
    from agent.codes.ykt1 import sign_code

    try:
        doc = json.loads(Path(args.holder).read_text())
        alg = algorithm(doc["alg"])
        text = sign_code(alg, alg.load_private_pem(doc["private_key"].encode()),
                         base64.b64decode(doc["certificate"]),
                         iat=None if args.at is None else int(args.at))
    except (OSError, ValueError, KeyError, TypeError, ImportError) as err:
        print(f"error: {args.holder}: {err}", file=sys.stderr)
        return 2
    if args.png:
        from simulator.phone import render_frame, write_images

        out = Path(args.png)
        write_images([render_frame(text)], out.parent, pattern=out.name)
    _print(args, {"text": text, "png": args.png}, text)
    return 0


def register(sub: Any) -> None:
    """Add ``ykt qr decode`` and ``ykt qr issue key|cert|code``."""
    qr = sub.add_parser("qr", help="dynamic QR codes: decode/verify images, issue keys and codes")
    qsub = qr.add_subparsers(dest="qr_command", metavar="QR_COMMAND")
    qr.set_defaults(func=lambda a: (qr.print_help(), 2)[1])

    d = qsub.add_parser("decode", help="decode QR codes in images and verify them")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--trust", help="trust file (JSON or TOML) to verify against")
    d.add_argument("--decoder", default="zxing",
                   help="zxing (default), zbar or opencv (a fallback: much slower than zxing; "
                        "finds 100%% of clean and ~95%% of the test corpus; see docs/qr.md)")
    d.add_argument("--retry-decoder", help="decoder to retry a miss with")
    d.add_argument("--at", type=float, help="verify as of this epoch time (default now)")
    d.add_argument("--clock-quality", default="synced", choices=["synced", "rtc", "unsynced"])
    d.add_argument("--window-back", type=float, default=60.0, help="seconds (default 60)")
    d.add_argument("--window-ahead", type=float, default=30.0, help="seconds (default 30)")
    d.add_argument("--show-text", action="store_true", help="print each code's full text")
    d.add_argument("--demo", action="store_true",
                   help="without $YKT_PSEUDONYM_KEY, key credential keys with the demo key "
                        "(otherwise they are left out)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_decode)

    i = qsub.add_parser("issue", help="ops side: issuer keys, holder certificates, codes")
    isub = i.add_subparsers(dest="issue_command", metavar="WHAT")
    i.set_defaults(func=lambda a: (i.print_help(), 2)[1])

    k = isub.add_parser("key", help="a new issuer key (private PEM + trust entry)")
    k.add_argument("--kid", required=True)
    k.add_argument("--alg", default="ES256", help="ES256 (default), EdDSA or SM2")
    k.add_argument("--iss", default="", help="issuer id that certificates carry")
    k.add_argument("--key-out", required=True, help="where to write the private key (0600)")
    k.add_argument("--trust", help="trust file (.json or .toml) to add the public key to")
    k.add_argument("--not-before", help="RFC 3339")
    k.add_argument("--not-after", help="RFC 3339")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_issue_key)

    c = isub.add_parser("cert", help="a holder key and certificate (holder bundle JSON, 0600)")
    c.add_argument("--issuer-key", required=True)
    c.add_argument("--kid", required=True)
    c.add_argument("--alg", default="ES256", help="the issuer key's algorithm")
    c.add_argument("--iss", default="")
    g = c.add_mutually_exclusive_group(required=True)
    g.add_argument("--holder-key", help="32 hex characters (Pseudonymizer.holder_key)")
    g.add_argument("--ssn-stdin", action="store_true",
                   help="read the 社会保障号码 from stdin; key from $YKT_PSEUDONYM_KEY "
                        "or $CREDENTIALS_DIRECTORY/pseudonym-key")
    c.add_argument("--holder-alg", default="ES256")
    c.add_argument("--categories", help="comma-separated, e.g. elderly,veteran_family")
    c.add_argument("--birth-date", help="YYYY-MM-DD")
    c.add_argument("--valid-hours", type=float, default=24.0)
    c.add_argument("--out", required=True, help="holder bundle file to write")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_issue_cert)

    q = isub.add_parser("code", help="a fresh code from a holder bundle")
    q.add_argument("--holder", required=True)
    q.add_argument("--at", type=float, help="issued-at epoch time (default now)")
    q.add_argument("--png", help="also render it to this PNG file")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_issue_code)
