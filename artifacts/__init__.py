"""The artifact store: content-addressed, verifiable, resumable folders of Arrow shards."""

from adpa.artifacts.reader import ArtifactReader
from adpa.artifacts.store import Store, StoreError
from adpa.artifacts.verify import Incomplete, VerifyError, verify_artifact
from adpa.artifacts.writer import ArtifactSpec, ArtifactWriter, WriteOptions

__all__ = ["ArtifactReader", "ArtifactSpec", "ArtifactWriter", "Incomplete", "Store", "StoreError", "VerifyError",
           "WriteOptions", "verify_artifact"]
