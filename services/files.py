"""Project files: stored content-addressed (the file's name is its SHA-256), bound to who uploaded them.

The bytes live under ESP_FILES_DIR; which publishers uploaded a file is kept by
``access.owners`` (a file is served for a project only when its publisher did).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

from errors import ValidationError

FILE_CHUNK = 1 << 20
MIB = 1024 * 1024


class FileStore:
    """The folder of project files, and the largest file it accepts."""

    def __init__(self, folder: Path, *, max_mb: int) -> None:
        self.folder = folder
        self.max_mb = max_mb

    @property
    def max_bytes(self) -> int:
        return self.max_mb * MIB

    def path(self, digest: str) -> Path:
        """Where the file whose SHA-256 is ``digest`` (0x hex) is stored."""
        return self.folder / digest[2:].lower()

    def _ensure_folder(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        return self.folder

    def store(self, stream: IO[bytes], *, field: str = "file") -> tuple[str, int]:
        """Store an uploaded file; return (0x digest, size).

        Refuses (413 naming ``field``) a file over the limit, and an empty one (422);
        nothing of a refused file stays behind.
        """
        folder = self._ensure_folder()
        digest = hashlib.sha256()
        size = 0
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(FILE_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ValidationError(field, f"is larger than {self.max_mb} MiB (ESP_MAX_FILE_MB)", status=413)
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise ValidationError(field, "must not be empty")
            os.chmod(temp, 0o640)
            target = folder / digest.hexdigest()
            os.replace(temp, target)  # same content, same name: a second upload just rewrites it
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return "0x" + digest.hexdigest(), size
