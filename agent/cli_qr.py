"""``ykt qr decode`` (decode and verify images) and ``ykt qr issue key|cert|code`` (ops side:
issuer keys, holder certificates and codes for tests and pilots). See ``docs/qr.md``."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from datetime import date
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


# -- decode ---------------------------------------------------------------------------------
def _decode(args: argparse.Namespace) -> int:
    import cv2

    from agent.codes import CodeVerifier, TrustStore, TrustStoreError, redact
    from agent.model import Credential
    from drivers.exceptions import DriverError
    from drivers.qrdecode import make_decoder

    try:
        decoder = make_decoder(args.decoder, args.retry_decoder)
    except DriverError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verifier = None
    if args.trust:
        try:
            verifier = CodeVerifier(TrustStore.load(args.trust), window_back_s=args.window_back,
                                    window_ahead_s=args.window_ahead)
        except TrustStoreError as err:
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
            code: dict[str, Any] = {"code": redact(text)}
            if args.show_text:
                code["text"] = text
            if verifier is not None:
                res = verifier.verify(text, now=now, clock_quality=args.clock_quality)
                if isinstance(res, Credential):
                    code.update(accepted=True, kind=res.kind, credential_key=res.credential_key,
                                holder_key=res.holder_key, auth=res.authenticated_by,
                                categories=sorted(res.categories),
                                valid_until=str(res.valid_until))
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
    from simulator.phone import SimIssuer

    try:
        issuer = SimIssuer(args.kid, args.alg, iss=args.iss)
    except (AlgorithmUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    alg = algorithm(args.alg)
    _write_secret(Path(args.key_out), alg.private_pem(issuer.private_key))
    entry = issuer.trust_entry(not_before=args.not_before, not_after=args.not_after)
    if args.trust:
        _add_trust_entry(Path(args.trust), entry)
    _print(args, {"kid": args.kid, "alg": alg.name, "key": args.key_out, "trust": args.trust,
                  "entry": entry},
           f"issuer key {args.kid} ({alg.name}) written to {args.key_out}"
           + (f"; trusted in {args.trust}" if args.trust else "")
           + ("" if args.trust else "\n" + json.dumps(entry, indent=2)))
    return 0


def _add_trust_entry(path: Path, entry: dict[str, str]) -> None:
    if path.suffix.lower() == ".json":
        doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
            "version": "", "issuers": []}
        doc["issuers"] = [e for e in doc.get("issuers", []) if e.get("kid") != entry["kid"]]
        doc["issuers"].append(entry)
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return
    lines = ["", "[[issuers]]"]
    for k, v in entry.items():
        lines.append(f'{k} = """\n{v.strip()}"""' if "\n" in v else f"{k} = {json.dumps(v)}")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


def _holder_key(args: argparse.Namespace) -> str | None:
    if args.holder_key:
        return str(args.holder_key).lower()
    from agent.pseudonym import Pseudonymizer

    key_hex = os.environ.get("YKT_PSEUDONYM_KEY", "")
    if not key_hex:
        print("error: --ssn-stdin needs the pseudonymisation key in $YKT_PSEUDONYM_KEY (hex)",
              file=sys.stderr)
        return None
    ssn = sys.stdin.readline().strip()
    return Pseudonymizer(bytes.fromhex(key_hex)).holder_key(ssn)


def _issue_cert(args: argparse.Namespace) -> int:
    from agent.codes.algorithms import AlgorithmUnavailable, KeyFormatError, algorithm
    from simulator.phone import Phone, SimIssuer

    try:
        ialg = algorithm(args.alg)
        ikey = ialg.load_private_pem(Path(args.issuer_key).read_bytes())
        issuer = SimIssuer(args.kid, ialg.name, iss=args.iss, private_key=ikey)
        hk = _holder_key(args)
        if hk is None:
            return 2
        phone = Phone.enroll(
            issuer, holder_key=hk, alg=args.holder_alg,
            categories=[c for c in (args.categories or "").split(",") if c],
            birth_date=date.fromisoformat(args.birth_date) if args.birth_date else None,
            valid_s=int(args.valid_hours * 3600))
    except (AlgorithmUnavailable, KeyFormatError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bundle = {"alg": phone.alg.name, "holder_key": hk,
              "private_key": phone.alg.private_pem(phone.private_key).decode(),
              "certificate": base64.b64encode(phone.certificate).decode()}
    _write_secret(Path(args.out), (json.dumps(bundle, indent=2) + "\n").encode())
    _print(args, {"holder": args.out, "holder_key": hk, "alg": phone.alg.name,
                  "certificate_bytes": len(phone.certificate)},
           f"holder certificate ({phone.alg.name}, {len(phone.certificate)} bytes, "
           f"{args.valid_hours} h) written to {args.out}")
    return 0


def _issue_code(args: argparse.Namespace) -> int:
    from agent.codes.algorithms import algorithm
    from simulator.phone import Phone, render_frame, write_images

    try:
        doc = json.loads(Path(args.holder).read_text())
        alg = algorithm(doc["alg"])
        phone = Phone(alg, alg.load_private_pem(doc["private_key"].encode()),
                      base64.b64decode(doc["certificate"]))
        text = phone.new_code(args.at)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {args.holder}: {err}", file=sys.stderr)
        return 2
    if args.png:
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
    d.add_argument("--decoder", default="zxing", help="zxing (default), zbar or opencv")
    d.add_argument("--retry-decoder", help="decoder to retry a miss with")
    d.add_argument("--at", type=float, help="verify as of this epoch time (default now)")
    d.add_argument("--clock-quality", default="synced", choices=["synced", "rtc", "unsynced"])
    d.add_argument("--window-back", type=float, default=60.0, help="seconds (default 60)")
    d.add_argument("--window-ahead", type=float, default=30.0, help="seconds (default 30)")
    d.add_argument("--show-text", action="store_true", help="print each code's full text")
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
                   help="read the 社会保障号码 from stdin; key from $YKT_PSEUDONYM_KEY")
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
