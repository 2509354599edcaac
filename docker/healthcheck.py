"""Container HEALTHCHECK: GET /healthz on this service's own port, exit 0 when it answers 200.

One image runs every service, so the port is found from the same settings the service reads:
the model services and preprocess serve health on RESTORA_HEALTH_PORT, the gateway serves it
on RESTORA_PORT. Standard library only: the slim image has no curl, on purpose.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def health_url() -> str:
    port = os.environ.get("RESTORA_HEALTH_PORT") or os.environ.get("RESTORA_PORT") or "8080"
    return f"http://127.0.0.1:{int(port)}/healthz"


def main() -> int:
    try:
        with urllib.request.urlopen(health_url(), timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # refused, timed out, HTTP error: all mean "not healthy"
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
