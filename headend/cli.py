"""The ``headend`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from headend import codec
from headend.decode import Keys, decode, describe_error, parse_hex, parse_key
from headend.errors import HeadendError


def _print_json(obj: object, compact: bool) -> None:
    if compact:
        print(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    else:
        print(json.dumps(obj, ensure_ascii=False, indent=2))


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        keys = Keys(
            parse_key(args.ek, "--ek"),
            parse_key(args.ak, "--ak"),
            parse_key(args.system_title, "--system-title", 8),
        )
    except HeadendError as e:
        print(f"error: {describe_error(e)}", file=sys.stderr)
        return 2
    if args.hex != "-":
        try:
            _print_json(decode(parse_hex(args.hex), framing=args.framing, keys=keys), args.compact)
        except HeadendError as e:
            print(f"error: {describe_error(e)}", file=sys.stderr)
            return 1
        return 0
    # One frame per line from stdin; blank lines and # comments are skipped. Output is
    # one JSON document per line unless --pretty; errors go to stderr with the line.
    status = 0
    for lineno, line in enumerate(sys.stdin, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            _print_json(decode(parse_hex(text), framing=args.framing, keys=keys), not args.pretty)
        except HeadendError as e:
            print(f"error: line {lineno}: {describe_error(e)}", file=sys.stderr)
            status = 1
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headend",
        description="Head-end and energy accounting for DLMS/COSEM smart meters.",
    )
    parser.add_argument("--version", action="version", version=f"headend {codec.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "decode",
        help="print one captured frame as JSON",
        description="Decode one captured DLMS/COSEM frame (wrapper, HDLC or a bare APDU) "
        "and print it as JSON. With --ek/--ak, ciphered APDUs are deciphered.",
    )
    p.add_argument("hex", help="the frame as hex, or - to read one frame per line from stdin")
    p.add_argument("--ek", metavar="HEX", help="encryption key (16 bytes)")
    p.add_argument("--ak", metavar="HEX", help="authentication key (16 bytes)")
    p.add_argument(
        "--system-title",
        metavar="HEX",
        help="sender's system title (8 bytes) for glo- APDUs, which carry none",
    )
    g = p.add_mutually_exclusive_group()
    for name, help_text in (
        ("auto", "detect the framing from the first byte (default)"),
        ("wrapper", "IEC 62056-47 wrapper"),
        ("hdlc", "IEC 62056-46 HDLC"),
        ("apdu", "a bare APDU without framing"),
    ):
        g.add_argument(
            f"--{name}", dest="framing", action="store_const", const=name, help=help_text
        )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--compact", action="store_true", help="one line of JSON")
    out.add_argument("--pretty", action="store_true", help="indented JSON for stdin input too")
    p.set_defaults(func=cmd_decode, framing="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
