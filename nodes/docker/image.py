"""ESP's anvil image: built ``FROM scratch`` from the local anvil binary and the libraries ``ldd`` lists.

No registry can be reached here, so there is no base image to pull: the build
context's rootfs/ holds anvil, its shared libraries (the dynamic loader
included) and the empty folders the containers mount tmpfs on. An image ESP
built carries the binary's sha256, so a changed anvil gets a new image.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors

from errors import ConfigError, NodeStartError
from nodes.anvil import find_anvil
from nodes.docker.engine import ENGINE_ERRORS, short_error
from settings import ROOT, Settings

log = logging.getLogger(__name__)

DOCKERFILE = ROOT / "compose" / "anvil.Dockerfile"
IMAGE_BINARY = "/usr/local/bin/anvil"
CACHE_DIR = Path("/cache")  # tmpfs in the container: anvil's --cache-path
HOME_DIR = "/home"  # tmpfs in the container: anvil's ~/.foundry
TMP_DIR = "/tmp"  # noqa: S108 - a private tmpfs inside the container, not the host's /tmp
LABEL_BINARY = "esp.anvil.sha256"
BUILD_TIMEOUT = 300.0


def parse_ldd(output: str, binary: Path) -> list[Path]:
    """The library paths in ``ldd``'s output, dynamic loader included; NodeStartError for a library not found."""
    libs: list[Path] = []
    for line in output.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(Path(match.group(1)))
        elif "not found" in line:
            raise NodeStartError(f"{binary} needs a library this machine lacks: {line.strip()}")
    return libs


def shared_libraries(binary: Path) -> list[Path]:
    """The shared libraries ``ldd`` lists for ``binary``, dynamic loader included (empty if static)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeStartError(f"cannot list the libraries of {binary} with ldd: {exc}") from None
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        raise NodeStartError(f"ldd {binary} failed: {out.stderr.strip() or out.stdout.strip()}")
    return parse_ldd(out.stdout, binary)


def file_digest(path: Path) -> str:
    """sha256 of a file, to tell whether an image holds this very binary."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_context(settings: Settings, dest: Path) -> Path:
    """Fill ``dest`` with the Dockerfile and a rootfs/ holding anvil and its libraries; return dest."""
    binary = find_anvil(settings)
    rootfs = dest / "rootfs"
    target = rootfs / IMAGE_BINARY.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, target)
    target.chmod(0o755)
    for lib in shared_libraries(binary):
        # The path ldd printed is the one the loader looks up; copy the file behind any symlink to it.
        copy = rootfs / str(lib).lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib.resolve(), copy)
        copy.chmod(0o755)
    (rootfs / HOME_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / CACHE_DIR.relative_to("/")).mkdir(parents=True, exist_ok=True)
    (rootfs / TMP_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DOCKERFILE, dest / "Dockerfile")
    return dest


def build_image(settings: Settings, client: docker.DockerClient, *, tag: str | None = None) -> str:
    """Build ESP's anvil image (settings.docker_image) from the local anvil binary; return its id."""
    tag = tag or settings.docker_image
    binary = find_anvil(settings)
    digest = file_digest(binary)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="esp-image-") as tmp:
        context = build_context(settings, Path(tmp))
        try:
            image, _ = client.images.build(
                path=str(context),
                dockerfile="Dockerfile",
                tag=tag,
                rm=True,
                forcerm=True,
                labels={LABEL_BINARY: digest, "org.opencontainers.image.title": "esp-anvil"},
                # Sending the ~45 MB context can take longer than an ordinary engine call.
                timeout=int(max(settings.docker_timeout, BUILD_TIMEOUT)),
            )
        except docker.errors.BuildError as exc:
            lines = [str(c.get("stream") or c.get("error") or "").strip() for c in exc.build_log]
            raise NodeStartError(f"building {tag} failed: {exc.msg} ({' | '.join(x for x in lines if x)[-300:]})") from None
        except ENGINE_ERRORS as exc:
            raise NodeStartError(f"building {tag} failed: {short_error(exc)}") from None
    log.info("built %s (%s, %.1f MB) in %.2f s", tag, image.short_id, (image.attrs.get("Size") or 0) / 1e6, time.monotonic() - started)
    return str(image.id)


def ensure_image(settings: Settings, client: docker.DockerClient) -> str:
    """The image's id, building it first when it is missing or holds another anvil binary."""
    tag = settings.docker_image
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return build_image(settings, client)
    except ENGINE_ERRORS as exc:
        raise NodeStartError(f"cannot inspect image {tag}: {short_error(exc)}") from None
    built_from = (image.labels or {}).get(LABEL_BINARY)
    if built_from is None:
        return str(image.id)  # an image ESP did not build (ESP_DOCKER_IMAGE names another one): use it as is
    try:
        current = file_digest(find_anvil(settings))
    except ConfigError:
        return str(image.id)  # no local binary to compare with: the image is all we have
    if current != built_from:
        log.info("%s holds another anvil binary: rebuilding it", tag)
        return build_image(settings, client)
    return str(image.id)
