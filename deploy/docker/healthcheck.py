"""Container health check: GET $TOTALREG_HEALTH_URL (default http://127.0.0.1:8080/healthz); exit 0 on HTTP 200.

Used by the Dockerfiles' HEALTHCHECK and docker-compose. Prints one line saying why it failed otherwise.
"""
import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("TOTALREG_HEALTH_URL", "http://127.0.0.1:8080/healthz")

try:
    with urllib.request.urlopen(URL, timeout=8) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except urllib.error.HTTPError as exc:
    print(f"unhealthy: {URL} answered HTTP {exc.code}")
except OSError as exc:
    print(f"unhealthy: {URL} not reachable ({exc})")
sys.exit(1)
