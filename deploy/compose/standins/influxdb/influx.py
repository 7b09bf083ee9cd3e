#!/usr/bin/python3
"""`influx ping`, the one influx CLI command the compose health check runs."""

import os
import sys
import urllib.request


def main(argv: list[str]) -> int:
    if argv[1:] != ["ping"]:
        print(f"influx stand-in: only `influx ping` is provided, not {argv[1:]}", file=sys.stderr)
        return 2
    host = os.environ.get("INFLUX_HOST", "http://localhost:8086")
    try:
        with urllib.request.urlopen(f"{host}/health", timeout=4) as resp:
            ok = resp.status == 200
    except OSError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print("OK" if ok else "Error: not healthy")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
