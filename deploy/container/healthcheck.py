"""Container HEALTHCHECK: exit 0 when the daemon's /healthz answers 200, else 1."""

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("SEQAE_HEALTH__PORT", "9108")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:  # URLError, HTTPError and timeouts are all OSErrors
        print(f"healthz: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
