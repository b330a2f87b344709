"""`python -m runtime tokens ...`: manage the API clients of the tokens file.

The secret of a new token is printed once and stored nowhere: the file keeps only a salted
hash, so losing the token means issuing a new one (`add` with the same name replaces it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from runtime._auth import TokenFile
from runtime._errors import InvalidRequest


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime tokens",
        description="Create, list and remove API clients (tokens file of --auth-tokens).",
    )
    parser.add_argument(
        "--file",
        default=os.environ.get("MESHTAP_AUTH_TOKENS", ""),
        help="the tokens file [env MESHTAP_AUTH_TOKENS]",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a client (or replace its token) and print it")
    add.add_argument("name")
    for right, example in (("publish", "orders.#"), ("subscribe", "orders.*"), ("replay", "#")):
        add.add_argument(
            f"--{right}",
            action="append",
            default=[],
            metavar="PATTERN",
            help=f"topic pattern the client may {right} (repeatable), e.g. '{example}'",
        )
    add.add_argument(
        "--admin", action="store_true", help="may delete topics and manage all subscriptions"
    )
    commands.add_parser("list", help="list clients and their rights (never secrets)")
    remove = commands.add_parser("remove", help="remove a client: its token stops working")
    remove.add_argument("name")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("name the tokens file with --file FILE (or MESHTAP_AUTH_TOKENS)")
    tokens = TokenFile(args.file)
    try:
        if args.command == "add":
            token = tokens.add(
                args.name,
                publish=args.publish,
                subscribe=args.subscribe,
                replay=args.replay,
                admin=args.admin,
            )
            print(token)
            print(
                f"client {args.name!r} saved in {args.file}; the token above is shown only "
                "now. Send it as 'Authorization: Bearer <token>'.",
                file=sys.stderr,
            )
        elif args.command == "list":
            for record in tokens.load().values():
                print(
                    f"{record.name}\tkey={record.key_id}\tpublish={','.join(record.publish)}\t"
                    f"subscribe={','.join(record.subscribe)}\treplay={','.join(record.replay)}"
                    f"\tadmin={record.admin}\tcreated={record.created}"
                )
        elif not tokens.remove(args.name):
            print(f"error: no client {args.name!r} in {args.file}", file=sys.stderr)
            return 1
    except InvalidRequest as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
