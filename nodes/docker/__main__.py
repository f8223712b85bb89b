"""Build ESP's anvil image (build-image), or print compose/devnet.yml (compose-devnet)."""

from __future__ import annotations

import argparse
import sys
import time

from errors import ConfigError, NodeStartError
from nodes.docker.compose import devnet_compose
from nodes.docker.engine import connect
from nodes.docker.image import build_image
from settings import Settings


def main(argv: list[str] | None = None) -> int:
    """Build the image, or print compose/devnet.yml; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m nodes.docker", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["build-image", "compose-devnet"])
    parser.add_argument("--docker-host", default=None, help="engine URL (default: DOCKER_HOST or scripts/dockerd.sh's socket)")
    parser.add_argument("--tag", default=None, help="image tag (default: ESP_DOCKER_IMAGE)")
    args = parser.parse_args(argv)
    if args.command == "compose-devnet":
        # From the defaults, not the environment: the checked-in file must not depend on who generated it.
        print(devnet_compose(Settings.from_env({})), end="")
        return 0
    try:
        settings = Settings.from_env()
        client = connect(settings, args.docker_host)
        try:
            started = time.monotonic()
            image_id = build_image(settings, client, tag=args.tag)
            size = client.images.get(image_id).attrs.get("Size") or 0
        finally:
            client.close()
    except (ConfigError, NodeStartError) as exc:
        print(f"build-image: {exc}", file=sys.stderr)
        return 1
    print(f"{args.tag or settings.docker_image} {image_id[:19]} {size / 1e6:.1f} MB in {time.monotonic() - started:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
