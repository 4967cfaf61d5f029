"""The Files API's store: uploaded and generated files, owned by an organization, kept in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ids import new_id

__all__ = ["FILE_PURPOSES", "UPLOAD_PURPOSES", "FileStore", "StoredFile"]

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""Purposes a client may upload with."""

FILE_PURPOSES = (*UPLOAD_PURPOSES, "assistants_output", "batch_output", "fine-tune-results")
"""Every purpose a file object can show (the ``*_output`` ones are written by the service)."""


@dataclass(slots=True)
class StoredFile:
    id: str
    org: str
    filename: str
    purpose: str
    content: bytes
    created_at: int
    expires_at: int | None = None

    def to_object(self) -> dict[str, Any]:
        """The file object exactly as ``GET /v1/files/{id}`` shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class FileStore:
    """Files by id, in upload order (list endpoints page over that order)."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def add(
        self, org: str, filename: str, purpose: str, content: bytes, created_at: int, expires_at: int | None = None
    ) -> StoredFile:
        stored = StoredFile(new_id("file"), org, filename, purpose, content, created_at, expires_at)
        self._files[stored.id] = stored
        return stored

    def get(self, org: str, file_id: str) -> StoredFile | None:
        """The file, or None when it does not exist *for this organization* (others' files are invisible)."""
        stored = self._files.get(file_id)
        return stored if stored is not None and stored.org == org else None

    def delete(self, org: str, file_id: str) -> bool:
        if self.get(org, file_id) is None:
            return False
        del self._files[file_id]
        return True

    def list(self, org: str, purpose: str | None = None) -> list[StoredFile]:
        """This organization's files, oldest first."""
        return [f for f in self._files.values() if f.org == org and (purpose is None or f.purpose == purpose)]

    def __len__(self) -> int:
        return len(self._files)
