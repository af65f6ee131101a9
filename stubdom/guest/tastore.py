"""Where a guest's tee-supplicant finds the TAs OP-TEE asks it to load
(OPTEE_RPC_CMD_LOAD_TA): its TA directory.

tee-supplicant looks for ``<uuid>.ta`` in each directory of its TA path, then
for the deprecated ``xxxxxxxx-xxxx-xxxx-xxxxxxxxxxxxxxxx.ta`` spelling
(optee_client ``tee-supplicant/src/teec_ta_load.c`` try_load_secure_module).
:class:`TaDirectory` does the same on the host; :class:`BuiltTaImages` holds
the images of the model's own TAs in memory, as a guest whose root file
system has them installed would; :func:`write_ta_images` installs them in a
directory, for the real tee-supplicant (``tee-supplicant -l DIR``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol

from stubdom.optee.taimage import DEFAULT_TA_IMAGE_SIZE, build_ta_image, ta_file_name
from stubdom.tee.tas import builtin_tas

__all__ = ["TaStore", "TaDirectory", "BuiltTaImages", "write_ta_images", "model_ta_images"]

# An image bigger than this is not read (tee-supplicant reads whatever the
# file holds; OP-TEE would fail the SHM_ALLOC long before).
MAX_TA_FILE_SIZE = 64 * 1024 * 1024


class TaStore(Protocol):
    """What the supplicant needs: the image of a TA, or None."""

    def load(self, ta_uuid: uuid.UUID) -> bytes | None: ...


def model_ta_images(*, size: int = DEFAULT_TA_IMAGE_SIZE) -> dict[uuid.UUID, bytes]:
    """A valid image of every TA the secure-world model implements."""
    return {u: build_ta_image(u, ta.name, size=size) for u, ta in builtin_tas().items()}


class BuiltTaImages:
    """Images in memory: by default one of each of the model's TAs."""

    def __init__(self, images: dict[uuid.UUID, bytes] | None = None) -> None:
        self.images = dict(model_ta_images() if images is None else images)

    def load(self, ta_uuid: uuid.UUID) -> bytes | None:
        return self.images.get(ta_uuid)


class TaDirectory:
    """A host directory of ``<uuid>.ta`` files (tee-supplicant's TA path)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self, ta_uuid: uuid.UUID) -> bytes | None:
        legacy = str(ta_uuid)
        legacy = legacy[:23] + legacy[24:] + ".ta"  # the fourth dash dropped
        for name in (ta_file_name(ta_uuid), legacy):
            f = self.path / name
            try:
                if f.stat().st_size > MAX_TA_FILE_SIZE:
                    return None
                return f.read_bytes()
            except OSError:
                continue
        return None


def write_ta_images(directory: str | os.PathLike[str], images: dict[uuid.UUID, bytes] | None = None
                    ) -> list[Path]:
    """Install images (the model's TAs by default) as ``<uuid>.ta`` files;
    returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for u, image in (model_ta_images() if images is None else images).items():
        f = out / ta_file_name(u)
        f.write_bytes(image)
        written.append(f)
    return written

