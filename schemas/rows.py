"""What every codec's Row shares: a scored or generated sequence (prompt + response token ids)."""

from __future__ import annotations

import dataclasses

import numpy as np


class SequenceRow:
    """Mixed into the codecs' frozen Row dataclasses, which hold `token_ids` and `prompt_len`."""

    token_ids: np.ndarray
    prompt_len: int

    @property
    def tokens(self) -> int:
        """Scored (response) positions."""
        return len(self.token_ids) - int(self.prompt_len)

    def copy(self):
        """The row with its arrays copied: a decoded row's arrays are views into its whole record batch."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{n: v.copy() for n, v in arrays.items() if isinstance(v, np.ndarray)})
