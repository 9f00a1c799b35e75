"""Renders deploy/envoy/envoy.yaml (a template with dollar-brace placeholders) for one deployment.

The Helm chart fills the same placeholders in its ConfigMap
(deploy/k8s/comfyfleet/templates/envoy.yaml); this module is what tests and local runs use:

    python -m deploy.envoy.render --gateway 127.0.0.1:8080 --scheduler 127.0.0.1:50051 \\
        --listen-port 10000 --admin-port 9901 > var/envoy.yaml
    envoy -c var/envoy.yaml
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "envoy.yaml"


# Only an upper-case name in dollar-braces is a placeholder; any other `$` (regex anchors) stays.
PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


@dataclass(frozen=True)
class EdgeSettings:
    """What differs between deployments of the edge."""

    gateway: str = "127.0.0.1:8080"
    scheduler: str = "127.0.0.1:50051"
    listen_address: str = "0.0.0.0"
    listen_port: int = 10000
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    max_body_bytes: int = 50 * 1024 * 1024
    rate_limit_tokens: int = 200
    rate_limit_fill_seconds: int = 1


def placeholders(s: EdgeSettings) -> dict[str, str]:
    """The value of every placeholder in the template."""
    gateway_host, _, gateway_port = s.gateway.rpartition(":")
    scheduler_host, _, scheduler_port = s.scheduler.rpartition(":")
    return {
        "ADMIN_ADDRESS": s.admin_address,
        "ADMIN_PORT": str(s.admin_port),
        "LISTEN_ADDRESS": s.listen_address,
        "LISTEN_PORT": str(s.listen_port),
        "GATEWAY_HOST": gateway_host,
        "GATEWAY_PORT": gateway_port,
        "SCHEDULER_HOST": scheduler_host,
        "SCHEDULER_PORT": scheduler_port,
        "MAX_BODY_BYTES": str(s.max_body_bytes),
        "MAX_BODY_BYTES_PLUS_ONE": str(s.max_body_bytes + 1),
        "RATE_LIMIT_TOKENS": str(s.rate_limit_tokens),
        "RATE_LIMIT_FILL_SECONDS": str(s.rate_limit_fill_seconds),
    }


def template_placeholders() -> set[str]:
    """The placeholder names the template uses (the chart must fill the same ones)."""
    return set(PLACEHOLDER.findall(TEMPLATE.read_text()))


def render(s: EdgeSettings) -> str:
    """The Envoy config text; raises KeyError for a placeholder without a value."""
    values = placeholders(s)
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Render the comfyfleet Envoy config.")
    p.add_argument("--gateway", default=EdgeSettings.gateway)
    p.add_argument("--scheduler", default=EdgeSettings.scheduler)
    p.add_argument("--listen-port", type=int, default=EdgeSettings.listen_port)
    p.add_argument("--admin-port", type=int, default=EdgeSettings.admin_port)
    a = p.parse_args(argv)
    print(render(EdgeSettings(gateway=a.gateway, scheduler=a.scheduler, listen_port=a.listen_port,
                              admin_port=a.admin_port)), end="")


if __name__ == "__main__":
    main()
