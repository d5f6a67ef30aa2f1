"""The OpenVLA action tokenizer: the one place that maps normalised actions to token ids and back.

The rule (identical to upstream OpenVLA, so the published weights decode correctly):

- ``bins = linspace(-1, 1, n_bins)`` (256 edges) and ``centers = (bins[:-1] + bins[1:]) / 2`` (255 values);
- encode: ``token = vocab_end - digitize(clip(a, -1, 1), bins)``; ``digitize`` returns 1..256 after the
  clip, so the ids are ``vocab_end - 256 .. vocab_end - 1`` (31744..31999 for openvla-7b, whose Llama-2
  text vocabulary ends at ``vocab_end = 32000``);
- decode: ``centers[clip(vocab_end - token - 1, 0, n_bins - 2)]``.

The order is REVERSED: a larger action value gives a *smaller* id (+1.0 -> 31744, -1.0 -> 31999).
Here a *bin index* always counts in value order: bin 0 is the most negative bin (id ``vocab_end - 1``),
bin 255 the most positive (id ``vocab_end - 256``). Bin 255 is reached only by exactly +1.0 and decodes
to the last centre, like bin 254 (there are 256 ids but only 255 centres, as upstream).

numpy only: this module must stay importable without torch (robot PC, policy client).
"""

from __future__ import annotations

import numpy as np

DEFAULT_N_BINS = 256
OPENVLA_7B_VOCAB_END = 32000


class ActionTokenizer:
    """Maps actions normalised to [-1, 1] to the last ``n_bins`` ids below ``vocab_end`` and back."""

    def __init__(self, vocab_end: int, n_bins: int = DEFAULT_N_BINS) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        if vocab_end < n_bins:
            raise ValueError(f"vocab_end ({vocab_end}) must be at least n_bins ({n_bins}): the action ids are the "
                             f"last n_bins ids of the text vocabulary")
        self.vocab_end = int(vocab_end)
        self.n_bins = int(n_bins)
        self.bins = np.linspace(-1.0, 1.0, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_action_token_id(self) -> int:
        return self.vocab_end - self.n_bins

    @property
    def action_token_ids(self) -> np.ndarray:
        """The ``n_bins`` action ids in bin (value) order: element ``b`` is the id of bin ``b``."""
        return self.bin_to_token(np.arange(self.n_bins))

    @property
    def bin_values(self) -> np.ndarray:
        """The normalised value each bin decodes to, in bin order (bins 254 and 255 share the last centre)."""
        return self.bin_centers[np.clip(np.arange(self.n_bins), 0, self.n_bins - 2)]

    def encode(self, normalized_actions) -> np.ndarray:
        """Token ids (int64, same shape) for normalised actions; values outside [-1, 1] are clipped, NaN refused."""
        values = np.asarray(normalized_actions, dtype=np.float64)
        if np.isnan(values).any():
            positions = np.argwhere(np.isnan(values)).tolist()
            raise ValueError(f"cannot tokenize NaN actions (at index {positions[:5]}); check the recording or the "
                             f"normalisation statistics (q01 == q99 on a dimension?)")
        digitized = np.digitize(np.clip(values, -1.0, 1.0), self.bins)
        return (self.vocab_end - digitized).astype(np.int64)

    def decode(self, token_ids) -> np.ndarray:
        """Normalised actions (float64) for token ids, with upstream's clipping: ids outside the action range
        decode to the nearest end (ids >= vocab_end to the most negative centre, smaller ids to the most positive).
        """
        ids = np.asarray(token_ids, dtype=np.int64)
        index = np.clip(self.vocab_end - ids - 1, 0, self.n_bins - 2)
        return self.bin_centers[index]

    def is_action_token(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids, dtype=np.int64)
        return (ids >= self.first_action_token_id) & (ids < self.vocab_end)

    def token_to_bin(self, token_ids) -> np.ndarray:
        """Bin index (0 = most negative) of each action id; other ids are an error."""
        ids = np.asarray(token_ids, dtype=np.int64)
        if not self.is_action_token(ids).all():
            bad = ids[~self.is_action_token(ids)]
            raise ValueError(f"token ids {bad.ravel()[:5].tolist()} are not action tokens: action ids are "
                             f"{self.first_action_token_id}..{self.vocab_end - 1}")
        return self.vocab_end - 1 - ids

    def bin_to_token(self, bin_indices) -> np.ndarray:
        bins = np.asarray(bin_indices, dtype=np.int64)
        if ((bins < 0) | (bins >= self.n_bins)).any():
            raise ValueError(f"bin indices must be in 0..{self.n_bins - 1}, got {bins.ravel()[:5].tolist()}")
        return self.vocab_end - 1 - bins
