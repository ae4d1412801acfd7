"""The artifact store: content-addressed, verifiable, resumable folders of Arrow shards."""

from artifacts.reader import ArtifactReader
from artifacts.store import Store, StoreError
from artifacts.verify import Incomplete, VerifyError, verify_artifact
from artifacts.writer import ArtifactSpec, ArtifactWriter, WriteOptions

__all__ = ["ArtifactReader", "ArtifactSpec", "ArtifactWriter", "Incomplete", "Store", "StoreError", "VerifyError",
           "WriteOptions", "verify_artifact"]
